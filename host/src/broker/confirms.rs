//! Publisher confirms of one channel, matched to the publishes that wait for them.
//!
//! In confirm mode the broker numbers a channel's publishes 1, 2, 3… in the order it
//! receives them, and acks or nacks each by its number — or every number up to it
//! (`multiple`). A mandatory message that no queue took is first returned (`basic.return`,
//! which carries the message's properties but not its number) and then acked. The AMQP
//! client hands these to a callback; [`Confirms`] turns them into one answer per publish.
//!
//! Numbers are given by the publisher ([`super::amqp`]) under its publish lock, before the
//! message is handed to the client: `expect` first, `forget` if the message was not sent
//! after all, so that an ack can never arrive for a number nobody waits for.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::oneshot;
use uuid::Uuid;

use super::PublishError;

/// What one publish waits for.
pub type ConfirmReceiver = oneshot::Receiver<Result<(), PublishError>>;

struct Waiter {
    correlation_id: Uuid,
    /// Where the message was routed (for the error if it is returned).
    routing_key: Arc<str>,
    returned: bool,
    answer: oneshot::Sender<Result<(), PublishError>>,
}

#[derive(Default)]
struct State {
    waiting: BTreeMap<u64, Waiter>,
    /// Set once the channel is gone: every later publish fails with this reason.
    closed: Option<String>,
}

/// The publishes of one channel that wait for the broker's confirm.
#[derive(Default)]
pub struct Confirms {
    state: Mutex<State>,
}

