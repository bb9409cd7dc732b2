//! Admission of a `request` event and its publish. Admission runs synchronously, in the
//! connection's event order: the request rate and shutdown gates, the checks that need no
//! state (`envelope::check`), then the reservation of the client id and the
//! in-flight entry. The publish runs after it, and the ack follows the broker's confirm.

use std::collections::hash_map::Entry;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::value::RawValue;
use taskgate_protocol::trace::TraceParent;
use tokio::time::Instant;
use tracing::{debug, warn};
use uuid::Uuid;

use super::envelope::{self, Caller, InFlightCount, Refusal, RequestEnvelope, ValidRequest};
use super::{Gateway, InFlight, Stage};
use crate::broker::{Broker, OutgoingRequest, PublishError};
use crate::error::{RateLimit, RequestError, UnavailableCause};
use crate::metrics::{Outcome, RequestMetrics};
use crate::routes::RequestTypeSpec;
use crate::session::Session;
use crate::sink::ClientSink;
use crate::trace::{self, ClientTrace};

/// A request entered in flight, `Publishing`: what its publish step needs.
struct Admitted<C> {
    conn: C,
    correlation_id: Uuid,
    spec: Arc<RequestTypeSpec>,
    body: Box<str>,
    /// The plugin's validation of `body` is still due, off the I/O thread.
    validate_off_thread: bool,
    identity: Option<Arc<str>>,
    traceparent: TraceParent,
}

