//! Retries with backoff (protocol §3.12), without AMQP: the request type's policy as the host
//! sends it (header `x-retry`), whether a failed attempt is retried, and after how long.
//! [`crate::rabbitmq`] does the waiting: it republishes the request to a wait queue whose TTL
//! dead-letters it back to the request queue, so no worker slot is held. The Node and Python
//! SDKs have the same rules in `retry.ts` / `retry.py`.

use serde::Deserialize;
use taskgate_protocol::ErrorCode;

use crate::error::TaskError;

const DAY_MS: u64 = 24 * 3600 * 1000;

/// How many attempts a request gets and how long to wait between them.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct RetryPolicy {
    /// Attempts in all, the first one included.
    pub attempts: u32,
    /// The delay before the first retry, in ms.
    pub delay_ms: u64,
    #[serde(default)]
    pub backoff: Backoff,
    #[serde(default)]
    pub max_delay_ms: Option<u64>,
    /// Wait a random 50 % to 100 % of each delay.
    #[serde(default)]
    pub jitter: bool,
    /// Codes retried even when the handler did not mark the error retryable.
    #[serde(default)]
    pub retry_on: Vec<String>,
}

/// How a retry delay grows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Backoff {
    #[default]
    Fixed,
    Exponential,
}

impl RetryPolicy {
    /// The `x-retry` header's JSON; `None` when it is not a valid policy (then no retries).
    pub fn parse(text: &str) -> Option<Self> {
        let policy: RetryPolicy = serde_json::from_str(text).ok()?;
        let cap_ok = policy
            .max_delay_ms
            .is_none_or(|cap| (policy.delay_ms..=DAY_MS).contains(&cap));
        let valid = (1..=100).contains(&policy.attempts)
            && (1..=DAY_MS).contains(&policy.delay_ms)
            && cap_ok;
        valid.then_some(policy)
    }

    /// Milliseconds to wait after failed attempt `attempt` (1, 2 …); `random` in [0, 1).
    /// With jitter, a random 50–100 % of the delay, in steps of a tenth of it (so that a
    /// few wait queues serve every delay).
    pub fn delay_after(&self, attempt: u32, random: f64) -> u64 {
        let mut delay = match self.backoff {
            Backoff::Fixed => self.delay_ms,
            Backoff::Exponential => self
                .delay_ms
                .saturating_mul(1u64 << attempt.saturating_sub(1).min(40)),
        };
        if let Some(cap) = self.max_delay_ms {
            delay = delay.min(cap);
        }
        delay = delay.min(DAY_MS);
        if self.jitter {
            let step = (delay / 10).max(1);
            let half = delay / 2;
            let jittered = half + ((random * (delay - half + 1) as f64) as u64);
            delay = (jittered - jittered % step).min(delay).max(1);
        }
        delay
    }

    /// Whether the policy retries `error` (attempts and deadline aside).
    pub fn is_retryable(&self, error: &TaskError) -> bool {
        let never = [
            ErrorCode::Cancelled.as_str(),
            ErrorCode::InvalidPayload.as_str(),
        ];
        if never.contains(&error.code.as_str()) {
            return false;
        }
        error.retryable || self.retry_on.contains(&error.code)
    }
}

/// Where a failed attempt stands.
pub(crate) struct AttemptState {
    pub chunks_sent: bool,
    pub cancelled: bool,
    pub deadline_ms: Option<i64>,
    pub now_ms: i64,
    /// In [0, 1), for the jitter.
    pub random: f64,
}

/// The next attempt and the delay before it (ms), or `None` when `error` is final: no
/// policy, not retryable, attempts used up, chunks already streamed (a client never sees a
/// chunk sequence start over), cancelled, or the next attempt would start after the deadline.
pub(crate) fn next_attempt(
    policy: Option<&RetryPolicy>,
    attempt: u32,
    error: &TaskError,
    state: &AttemptState,
) -> Option<(u32, u64)> {
    let policy = policy?;
    if state.cancelled || state.chunks_sent || attempt >= policy.attempts {
        return None;
    }
    if !policy.is_retryable(error) {
        return None;
    }
    let delay = policy.delay_after(attempt, state.random);
    let starts = state
        .now_ms
        .saturating_add(i64::try_from(delay).unwrap_or(i64::MAX));
    if state.deadline_ms.is_some_and(|deadline| starts >= deadline) {
        return None;
    }
    Some((attempt + 1, delay))
}