impl Confirms {
    pub fn new() -> Arc<Self> {
        Arc::new(Confirms::default())
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Registers publish number `tag`, about to be sent. Fails once the channel is closed.
    pub fn expect(
        &self,
        tag: u64,
        correlation_id: Uuid,
        routing_key: Arc<str>,
    ) -> Result<ConfirmReceiver, PublishError> {
        let mut state = self.state();
        if let Some(reason) = &state.closed {
            return Err(PublishError::Amqp(reason.clone()));
        }
        let (answer, receiver) = oneshot::channel();
        state.waiting.insert(
            tag,
            Waiter {
                correlation_id,
                routing_key,
                returned: false,
                answer,
            },
        );
        Ok(receiver)
    }

    /// Publish number `tag` was not sent after all.
    pub fn forget(&self, tag: u64) {
        self.state().waiting.remove(&tag);
    }

    /// The broker returned the message with this correlation id: no queue took it. Its
    /// ack follows.
    pub fn returned(&self, correlation_id: &str) {
        let Ok(correlation_id) = Uuid::parse_str(correlation_id) else {
            return;
        };
        let mut state = self.state();
        if let Some(waiter) = state
            .waiting
            .values_mut()
            .find(|w| w.correlation_id == correlation_id)
        {
            waiter.returned = true;
        }
    }

    /// The broker took publish `tag` (or every publish up to it).
    pub fn ack(&self, tag: u64, multiple: bool) {
        for waiter in self.take(tag, multiple) {
            let answer = if waiter.returned {
                Err(PublishError::Unroutable(waiter.routing_key.to_string()))
            } else {
                Ok(())
            };
            let _ = waiter.answer.send(answer);
        }
    }

    /// The broker refused publish `tag` (or every publish up to it).
    pub fn nack(&self, tag: u64, multiple: bool) {
        for waiter in self.take(tag, multiple) {
            let _ = waiter.answer.send(Err(PublishError::Nacked));
        }
    }

    /// The channel is gone: every waiting publish fails, and so does every later one.
    pub fn close(&self, reason: &str) {
        let waiting = {
            let mut state = self.state();
            state.closed.get_or_insert_with(|| reason.to_owned());
            std::mem::take(&mut state.waiting)
        };
        for waiter in waiting.into_values() {
            let _ = waiter.answer.send(Err(PublishError::Amqp(format!(
                "{reason} before the broker confirmed the message"
            ))));
        }
    }

    /// How many publishes wait (for tests and diagnostics).
    pub fn waiting(&self) -> usize {
        self.state().waiting.len()
    }

    fn take(&self, tag: u64, multiple: bool) -> Vec<Waiter> {
        let mut state = self.state();
        if multiple {
            let rest = state.waiting.split_off(&(tag.saturating_add(1)));
            std::mem::replace(&mut state.waiting, rest)
                .into_values()
                .collect()
        } else {
            state.waiting.remove(&tag).into_iter().collect()
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn expect(confirms: &Confirms, tag: u64) -> (Uuid, ConfirmReceiver) {
        let id = Uuid::new_v4();
        (id, confirms.expect(tag, id, "q".into()).unwrap())
    }

    #[test]
    fn a_single_ack_answers_only_its_own_publish() {
        let confirms = Confirms::new();
        let (_, mut first) = expect(&confirms, 1);
        let (_, mut second) = expect(&confirms, 2);
        confirms.ack(2, false);
        assert_eq!(second.try_recv().unwrap(), Ok(()));
        assert!(first.try_recv().is_err(), "publish 1 still waits");
        assert_eq!(confirms.waiting(), 1);
    }

    #[test]
    fn a_multiple_ack_answers_every_publish_up_to_its_number() {
        let confirms = Confirms::new();
        let mut receivers: Vec<_> = (1..=4).map(|tag| expect(&confirms, tag).1).collect();
        confirms.ack(3, true);
        for receiver in &mut receivers[..3] {
            assert_eq!(receiver.try_recv().unwrap(), Ok(()));
        }
        assert!(receivers[3].try_recv().is_err());
        assert_eq!(confirms.waiting(), 1);
    }

    #[test]
    fn a_nack_refuses_the_message() {
        let confirms = Confirms::new();
        let (_, mut one) = expect(&confirms, 1);
        let (_, mut two) = expect(&confirms, 2);
        confirms.nack(2, true);
        assert_eq!(one.try_recv().unwrap(), Err(PublishError::Nacked));
        assert_eq!(two.try_recv().unwrap(), Err(PublishError::Nacked));
    }

    #[test]
    fn a_returned_message_is_unroutable_when_its_ack_comes() {
        let confirms = Confirms::new();
        let (_, mut routed) = expect(&confirms, 1);
        let id = Uuid::new_v4();
        let mut unroutable = confirms.expect(2, id, "missing-queue".into()).unwrap();
        confirms.returned(&id.to_string());
        confirms.ack(2, true);
        assert_eq!(routed.try_recv().unwrap(), Ok(()));
        assert_eq!(
            unroutable.try_recv().unwrap(),
            Err(PublishError::Unroutable("missing-queue".into()))
        );
    }

    #[test]
    fn a_return_with_an_unknown_or_malformed_correlation_id_changes_nothing() {
        let confirms = Confirms::new();
        let (_, mut one) = expect(&confirms, 1);
        confirms.returned("not a uuid");
        confirms.returned(&Uuid::new_v4().to_string());
        confirms.ack(1, false);
        assert_eq!(one.try_recv().unwrap(), Ok(()));
    }

    #[test]
    fn a_forgotten_publish_no_longer_waits() {
        let confirms = Confirms::new();
        let (_, _receiver) = expect(&confirms, 1);
        confirms.forget(1);
        assert_eq!(confirms.waiting(), 0);
        confirms.ack(1, false); // an ack for nobody is ignored
    }

    #[test]
    fn closing_fails_the_waiting_publishes_and_every_later_one() {
        let confirms = Confirms::new();
        let (_, mut one) = expect(&confirms, 1);
        confirms.close("the connection was lost");
        match one.try_recv().unwrap() {
            Err(PublishError::Amqp(reason)) => {
                assert!(reason.contains("the connection was lost"), "{reason}")
            }
            other => panic!("{other:?}"),
        }
        let later = confirms.expect(2, Uuid::new_v4(), "q".into());
        assert!(matches!(later, Err(PublishError::Amqp(_))));
    }
}