impl<B: Broker, S: ClientSink> Gateway<B, S> {
    /// Handles one `request` event in two steps. Admission (checks, id reservation) runs
    /// now, synchronously, so that it is ordered with the connection's other events — a
    /// `cancel` sent right after a `request` always finds it. The returned future publishes
    /// and acknowledges; `None` means the request was refused and the refusal already sent.
    /// `envelope` is `Err` with a parse message when the event body had the wrong shape.
    pub fn submit(
        self: &Arc<Self>,
        conn: S::Conn,
        envelope: Result<RequestEnvelope, String>,
        ack: S::Ack,
    ) -> Option<impl Future<Output = ()> + Send + 'static> {
        // A detached task when the hosts share a task store: it goes through the store.
        let (mut envelope, mut ack) = (Some(envelope), Some(ack));
        if self.submit_shared(conn, &mut envelope, &mut ack) {
            return None;
        }
        let (Some(envelope), Some(ack)) = (envelope, ack) else {
            return None;
        };
        // A session resending the id of a request it still has: the work is not run again
        // (protocol §4.3).
        if let Some((correlation_id, client_id)) = self.owned_elsewhere(conn, &envelope) {
            let session = self.sessions.get(&conn).map(|s| s.value().clone());
            match self.gate(session.as_deref()) {
                Ok(()) => self.reattach(conn, correlation_id, client_id, ack),
                Err(error) => self.send_refusal(conn, ack, &error),
            }
            return None;
        }
        match self.admit(conn, envelope) {
            Ok(admitted) => {
                let gateway = self.clone();
                Some(async move { gateway.publish(admitted, ack).await })
            }
            Err(Refusal { error, spec }) => {
                debug!(?conn, code = %error.code(), %error, "request refused");
                let known_type = spec.as_ref().map(|spec| spec.name.as_str());
                self.refuse(conn, ack, known_type, &error, None);
                None
            }
        }
    }

    /// [`Gateway::submit`] and its publish step, in one call.
    pub async fn handle_request(
        self: &Arc<Self>,
        conn: S::Conn,
        envelope: Result<RequestEnvelope, String>,
        ack: S::Ack,
    ) {
        if let Some(publish) = self.submit(conn, envelope, ack) {
            publish.await;
        }
    }

    async fn publish(self: Arc<Self>, admitted: Admitted<S::Conn>, ack: S::Ack) {
        let Admitted {
            conn,
            correlation_id,
            spec,
            body,
            validate_off_thread,
            identity,
            traceparent,
        } = admitted;
        let body = if validate_off_thread {
            match validate_off_the_io_thread(&spec, body).await {
                Ok(body) => body,
                Err(error) => {
                    debug!(%correlation_id, %traceparent, request_type = %spec.name, %error, "request refused by its validation");
                    self.refuse_admitted(conn, ack, correlation_id, &error);
                    return;
                }
            }
        } else {
            body
        };
        // Nobody would take it: say so now rather than with a `TIMEOUT` (`serving`).
        if let Err(error) = self
            .serving
            .check(
                self.broker.as_ref(),
                &spec.name,
                &spec.queue,
                spec.when_no_workers,
            )
            .await
        {
            debug!(%correlation_id, %traceparent, request_type = %spec.name, %error, "request refused: no worker");
            self.refuse_admitted(conn, ack, correlation_id, &error);
            return;
        }
        let deadline = Instant::now() + spec.timeout;
        let request = OutgoingRequest {
            correlation_id,
            request_type: spec.name.as_str().into(),
            queue: spec.queue.as_str().into(),
            body,
            streams: spec.streams,
            timeout: spec.timeout,
            deadline_ms: unix_ms_after(spec.timeout),
            identity,
            traceparent,
            reply_to: None,
            retry: spec.retry.clone(),
        };
        let wait = self.options.publish_timeout.min(spec.timeout);
        let published = match tokio::time::timeout(wait, self.broker.publish(request)).await {
            Ok(result) => result,
            Err(_) => {
                self.broker.confirm_timed_out();
                Err(PublishError::ConfirmTimeout(wait))
            }
        };
        match published {
            Ok(()) => self.activate(conn, correlation_id, ack, deadline),
            Err(error) => {
                warn!(%correlation_id, %traceparent, request_type = %spec.name, %error, "publish failed");
                let cancel = matches!(
                    error,
                    PublishError::ConfirmTimeout(_) | PublishError::Amqp(_)
                );
                // The broker may have taken the message before the failure (no confirm
                // seen): tell workers not to run it.
                if cancel {
                    self.spawn_cancel(correlation_id);
                }
                let error = RequestError::Unavailable(UnavailableCause::PublishFailed(error));
                self.refuse_admitted(conn, ack, correlation_id, &error);
            }
        }
    }

    /// Refuses a request that was admitted but not published: it leaves the in-flight map
    /// (its outcome counted) and its id is free again.
    fn refuse_admitted(
        &self,
        conn: S::Conn,
        ack: S::Ack,
        correlation_id: Uuid,
        error: &RequestError,
    ) {
        if let Some((_, mut request)) = self.inflight.remove(&correlation_id) {
            request
                .metrics
                .finish(Outcome::Error(error.code().as_str()));
            self.keep_refusal(
                &request.request_type,
                error,
                Some((correlation_id, &request.trace)),
            );
            self.release_id(correlation_id, request);
        }
        self.send_refusal(conn, ack, error);
    }

    /// Writes a refused request to the console's recent failures (when the console is on),
    /// with its correlation id and trace once it had them. Refusals only: a request that is
    /// admitted and published never comes here. Not kept: `RATE_LIMITED` (a client over its
    /// limits sends them by the hundred and would push every other failure out; the metrics
    /// count them) and a host that is shutting down (the operator's own doing).
    /// Refuses a request before it runs, on either path (this one, or a detached task's
    /// through the shared store): counted against its type when the type is known (a
    /// client's unknown name is not a metrics label), kept for the console's recent failures
    /// ([`Gateway::keep_refusal`]), answered.
    pub(super) fn refuse(
        &self,
        conn: S::Conn,
        ack: S::Ack,
        known_type: Option<&str>,
        error: &RequestError,
        admitted: Option<(Uuid, &TraceParent)>,
    ) {
        let type_metrics = known_type.map(|name| self.metrics.for_type(name));
        self.metrics
            .refused(type_metrics.as_ref(), error.code().as_str());
        let request_type = match (known_type, error) {
            (Some(name), _) => name,
            (None, RequestError::UnknownRequestType(name)) => name.as_str(),
            (None, _) => "",
        };
        self.keep_refusal(request_type, error, admitted);
        self.send_refusal(conn, ack, error);
    }

    fn keep_refusal(
        &self,
        request_type: &str,
        error: &RequestError,
        admitted: Option<(Uuid, &TraceParent)>,
    ) {
        let Some(failures) = &self.failures else {
            return;
        };
        if matches!(
            error,
            RequestError::RateLimited(_)
                | RequestError::Unavailable(UnavailableCause::ShuttingDown)
        ) {
            return;
        }
        // A type name from the client (unknown type) is kept as long as an id may be.
        let request_type: String = request_type
            .chars()
            .take(taskgate_protocol::MAX_CLIENT_ID_LEN)
            .collect();
        let (correlation_id, traceparent) = admitted
            .map(|(id, trace)| (id.to_string(), trace.to_string()))
            .unwrap_or_default();
        failures.record(
            &request_type,
            error.code().as_str(),
            &error.to_string(),
            &correlation_id,
            &traceparent,
        );
    }

    /// Admits a request: the request rate and shutdown gates, then the checks that need no
    /// state ([`envelope::check`]), then the reservation of its id and in-flight entry.
    fn admit(
        &self,
        conn: S::Conn,
        envelope: Result<RequestEnvelope, String>,
    ) -> Result<Admitted<S::Conn>, Refusal> {
        let started = Instant::now();
        let session = self.sessions.get(&conn).map(|s| s.value().clone());
        self.gate(session.as_deref())?;
        // Admission runs in event order per connection, so the count cannot grow between
        // this check and the reservation below.
        let in_flight = self.max_in_flight.map(|max| InFlightCount {
            now: self.conns.get(&conn).map_or(0, |requests| requests.len()),
            max,
        });
        let caller = Caller {
            session: session.as_deref(),
            in_flight,
        };
        let request = envelope::check(envelope, &self.routes.load(), &caller)?;
        let spec = request.spec.clone();
        self.reserve(conn, request, session.as_deref(), started)
            .map_err(|error| Refusal {
                error,
                spec: Some(spec),
            })
    }

    /// The gates before any check: the request rate (every event counts, malformed ones
    /// too, and it is the first check: a flooding client costs as little as possible),
    /// then shutdown.
    pub(super) fn gate(&self, session: Option<&Session>) -> Result<(), RequestError> {
        if let Some(session) = session {
            session.check_rate().map_err(|wait| {
                RequestError::RateLimited(RateLimit::Rate {
                    per_second: session.requests_per_second(),
                    retry_after_ms: u64::try_from(wait.as_millis()).unwrap_or(u64::MAX).max(1),
                })
            })?;
        }
        if !self.is_admitting() {
            return Err(RequestError::Unavailable(UnavailableCause::ShuttingDown));
        }
        Ok(())
    }

    /// Reserves the client id of a checked request on its connection (`DUPLICATE_ID` if
    /// taken) and enters it in flight, `Publishing`.
    fn reserve(
        &self,
        conn: S::Conn,
        request: ValidRequest,
        session: Option<&Session>,
        started: Instant,
    ) -> Result<Admitted<S::Conn>, RequestError> {
        let ValidRequest {
            client_id,
            spec,
            body,
            client_trace,
            detach,
            validate_off_thread,
        } = request;
        let correlation_id = Uuid::new_v4();
        let traceparent = trace::for_request(client_trace, correlation_id);
        if client_trace == ClientTrace::Invalid {
            debug!(%correlation_id, %traceparent, "the client's traceparent is not valid; a new trace was started");
        }
        let client_id: Arc<str> = client_id.into();
        let owner = session.and_then(Session::owner);
        let resume = self.resumable(owner, &client_id, correlation_id, detach)?;
        let reserved = match self.conns.get_mut(&conn) {
            None => Err(RequestError::Unavailable(
                UnavailableCause::ConnectionClosing,
            )),
            Some(mut requests) => match requests.entry(client_id.clone()) {
                Entry::Occupied(_) => Err(RequestError::DuplicateId(client_id.to_string())),
                Entry::Vacant(slot) => {
                    slot.insert(correlation_id);
                    Ok(())
                }
            },
        };
        if let Err(error) = reserved {
            if let Some(resume) = resume {
                self.forget_owned(&resume.owner, &client_id, correlation_id, resume.detached);
            }
            return Err(error);
        }
        self.inflight.insert(
            correlation_id,
            InFlight {
                conn,
                correlation_id,
                client_id,
                request_type: spec.name.as_str().into(),
                timeout_ms: u64::try_from(spec.timeout.as_millis()).unwrap_or(u64::MAX),
                stage: Stage::Publishing {
                    buffered: Vec::new(),
                    buffered_bytes: 0,
                    ended: None,
                },
                next_seq: 0,
                deadline: None,
                trace: traceparent,
                metrics: RequestMetrics::start(self.metrics.for_type(&spec.name), started),
                resume,
            },
        );
        debug!(%correlation_id, %traceparent, request_type = %spec.name, "request admitted");
        Ok(Admitted {
            conn,
            correlation_id,
            spec,
            body,
            validate_off_thread,
            identity: session.and_then(|s| s.identity_header().cloned()),
            traceparent,
        })
    }
    /// The broker confirmed the publish: acknowledge, then deliver what arrived meanwhile.
    fn activate(
        self: &Arc<Self>,
        conn: S::Conn,
        correlation_id: Uuid,
        ack: S::Ack,
        deadline: Instant,
    ) {
        let mut ack = Some(ack);
        let mut known = false;
        let mut ended_early = false;
        let mut ack_lost = false;
        let finished = self.inflight.remove_if_mut(&correlation_id, |_, request| {
            known = true;
            if let Some(ack) = ack.take() {
                // A session's request whose connection is gone (or moved) has its client
                // back through `attach`, whose ack stands for this one.
                let elsewhere = request.conn != conn
                    || request
                        .resume
                        .as_deref()
                        .is_some_and(|r| r.parked_until.is_some());
                if self.sink.ack(ack, Ok(())).is_err() && !elsewhere {
                    ack_lost = true;
                    return true;
                }
            }
            let Stage::Publishing {
                buffered, ended, ..
            } = std::mem::replace(&mut request.stage, Stage::Active)
            else {
                return false;
            };
            for outbound in buffered {
                if self.deliver(request, outbound) {
                    return true;
                }
            }
            if let Some(error) = ended {
                ended_early = true;
                self.emit_error(request, &error);
                return true;
            }
            self.watch_deadline(correlation_id, deadline);
            request.deadline = Some(deadline);
            false
        });
        if let Some((_, request)) = finished {
            let trace = request.trace;
            let request_type = request.request_type.clone();
            self.release_id(correlation_id, request);
            if ended_early || ack_lost {
                self.spawn_cancel(correlation_id);
            }
            if ack_lost {
                warn!(%correlation_id, traceparent = %trace, ?conn, "the ack could not be sent (client not reading); request cancelled and client disconnected");
                self.sink.disconnect(conn);
            } else {
                // Its final reply (or its end) came before the confirm.
                debug!(%correlation_id, traceparent = %trace, %request_type, "request finished");
            }
        } else if !known {
            // The client disconnected while we were publishing: nobody waits for this.
            if let Some(ack) = ack.take() {
                let _ = self.sink.ack(ack, Ok(()));
            }
            self.spawn_cancel(correlation_id);
        }
    }

    /// Sends a refusal; a client that cannot even receive that is dropped, so it does not
    /// wait forever for an answer.
    pub(super) fn send_refusal(&self, conn: S::Conn, ack: S::Ack, error: &RequestError) {
        if self.sink.ack(ack, Err(&error.to_body())).is_err() {
            warn!(
                ?conn,
                "a refusal could not be sent (client not reading); disconnecting it"
            );
            self.sink.disconnect(conn);
        }
    }
}

fn unix_ms_after(timeout: Duration) -> u64 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    (now + timeout).as_millis() as u64
}

/// Runs the plugin's validation of `body` on the blocking pool, within the type's budget: a
/// slow `validate` holds one pool thread, never the I/O thread. Past the budget the request
/// is refused `TIMEOUT`; the validation itself cannot be stopped and finishes unseen.
async fn validate_off_the_io_thread(
    spec: &Arc<RequestTypeSpec>,
    body: Box<str>,
) -> Result<Box<str>, RequestError> {
    let payload = RawValue::from_string(body.into())
        .map_err(|e| RequestError::BadRequest(format!("payload is not JSON: {e}")))?;
    let on_pool = spec.clone();
    let validation = tokio::task::spawn_blocking(move || {
        on_pool
            .check(&payload)
            .map(|checked| envelope::checked_body(checked, payload))
    });
    match tokio::time::timeout(spec.validation_budget, validation).await {
        Ok(Ok(outcome)) => outcome,
        Ok(Err(failed)) => Err(RequestError::Internal(format!(
            "the validation of `{}` failed: {failed}",
            spec.name
        ))),
        Err(_) => Err(spec.over_budget()),
    }
}
