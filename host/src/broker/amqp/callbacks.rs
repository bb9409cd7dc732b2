//! What the broker tells a session through amqprs's callbacks: confirms, returns and closes
//! on the publish channel, a close or cancelled consumer on the reply channel, a close or
//! block of the connection. Anything that ends the session goes to its [`SessionEnd`].

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use amqprs::callbacks::{ChannelCallback, ConnectionCallback};
use amqprs::channel::Channel;
use amqprs::connection::Connection;
use amqprs::{Ack, BasicProperties, Cancel, Close, CloseChannel, Nack, Return};
use tracing::{info, warn};

use super::session::SessionEnd;
use crate::broker::confirms::Confirms;

/// Broker events on the publish channel: confirms, returns, a close.
pub(super) struct PublishEvents {
    pub(super) confirms: Arc<Confirms>,
    pub(super) end: Arc<SessionEnd>,
}

#[async_trait::async_trait]
impl ChannelCallback for PublishEvents {
    async fn close(
        &mut self,
        _: &Channel,
        close: CloseChannel,
    ) -> Result<(), amqprs::error::Error> {
        let reason = format!("the broker closed the publish channel: {close}");
        self.confirms.close(&reason);
        self.end.end(reason);
        Ok(())
    }
    async fn cancel(&mut self, _: &Channel, _: Cancel) -> Result<(), amqprs::error::Error> {
        Ok(())
    }
    async fn flow(&mut self, _: &Channel, active: bool) -> Result<bool, amqprs::error::Error> {
        Ok(active)
    }
    async fn publish_ack(&mut self, _: &Channel, ack: Ack) {
        self.confirms.ack(ack.delivery_tag(), ack.mutiple());
    }
    async fn publish_nack(&mut self, _: &Channel, nack: Nack) {
        self.confirms.nack(nack.delivery_tag(), nack.multiple());
    }
    async fn publish_return(
        &mut self,
        _: &Channel,
        _: Return,
        properties: BasicProperties,
        _: Vec<u8>,
    ) {
        if let Some(correlation_id) = properties.correlation_id() {
            self.confirms.returned(correlation_id);
        }
    }
}

/// Broker events on the reply channel: a close, or the reply consumer cancelled (its queue
/// deleted) end the session.
pub(super) struct ReplyEvents {
    pub(super) end: Arc<SessionEnd>,
}

#[async_trait::async_trait]
impl ChannelCallback for ReplyEvents {
    async fn close(
        &mut self,
        _: &Channel,
        close: CloseChannel,
    ) -> Result<(), amqprs::error::Error> {
        self.end
            .end(format!("the broker closed the reply channel: {close}"));
        Ok(())
    }
    async fn cancel(&mut self, _: &Channel, _: Cancel) -> Result<(), amqprs::error::Error> {
        self.end
            .end("the broker cancelled the reply consumer".to_owned());
        Ok(())
    }
    async fn flow(&mut self, _: &Channel, active: bool) -> Result<bool, amqprs::error::Error> {
        Ok(active)
    }
    async fn publish_ack(&mut self, _: &Channel, _: Ack) {}
    async fn publish_nack(&mut self, _: &Channel, _: Nack) {}
    async fn publish_return(&mut self, _: &Channel, _: Return, _: BasicProperties, _: Vec<u8>) {}
}

/// Broker events on the connection: a close ends the session; a block (RabbitMQ's memory
/// or disk alarm: publishes stall until it lifts) is logged.
pub(super) struct ConnectionEvents {
    pub(super) end: Arc<SessionEnd>,
    /// Set while the broker blocks the connection.
    pub(super) blocked: Arc<AtomicBool>,
}

#[async_trait::async_trait]
impl ConnectionCallback for ConnectionEvents {
    async fn close(&mut self, _: &Connection, close: Close) -> Result<(), amqprs::error::Error> {
        self.end
            .end(format!("the broker closed the connection: {close}"));
        Ok(())
    }
    async fn blocked(&mut self, _: &Connection, reason: String) {
        self.blocked.store(true, Ordering::SeqCst);
        warn!(%reason, "the broker blocks this connection: publishes wait until it unblocks");
    }
    async fn unblocked(&mut self, _: &Connection) {
        self.blocked.store(false, Ordering::SeqCst);
        info!("the broker unblocked this connection");
    }
    async fn secret_updated(&mut self, _: &Connection) {}
}
