//! Worker replies on their way to the client: a reply is read ([`Gateway::on_reply`]),
//! held back while its request is still being published, and delivered in order — chunks
//! numbered by the host, a result or error ending the request.
//!
//! Replies are bounded: a body over `[limits] max_reply_bytes` ends its request
//! `WORKER_ERROR` (a dropped chunk would be a silent gap), and so do replies held back
//! past [`MAX_EARLY_REPLIES`] or `max_reply_bytes` in all.

use std::sync::Arc;

use taskgate_protocol::{ErrorBody, ErrorCode, ReplyKind, WorkerErrorBody};
use tracing::{debug, warn};
use uuid::Uuid;

use super::{Gateway, InFlight, Outbound, Stage, MAX_EARLY_REPLIES};
use crate::broker::{reply_json, Broker, IncomingReply};
use crate::error::RequestError;
use crate::metrics::Outcome;
use crate::sink::{ClientSink, EmitError, ResponseEvent};

impl<B: Broker, S: ClientSink> Gateway<B, S> {
    /// Sends one reply to the client. Returns true when it was the final one.
    pub(super) fn deliver(&self, request: &mut InFlight<S::Conn>, outbound: Outbound) -> bool {
        match outbound {
            Outbound::Chunk { seq, data } => {
                if let Some(worker_seq) = seq {
                    // A redelivered request starts its chunks over: skip the ones sent.
                    if worker_seq >= 0 && (worker_seq as u64) < request.next_seq {
                        debug!(traceparent = %request.trace, client_id = %request.client_id, worker_seq, "duplicate chunk dropped");
                        return false;
                    }
                }
                let seq = request.next_seq;
                request.next_seq += 1;
                request.metrics.chunk();
                let (conn, client_id, resume) = request.parts();
                self.send_chunk(conn, resume, client_id, seq, data);
                false
            }
            Outbound::Result(data) => {
                request.metrics.finish(Outcome::Ok);
                let (conn, client_id, resume) = request.parts();
                self.send(conn, resume, &ResponseEvent::result(client_id, &data));
                true
            }
            Outbound::Error(error) => {
                self.emit_error(request, &error);
                true
            }
        }
    }

    /// Sends a final error (the request's outcome, for metrics).
    pub(super) fn emit_error(&self, request: &mut InFlight<S::Conn>, error: &ErrorBody) {
        request.metrics.finish(Outcome::Error(&error.code));
        if let Some(failures) = &self.failures {
            failures.record(
                &request.request_type,
                &error.code,
                &error.message,
                &request.correlation_id.to_string(),
                &request.trace.to_string(),
            );
        }
        let (conn, client_id, resume) = request.parts();
        self.send(conn, resume, &ResponseEvent::error(client_id, error));
    }

    /// Emits to a connection as it is (`send` is the way for a request's responses).
    pub(super) fn emit(&self, conn: S::Conn, event: &ResponseEvent<'_>) {
        match self.sink.emit(conn, event) {
            Ok(()) => {}
            Err(EmitError::Gone) => debug!(?conn, "response for a closed connection dropped"),
            Err(EmitError::Full) => {
                warn!(
                    ?conn,
                    "client is not reading its responses (send buffer full); disconnecting it"
                );
                self.sink.disconnect(conn);
            }
            Err(EmitError::Encode) => warn!(?conn, "response could not be encoded"),
        }
    }

