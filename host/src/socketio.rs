//! The Socket.IO side (protocol §1) over socketioxide: registers the `request` and
//! `cancel` handlers on the default namespace and implements [`ClientSink`] for them.
//! Everything protocol-specific is decided in the gateway; this module only translates.

use std::sync::Arc;
use std::time::Duration;

use socketioxide::extract::{AckSender, SocketRef, TryData};
use socketioxide::handler::ConnectHandler;
use socketioxide::socket::Sid;
use socketioxide::{SendError, SocketError, SocketIo};
use taskgate_protocol::{events, ErrorBody};
use tracing::debug;

use crate::broker::Broker;
use crate::gateway::{CancelEnvelope, Gateway, RequestEnvelope};
use crate::sink::{AckBody, ClientSink, EmitError, ResponseEvent};

/// Sends acks and responses through socketioxide.
pub struct SocketIoSink {
    io: SocketIo,
}

impl SocketIoSink {
    pub fn new(io: SocketIo) -> Self {
        SocketIoSink { io }
    }
}

impl ClientSink for SocketIoSink {
    type Conn = Sid;
    type Ack = AckSender;

    fn ack(&self, ack: AckSender, outcome: Result<(), &ErrorBody>) {
        let body = AckBody {
            ok: outcome.is_ok(),
            error: outcome.err(),
        };
        if let Err(e) = ack.send(&body) {
            debug!(error = %e, "ack not sent (client gone?)");
        }
    }

    fn emit(&self, conn: Sid, event: &ResponseEvent<'_>) -> Result<(), EmitError> {
        let socket = self.io.get_socket(conn).ok_or(EmitError::Gone)?;
        socket.emit(events::RESPONSE, event).map_err(|e| match e {
            SendError::Socket(SocketError::InternalChannelFull) => EmitError::Full,
            SendError::Socket(SocketError::Closed) => EmitError::Gone,
            SendError::Serialize(_) => EmitError::Encode,
        })
    }

    fn disconnect(&self, conn: Sid) {
        let Some(socket) = self.io.get_socket(conn) else {
            return;
        };
        // The disconnect packet itself needs room in the full buffer: retry for a while;
        // the engine.io heartbeat closes a client that never reads in the end anyway.
        tokio::spawn(async move {
            for _ in 0..50 {
                match socket.clone().disconnect() {
                    Err(SocketError::InternalChannelFull) => {
                        tokio::time::sleep(Duration::from_millis(100)).await
                    }
                    _ => return,
                }
            }
        });
    }
}

/// Serves protocol §1 on the default namespace of `io`.
///
/// Handlers are registered in a connect middleware, which socketioxide awaits before it
/// sends the CONNECT packet: a client that emits right after connecting must find them
/// (the connect handler itself runs only after CONNECT was sent). Each handler does its
/// gateway work synchronously in the closure body, so events of one connection are
/// handled in the order they arrived; only publishing runs in the spawned future.
pub fn attach<B: Broker>(io: &SocketIo, gateway: Arc<Gateway<B, SocketIoSink>>) {
    let register = move |socket: SocketRef| {
        let gateway = gateway.clone();
        async move {
            register_handlers(&socket, gateway);
            Ok::<(), std::convert::Infallible>(())
        }
    };
    io.ns("/", (async || {}).with(register));
}

fn register_handlers<B: Broker>(socket: &SocketRef, gateway: Arc<Gateway<B, SocketIoSink>>) {
    debug!(sid = %socket.id, "client connected");
    gateway.connected(socket.id);
    let on_request = gateway.clone();
    socket.on(
        events::REQUEST,
        move |socket: SocketRef, TryData(envelope): TryData<RequestEnvelope>, ack: AckSender| {
            let envelope = envelope.map_err(|e| e.to_string());
            let publish = on_request.submit(socket.id, envelope, ack);
            async move {
                if let Some(publish) = publish {
                    publish.await;
                }
            }
        },
    );
    let on_cancel = gateway.clone();
    socket.on(
        events::CANCEL,
        move |socket: SocketRef, TryData(envelope): TryData<CancelEnvelope>| {
            on_cancel.cancel(socket.id, envelope.map_err(|e| e.to_string()));
            async {}
        },
    );
    socket.on_disconnect(move |socket: SocketRef| {
        debug!(sid = %socket.id, "client disconnected");
        gateway.disconnected(socket.id);
        async {}
    });
}
