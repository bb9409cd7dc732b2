//! A trivial echo worker inside the benchmark process (`--worker builtin`): a fallback for
//! when the project's example worker binary is not built, and a way to see how much of the
//! total a worker costs.
//!
//! It does what the example worker does per request, in the same order (protocol §2.3):
//! publish a `result` reply whose body is the request's body on a confirm-mode channel,
//! wait for the broker's confirm, then ack the request. Its CPU time is part of the
//! benchmark process, so with it the report has no separate worker CPU column.

use anyhow::Context as _;
use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection};
use taskgate_protocol::amqp as names;
use taskgate_protocol::ReplyKind;
use tokio::task::JoinHandle;

use crate::direct_load;

/// A running built-in worker; [`BuiltinWorker::stop`] ends it.
pub struct BuiltinWorker {
    connection: Connection,
    task: JoinHandle<()>,
}

impl BuiltinWorker {
    /// Connects, consumes `queue` with `prefetch` unacked requests at most, and answers
    /// every request until stopped.
    pub async fn start(amqp_url: &str, queue: &str, prefetch: u16) -> anyhow::Result<Self> {
        let connection = direct_load::connect_lapin(amqp_url).await?;
        let replies = connection.create_channel().await?;
        replies
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        let requests = connection.create_channel().await?;
        requests
            .basic_qos(prefetch, BasicQosOptions::default())
            .await?;
        let mut consumer = requests
            .basic_consume(
                queue.into(),
                "taskgate-bench-builtin-worker".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .with_context(|| format!("consuming from {queue}"))?;
        let task = tokio::spawn(async move {
            // One task per request, as the example worker does, so a slow confirm does not
            // hold up the next request.
            while let Some(Ok(delivery)) = consumer.next().await {
                tokio::spawn(answer(replies.clone(), delivery));
            }
        });
        Ok(BuiltinWorker { connection, task })
    }

    pub async fn stop(self) {
        self.task.abort();
        let _ = self.connection.close(200, "benchmark done".into()).await;
    }
}

/// Echoes one request; a request without `reply_to` or `correlation_id` is acked unanswered.
/// Failures only lose this one request, which the benchmark reports as unfinished.
async fn answer(replies: Channel, delivery: Delivery) {
    let reply_to = delivery.properties.reply_to().clone();
    let correlation_id = delivery.properties.correlation_id().clone();
    if let (Some(reply_to), Some(correlation_id)) = (reply_to, correlation_id) {
        let properties = BasicProperties::default()
            .with_content_type(names::CONTENT_TYPE_JSON.into())
            .with_correlation_id(correlation_id)
            .with_type(ReplyKind::Result.as_str().into());
        let published = replies
            .basic_publish(
                "".into(),
                reply_to.as_str().into(),
                BasicPublishOptions::default(),
                &delivery.data,
                properties,
            )
            .await;
        let Ok(confirm) = published else { return };
        if confirm.await.is_err() {
            return;
        }
    }
    let _ = delivery.acker.ack(BasicAckOptions::default()).await;
}
