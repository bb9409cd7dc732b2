//! Limits that keep one client — malicious or buggy — from degrading service for the
//! others: the largest payload, requests in flight and per second per connection,
//! connections per host, and how far a client may fall behind reading its responses.
//!
//! Every limit has a default suited to browsers on the open internet and is set in the
//! `[limits]` table of plugins.toml. The checks themselves run where the work is: the
//! gateway refuses requests (`RATE_LIMITED`, `PAYLOAD_TOO_LARGE`), the Socket.IO side
//! refuses connections and drops clients that stop reading.

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

/// Largest payload any request type may accept, unless plugins.toml says otherwise. Each
/// type has its own, lower limit (1 MiB unless its plugin or plugins.toml says otherwise):
/// the ceiling bounds how far those can be raised. 8 MiB keeps every configuration that
/// worked before the ceiling existed (the transport's limit was 8 MiB).
pub const DEFAULT_MAX_PAYLOAD_BYTES: usize = 8 * 1024 * 1024;
/// Requests one connection may have in flight at once.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 100;
/// Sustained `request` events per second and connection…
pub const DEFAULT_REQUESTS_PER_SECOND: u32 = 100;
/// …with bursts of this many (a page that fires many requests at load).
pub const DEFAULT_REQUEST_BURST: u32 = 500;
/// The largest reply body (chunk, result or error) a worker may send; a larger one ends
/// its request `WORKER_ERROR`. Also the most reply bytes buffered for one request that
/// waits for its publish confirm.
pub const DEFAULT_MAX_REPLY_BYTES: usize = 16 * 1024 * 1024;
/// Socket.IO connections one host serves at once.
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
/// Responses kept for a client that reads slower than they arrive, in bytes.
pub const DEFAULT_CLIENT_BACKLOG_BYTES: usize = 16 * 1024 * 1024;
/// How long a client's backlog may go without any progress before it is dropped.
pub const DEFAULT_CLIENT_STALL: Duration = Duration::from_secs(30);
/// Connections accepted that have not sent a complete request head yet (0: no limit).
pub const DEFAULT_MAX_PENDING_CONNECTIONS: usize = 1024;
/// How long a connection may take to send a request head, and a client to pass the
/// Socket.IO handshake after the engine.io one.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Room for the rest of a `request` message around its payload (event name, `id`,
/// `requestType`, framing): the transport's message limit is at least the largest
/// payload plus this, so that an over-limit payload is still answered `PAYLOAD_TOO_LARGE`.
pub const ENVELOPE_ALLOWANCE: usize = 64 * 1024;

/// The limits the host runs with (`[limits]` of plugins.toml, defaults filled in).
/// A zero turns `max_in_flight`, `requests_per_second` and `max_connections` off.
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    /// The ceiling for every request type: a larger per-type limit is cut to this.
    pub max_payload_bytes: usize,
    pub max_in_flight: usize,
    pub requests_per_second: u32,
    pub request_burst: u32,
    pub max_connections: usize,
    pub client_backlog_bytes: usize,
    pub client_stall: Duration,
    /// The largest worker reply body; a larger one ends its request `WORKER_ERROR`.
    pub max_reply_bytes: usize,
    /// Connections that have not sent a complete request head yet; more are closed at once.
    pub max_pending_connections: usize,
    /// The longest a request head may take to arrive (a connection that sends nothing is
    /// closed then), and the Socket.IO handshake after the engine.io one.
    pub handshake_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_payload_bytes: DEFAULT_MAX_PAYLOAD_BYTES,
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            requests_per_second: DEFAULT_REQUESTS_PER_SECOND,
            request_burst: DEFAULT_REQUEST_BURST,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            client_backlog_bytes: DEFAULT_CLIENT_BACKLOG_BYTES,
            client_stall: DEFAULT_CLIENT_STALL,
            max_reply_bytes: DEFAULT_MAX_REPLY_BYTES,
            max_pending_connections: DEFAULT_MAX_PENDING_CONNECTIONS,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
        }
    }
}

impl Limits {
    /// A request type's payload limit under the host's ceiling.
    pub fn payload_limit(&self, declared: usize) -> usize {
        declared.min(self.max_payload_bytes)
    }

    /// The largest Socket.IO message the transports accept (long-polling body and
    /// WebSocket message alike): what the operator set, but never so small that a payload
    /// within the ceiling could not arrive with its envelope.
    pub fn transport_message_limit(&self, configured: usize) -> usize {
        configured.max(self.max_payload_bytes.saturating_add(ENVELOPE_ALLOWANCE))
    }

    /// A fresh request-rate budget for one connection.
    pub fn request_rate(&self) -> RequestRate {
        RequestRate::new(self.requests_per_second, self.request_burst)
    }

    /// The in-flight limit of one connection, `None` when off.
    pub fn in_flight_limit(&self) -> Option<usize> {
        (self.max_in_flight > 0).then_some(self.max_in_flight)
    }
}

