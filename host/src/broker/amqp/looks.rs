//! A look at a request queue: a passive declare, whose answer carries the ready messages and
//! the consumers without the management plugin. The host's watch of which types have workers
//! (`serving`, through `Broker::look`) looks this way, and the console reads its looks; the
//! console's cluster link looks itself only for a console without them.

use std::time::Duration;

use amqprs::channel::{Channel, QueueDeclareArguments};
use amqprs::connection::Connection;

use super::connect::connect_named;
use crate::console::cluster::Look;

/// How long `taskgate plugins` waits for the broker before it reports without consumers.
const ONE_OFF_TIMEOUT: Duration = Duration::from_secs(3);

/// The consumers of each of `queues`, looked at once on a connection of its own (`taskgate
/// plugins`), or why the broker could not be asked.
pub async fn consumers_now(
    url: &str,
    queues: &[String],
) -> Result<Vec<Result<u32, String>>, String> {
    let work = async {
        let connection = connect_named(url, "taskgate plugins")
            .await
            .map_err(|e| e.to_string())?;
        let mut looker = None;
        let mut looks = Vec::with_capacity(queues.len());
        for queue in queues {
            looks.push(
                look_at(&connection, &mut looker, queue)
                    .await
                    .map(|(_, consumers)| consumers),
            );
        }
        let _ = connection.close().await;
        Ok(looks)
    };
    tokio::time::timeout(ONE_OFF_TIMEOUT, work)
        .await
        .map_err(|_| format!("no answer from the broker within {ONE_OFF_TIMEOUT:?}"))?
}

/// A passive declare of `queue` on `looker` (opened again when a failed look closed it).
pub(crate) async fn look_at(
    connection: &Connection,
    looker: &mut Option<Channel>,
    queue: &str,
) -> Look {
    let channel = match looker.take().filter(Channel::is_open) {
        Some(channel) => channel,
        None => connection
            .open_channel(None)
            .await
            .map_err(|e| format!("cannot open a channel: {e}"))?,
    };
    let passive = QueueDeclareArguments::new(queue).passive(true).finish();
    match channel.queue_declare(passive).await {
        Ok(Some((_, ready, consumers))) => {
            *looker = Some(channel);
            Ok((ready, consumers))
        }
        Ok(None) => Err("no answer to the passive declare".to_owned()),
        // The broker closes the channel of a passive declare of a missing queue (amqprs
        // reports only that it closed): the next look opens another.
        Err(e) => Err(format!(
            "the broker refused to describe the queue: does it exist yet? ({e})"
        )),
    }
}