    /// Handles one reply message from a worker.
    pub fn on_reply(self: &Arc<Self>, reply: IncomingReply) {
        let Some(correlation_id) = reply
            .correlation_id
            .as_deref()
            .and_then(|c| Uuid::parse_str(c).ok())
        else {
            debug!(correlation_id = ?reply.correlation_id, "reply without a valid correlation id dropped");
            return;
        };
        if !self.inflight.contains_key(&correlation_id) {
            // A message between hosts, or a reply of a request handed to another (§4.4).
            self.not_in_flight(correlation_id, reply);
            return;
        }
        if reply.kind.as_deref() == Some(taskgate_protocol::amqp::REPLY_TYPE_RETRY) {
            // A retry notice (§3.12): counted, never relayed; the client waits on.
            if let Some(request) = self.inflight.get(&correlation_id) {
                request.metrics.retry();
                debug!(%correlation_id, traceparent = %request.trace, "the worker scheduled another attempt");
            }
            return;
        }
        let Some(kind) = reply.kind.as_deref().and_then(ReplyKind::parse) else {
            warn!(%correlation_id, kind = ?reply.kind, "reply with an unknown `type` dropped");
            return;
        };
        let size = reply.body.len();
        if size > self.max_reply_bytes {
            let limit = self.max_reply_bytes;
            warn!(%correlation_id, size, limit, "reply larger than [limits] max_reply_bytes; ending its request");
            let error = RequestError::ReplyTooLarge { size, limit }.to_body();
            self.end_early(correlation_id, &error, |request| {
                debug!(%correlation_id, traceparent = %request.trace, client_id = %request.client_id, "request ended: its reply was too large");
            });
            return;
        }
        let outbound = match kind {
            ReplyKind::Chunk => match reply_json(reply.body) {
                Some(data) => Outbound::Chunk {
                    seq: reply.seq,
                    data,
                },
                None => {
                    warn!(%correlation_id, "chunk whose body is not JSON dropped");
                    return;
                }
            },
            ReplyKind::Result => match reply_json(reply.body) {
                Some(data) => Outbound::Result(data),
                None => {
                    warn!(%correlation_id, "result whose body is not JSON");
                    Outbound::Error(ErrorBody::new(
                        ErrorCode::WorkerError,
                        "the worker's result was not valid JSON",
                    ))
                }
            },
            ReplyKind::Error => match serde_json::from_slice::<WorkerErrorBody>(&reply.body) {
                Ok(body) => Outbound::Error(body.into_error_body()),
                Err(error) => {
                    warn!(%correlation_id, %error, "malformed error reply");
                    Outbound::Error(ErrorBody::new(
                        ErrorCode::WorkerError,
                        "the worker reported an error in a malformed reply",
                    ))
                }
            },
        };
        self.route_reply(correlation_id, outbound, size);
    }

    /// `size`: the reply's body bytes, as the worker sent them.
    fn route_reply(&self, correlation_id: Uuid, outbound: Outbound, size: usize) {
        if let Outbound::Chunk { .. } = outbound {
            if let Some(mut request) = self.inflight.get_mut(&correlation_id) {
                match &mut request.stage {
                    stage @ Stage::Publishing { .. } => {
                        self.hold_back(correlation_id, stage, outbound, size)
                    }
                    Stage::Active => {
                        self.deliver(&mut request, outbound);
                    }
                }
            }
            return;
        }
        let mut outbound = Some(outbound);
        let finished = self.inflight.remove_if_mut(&correlation_id, |_, request| {
            let Some(outbound) = outbound.take() else {
                return false;
            };
            match &mut request.stage {
                stage @ Stage::Publishing { .. } => {
                    self.hold_back(correlation_id, stage, outbound, size);
                    false
                }
                Stage::Active => self.deliver(request, outbound),
            }
        });
        if let Some((_, request)) = finished {
            debug!(%correlation_id, traceparent = %request.trace, request_type = %request.request_type, "request finished");
            self.release_id(correlation_id, request);
        }
    }

    /// Holds a reply back until its request's publish is confirmed (the ack goes first).
    /// Past [`MAX_EARLY_REPLIES`] or `max_reply_bytes` held back, the request is ended
    /// instead: the error follows the ack and workers are told to stop (`activate`), and
    /// what arrives after that is dropped.
    fn hold_back(&self, correlation_id: Uuid, stage: &mut Stage, outbound: Outbound, size: usize) {
        let Stage::Publishing {
            buffered,
            buffered_bytes,
            ended,
        } = stage
        else {
            return;
        };
        if ended.is_some() {
            return;
        }
        let bytes = buffered_bytes.saturating_add(size);
        if buffered.len() >= MAX_EARLY_REPLIES || bytes > self.max_reply_bytes {
            warn!(%correlation_id, replies = buffered.len(), bytes, "too many replies before the publish confirm; ending the request");
            *ended = Some(
                RequestError::TooManyEarlyReplies {
                    replies: MAX_EARLY_REPLIES,
                    bytes: self.max_reply_bytes,
                }
                .to_body(),
            );
            return;
        }
        *buffered_bytes = bytes;
        buffered.push(outbound);
    }
}