/// One connection's budget of `request` events (a GCRA token bucket: `burst` at once,
/// refilled at `per_second`). Every event counts, malformed ones too: a client that
/// floods the host with garbage is throttled like one that floods it with work.
pub struct RequestRate {
    limiter: Option<DefaultDirectRateLimiter>,
    per_second: u32,
    clock: DefaultClock,
}

impl std::fmt::Debug for RequestRate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestRate")
            .field("limited", &self.limiter.is_some())
            .finish()
    }
}

impl RequestRate {
    /// `per_second` 0: unlimited.
    pub fn new(per_second: u32, burst: u32) -> Self {
        let limiter = NonZeroU32::new(per_second).map(|rate| {
            let burst = NonZeroU32::new(burst).unwrap_or(rate);
            RateLimiter::direct(Quota::per_second(rate).allow_burst(burst))
        });
        RequestRate {
            limiter,
            per_second,
            clock: DefaultClock::default(),
        }
    }

    /// The sustained rate (0: unlimited).
    pub fn per_second(&self) -> u32 {
        self.per_second
    }

    pub fn unlimited() -> Self {
        Self::new(0, 0)
    }

    /// Takes one request from the budget; `Err` says how long until the next one fits.
    pub fn check(&self) -> Result<(), Duration> {
        match &self.limiter {
            None => Ok(()),
            Some(limiter) => limiter
                .check()
                .map_err(|not_until| not_until.wait_time_from(self.clock.now())),
        }
    }
}

/// Counts the host's Socket.IO connections against `max_connections`.
#[derive(Debug, Clone)]
pub struct ConnectionCounter {
    current: Arc<AtomicUsize>,
    max: usize,
}

/// One admitted connection; dropping it frees its place.
#[derive(Debug)]
pub struct ConnectionSlot {
    current: Arc<AtomicUsize>,
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.current.fetch_sub(1, Ordering::AcqRel);
    }
}

impl ConnectionCounter {
    /// `max` 0: unlimited.
    pub fn new(max: usize) -> Self {
        ConnectionCounter {
            current: Arc::new(AtomicUsize::new(0)),
            max,
        }
    }

    /// A place for one more connection, or `None` when the host is full.
    pub fn try_acquire(&self) -> Option<ConnectionSlot> {
        let max = if self.max == 0 { usize::MAX } else { self.max };
        self.current
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()?;
        Some(ConnectionSlot {
            current: self.current.clone(),
        })
    }

    /// Connections admitted and not yet gone.
    pub fn current(&self) -> usize {
        self.current.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_is_allowed_then_requests_are_refused_with_a_wait() {
        let rate = RequestRate::new(1, 3);
        for _ in 0..3 {
            assert_eq!(rate.check(), Ok(()));
        }
        let wait = rate.check().expect_err("the fourth is over the burst");
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_secs(1),
            "{wait:?}"
        );
    }

    #[test]
    fn a_zero_rate_is_unlimited() {
        let rate = RequestRate::new(0, 0);
        for _ in 0..10_000 {
            assert_eq!(rate.check(), Ok(()));
        }
        assert!(RequestRate::unlimited().check().is_ok());
    }

    #[test]
    fn a_zero_burst_means_the_rate_itself() {
        let rate = RequestRate::new(2, 0);
        assert!(rate.check().is_ok());
        assert!(rate.check().is_ok());
        assert!(rate.check().is_err());
    }

    #[test]
    fn connection_slots_are_counted_and_freed_on_drop() {
        let counter = ConnectionCounter::new(2);
        let a = counter.try_acquire().expect("first");
        let b = counter.try_acquire().expect("second");
        assert!(counter.try_acquire().is_none(), "the host is full");
        assert_eq!(counter.current(), 2);
        drop(a);
        assert_eq!(counter.current(), 1);
        let c = counter.try_acquire().expect("a place was freed");
        drop((b, c));
        assert_eq!(counter.current(), 0);
        let unlimited = ConnectionCounter::new(0);
        let slots: Vec<_> = (0..1000).filter_map(|_| unlimited.try_acquire()).collect();
        assert_eq!(slots.len(), 1000);
    }

    #[test]
    fn payload_limits_are_capped_and_the_transport_fits_the_largest_payload() {
        let limits = Limits {
            max_payload_bytes: 1000,
            ..Limits::default()
        };
        assert_eq!(limits.payload_limit(500), 500);
        assert_eq!(limits.payload_limit(5000), 1000);
        assert_eq!(
            limits.transport_message_limit(10),
            1000 + ENVELOPE_ALLOWANCE
        );
        assert_eq!(limits.transport_message_limit(1 << 30), 1 << 30);
        assert_eq!(limits.in_flight_limit(), Some(DEFAULT_MAX_IN_FLIGHT));
        let off = Limits {
            max_in_flight: 0,
            ..Limits::default()
        };
        assert_eq!(off.in_flight_limit(), None);
    }
}
