//! The host's clients come over two transports: WebSocket-only connections served by the
//! host's own [`websocket`](crate::websocket) transport, and everything else (HTTP
//! long-polling, polling upgraded to WebSocket) by socketioxide. The gateway sees one
//! [`ClientSink`]; this module routes each ack and event to the transport of its
//! connection.

use std::fmt;
use std::sync::Arc;

use taskgate_protocol::ErrorBody;

use crate::sink::{ClientSink, EmitError, ResponseEvent};
use crate::socketio::{SocketIoAck, SocketIoId, SocketIoSink};
use crate::websocket::{Hub, WsAck, WsConnId};

/// One client connection of either transport.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub enum ClientId {
    SocketIo(SocketIoId),
    WebSocket(WsConnId),
}

impl fmt::Debug for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientId::SocketIo(sid) => write!(f, "{sid}"),
            ClientId::WebSocket(id) => write!(f, "{id}"),
        }
    }
}

impl From<SocketIoId> for ClientId {
    fn from(sid: SocketIoId) -> Self {
        ClientId::SocketIo(sid)
    }
}

impl From<WsConnId> for ClientId {
    fn from(id: WsConnId) -> Self {
        ClientId::WebSocket(id)
    }
}

/// The ack callback of one `request`, of either transport.
pub enum ClientAck {
    SocketIo(SocketIoAck),
    WebSocket(WsAck),
}

impl From<SocketIoAck> for ClientAck {
    fn from(ack: SocketIoAck) -> Self {
        ClientAck::SocketIo(ack)
    }
}

impl From<WsAck> for ClientAck {
    fn from(ack: WsAck) -> Self {
        ClientAck::WebSocket(ack)
    }
}

/// Both transports behind one [`ClientSink`].
pub struct HostSink {
    pub socketio: SocketIoSink,
    pub websocket: Arc<Hub>,
}

impl ClientSink for HostSink {
    type Conn = ClientId;
    type Ack = ClientAck;

    fn ack(&self, ack: ClientAck, outcome: Result<(), &ErrorBody>) -> Result<(), EmitError> {
        match ack {
            ClientAck::SocketIo(ack) => self.socketio.ack(ack, outcome),
            ClientAck::WebSocket(ack) => self.websocket.ack(ack, outcome),
        }
    }

    fn ack_json(&self, ack: ClientAck, body: &serde_json::Value) -> Result<(), EmitError> {
        match ack {
            ClientAck::SocketIo(ack) => self.socketio.ack_json(ack, body),
            ClientAck::WebSocket(ack) => self.websocket.ack_json(ack, body),
        }
    }

    fn emit(&self, conn: ClientId, event: &ResponseEvent<'_>) -> Result<(), EmitError> {
        match conn {
            ClientId::SocketIo(sid) => self.socketio.emit(sid, event),
            ClientId::WebSocket(id) => self.websocket.emit(id, event),
        }
    }

    fn disconnect(&self, conn: ClientId) {
        match conn {
            ClientId::SocketIo(sid) => self.socketio.disconnect(sid),
            ClientId::WebSocket(id) => ClientSink::disconnect(&*self.websocket, id),
        }
    }
}