/// The queue a request waits in for `delay_ms` before going back to `queue`.
pub(crate) fn wait_queue(queue: &str, delay_ms: u64) -> String {
    format!("{queue}.retry.{delay_ms}")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn exponential() -> RetryPolicy {
        RetryPolicy {
            attempts: 5,
            delay_ms: 100,
            backoff: Backoff::Exponential,
            max_delay_ms: Some(500),
            jitter: false,
            retry_on: vec![],
        }
    }

    #[test]
    fn the_policy_is_read_from_the_header_and_refused_when_malformed() {
        let p = RetryPolicy::parse(r#"{"attempts":3,"backoff":"exponential","delayMs":100,"maxDelayMs":1000,"jitter":true,"retryOn":["UPSTREAM"]}"#).unwrap();
        assert_eq!(p.attempts, 3);
        assert_eq!(p.backoff, Backoff::Exponential);
        assert_eq!(p.retry_on, vec!["UPSTREAM".to_owned()]);
        let fixed = RetryPolicy::parse(r#"{"attempts":2,"delayMs":5}"#).unwrap();
        assert_eq!((fixed.backoff, fixed.jitter), (Backoff::Fixed, false));
        for bad in [
            "not json",
            "[]",
            r#"{"attempts":0,"delayMs":5}"#,
            r#"{"attempts":2}"#,
            r#"{"attempts":2,"delayMs":5,"backoff":"linear"}"#,
            r#"{"attempts":2,"delayMs":50,"maxDelayMs":10}"#,
            r#"{"attempts":2,"delayMs":5,"retryOn":[1]}"#,
        ] {
            assert_eq!(RetryPolicy::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn delays_are_fixed_or_doubling_up_to_the_cap() {
        let fixed = RetryPolicy {
            backoff: Backoff::Fixed,
            ..exponential()
        };
        let delays = |p: &RetryPolicy| (1..=4).map(|n| p.delay_after(n, 0.0)).collect::<Vec<_>>();
        assert_eq!(delays(&fixed), vec![100, 100, 100, 100]);
        assert_eq!(delays(&exponential()), vec![100, 200, 400, 500]);
    }

    #[test]
    fn jitter_waits_half_to_all_of_the_delay_in_tenths() {
        let p = RetryPolicy {
            backoff: Backoff::Fixed,
            delay_ms: 1000,
            max_delay_ms: None,
            jitter: true,
            ..exponential()
        };
        assert_eq!(p.delay_after(1, 0.0), 500);
        assert_eq!(p.delay_after(1, 0.999), 1000);
        assert_eq!(p.delay_after(1, 0.33), 600);
    }

    #[test]
    fn what_is_retried() {
        let retryable = TaskError::with_code("UPSTREAM", "503").retryable();
        let state = |f: &dyn Fn(&mut AttemptState)| {
            let mut s = AttemptState {
                chunks_sent: false,
                cancelled: false,
                deadline_ms: Some(1_000_000),
                now_ms: 0,
                random: 0.0,
            };
            f(&mut s);
            s
        };
        let normal = state(&|_| {});
        let p = exponential();
        assert_eq!(
            next_attempt(Some(&p), 1, &retryable, &normal),
            Some((2, 100))
        );
        assert_eq!(
            next_attempt(Some(&p), 3, &retryable, &normal),
            Some((4, 400))
        );
        assert_eq!(next_attempt(Some(&p), 5, &retryable, &normal), None);
        assert_eq!(next_attempt(None, 1, &retryable, &normal), None);
        let plain = TaskError::with_code("UPSTREAM", "503");
        assert_eq!(next_attempt(Some(&p), 1, &plain, &normal), None);
        let listed = RetryPolicy {
            retry_on: vec!["UPSTREAM".into()],
            ..exponential()
        };
        assert_eq!(
            next_attempt(Some(&listed), 1, &plain, &normal),
            Some((2, 100))
        );
        let cancelled = TaskError::cancelled().retryable();
        assert_eq!(next_attempt(Some(&p), 1, &cancelled, &normal), None);
        let invalid = TaskError::invalid_payload("x").retryable();
        assert_eq!(next_attempt(Some(&p), 1, &invalid, &normal), None);
        assert_eq!(
            next_attempt(Some(&p), 1, &retryable, &state(&|s| s.chunks_sent = true)),
            None
        );
        assert_eq!(
            next_attempt(Some(&p), 1, &retryable, &state(&|s| s.cancelled = true)),
            None
        );
        assert_eq!(
            next_attempt(
                Some(&p),
                1,
                &retryable,
                &state(&|s| s.deadline_ms = Some(100))
            ),
            None
        );
        assert_eq!(
            next_attempt(
                Some(&p),
                1,
                &retryable,
                &state(&|s| s.deadline_ms = Some(101))
            ),
            Some((2, 100))
        );
        assert_eq!(
            next_attempt(Some(&p), 1, &retryable, &state(&|s| s.deadline_ms = None)),
            Some((2, 100))
        );
    }

    #[test]
    fn wait_queues_are_named_by_their_delay() {
        assert_eq!(wait_queue("taskgate.echo", 250), "taskgate.echo.retry.250");
    }
}
