//! The publish channel of one session: sends a message, numbers it for publisher confirms,
//! and waits for the broker's confirm ([`super::super::confirms`] matches them).

use std::sync::Arc;

use amqprs::channel::{BasicPublishArguments, Channel};
use amqprs::BasicProperties;
use uuid::Uuid;

use crate::broker::confirms::{ConfirmReceiver, Confirms};
use crate::broker::PublishError;

/// The publish channel with its confirm numbering.
pub(super) struct Publisher {
    pub(super) channel: Channel,
    /// The number of the last publish sent on the channel. Held across the hand-over to
    /// the client so that numbers follow the order in which the broker receives messages.
    pub(super) last_tag: tokio::sync::Mutex<u64>,
    pub(super) confirms: Arc<Confirms>,
}

/// The message of a publish, as the AMQP client takes it.
pub(super) struct Message<'a> {
    pub(super) exchange: &'a str,
    pub(super) routing_key: &'a Arc<str>,
    pub(super) mandatory: bool,
    pub(super) correlation_id: Uuid,
    pub(super) properties: BasicProperties,
    pub(super) body: Vec<u8>,
}

impl Publisher {
    /// Sends a message and waits for the broker's confirm.
    pub(super) async fn publish(&self, message: Message<'_>) -> Result<(), PublishError> {
        let confirmed = self.send(message).await?;
        confirmed.await.unwrap_or_else(|_| {
            Err(PublishError::Amqp(
                "the session ended before the broker confirmed the message".to_owned(),
            ))
        })
    }

    /// Sends a message and returns its confirm, to wait for apart: messages sent one after
    /// the other reach the broker in that order, whether or not their confirms are awaited.
    pub(super) async fn send(&self, message: Message<'_>) -> Result<ConfirmReceiver, PublishError> {
        check_routing_key(message.routing_key)?;
        let mut last_tag = self.last_tag.lock().await;
        let tag = *last_tag + 1;
        let confirmed =
            self.confirms
                .expect(tag, message.correlation_id, message.routing_key.clone())?;
        // Until the client has the message, the number is only reserved: dropped here
        // (an error, or the caller gave up), the number is released.
        let reserved = Reserved {
            confirms: &self.confirms,
            tag,
        };
        let mut arguments = BasicPublishArguments::new(message.exchange, message.routing_key);
        arguments.mandatory(message.mandatory);
        self.channel
            .basic_publish(message.properties, message.body, arguments)
            .await
            .map_err(|e| PublishError::Amqp(e.to_string()))?;
        std::mem::forget(reserved);
        *last_tag = tag;
        Ok(confirmed)
    }
}

/// amqprs would panic on a routing key over 255 bytes; queue names come from plugins.toml.
fn check_routing_key(routing_key: &str) -> Result<(), PublishError> {
    if routing_key.len() <= 255 {
        return Ok(());
    }
    let start: String = routing_key.chars().take(32).collect();
    Err(PublishError::Amqp(format!(
        "queue name `{start}…` is longer than AMQP's 255 bytes"
    )))
}

/// A confirm number reserved for a message not yet handed to the client.
struct Reserved<'a> {
    confirms: &'a Confirms,
    tag: u64,
}

impl Drop for Reserved<'_> {
    fn drop(&mut self) {
        self.confirms.forget(self.tag);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn routing_keys_over_255_bytes_are_refused_without_splitting_a_character() {
        assert!(check_routing_key(&"q".repeat(255)).is_ok());
        // 'é' is two bytes: byte 32 falls inside one, which a byte slice would panic on.
        let long = format!("q{}", "é".repeat(200));
        match check_routing_key(&long) {
            Err(PublishError::Amqp(message)) => assert!(message.contains("255 bytes"), "{message}"),
            other => panic!("{other:?}"),
        }
    }
}
