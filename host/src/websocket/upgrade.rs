//! Takes over the HTTP requests that open a WebSocket-only Socket.IO connection
//! (`GET /socket.io/?EIO=4&transport=websocket` without a session id) and answers the
//! WebSocket handshake itself; every other request — long-polling, a polling session
//! upgrading to WebSocket, anything malformed — goes on to socketioxide unchanged.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use hyper_util::rt::TokioIo;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::WebSocketStream;
use tracing::debug;

use super::connection::Endpoint;
use super::hub::{WsAck, WsConnId};
use super::reads::GrowingReads;
use crate::broker::Broker;
use crate::sink::ClientSink;
use crate::transport::{SOCKET_IO_PATH, WEBSOCKET_READ_BUFFER_BYTES};

/// Whether the request opens a WebSocket-only connection (engine.io v4, no session).
pub fn is_direct_websocket(method: &Method, path: &str, query: Option<&str>) -> bool {
    let on_path = path
        .strip_prefix(SOCKET_IO_PATH)
        .is_some_and(|rest| rest.is_empty() || rest == "/");
    if method != Method::GET || !on_path {
        return false;
    }
    let Some(query) = query else {
        return false;
    };
    let mut eio4 = false;
    let mut websocket = false;
    for pair in query.split('&') {
        match pair.split_once('=') {
            Some(("EIO", v)) => eio4 = v == "4",
            Some(("transport", v)) => websocket = v == "websocket",
            Some(("sid", _)) => return false,
            _ => {}
        }
    }
    eio4 && websocket
}

/// The `Sec-WebSocket-Key` of a valid WebSocket upgrade request (RFC 6455 §4.2.1).
fn upgrade_key(headers: &HeaderMap) -> Option<&HeaderValue> {
    let has_token = |name: header::HeaderName, token: &str| {
        headers.get_all(name).iter().any(|v| {
            v.to_str().is_ok_and(|v| {
                v.split(',')
                    .any(|part| part.trim().eq_ignore_ascii_case(token))
            })
        })
    };
    let version_13 = headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .is_some_and(|v| v == "13");
    if has_token(header::UPGRADE, "websocket")
        && has_token(header::CONNECTION, "upgrade")
        && version_13
    {
        headers.get(header::SEC_WEBSOCKET_KEY)
    } else {
        None
    }
}

/// axum middleware: serves direct WebSocket connections, passes everything else on.
pub async fn divert<B, S>(
    State(endpoint): State<Arc<Endpoint<B, S>>>,
    mut request: Request,
    next: Next,
) -> Response
where
    B: Broker,
    S: ClientSink,
    S::Conn: From<WsConnId>,
    S::Ack: From<WsAck>,
{
    let uri = request.uri();
    if !is_direct_websocket(request.method(), uri.path(), uri.query()) {
        return next.run(request).await;
    }
    let Some(key) = upgrade_key(request.headers()) else {
        return (StatusCode::BAD_REQUEST, "not a valid WebSocket upgrade").into_response();
    };
    let accept = derive_accept_key(key.as_bytes());
    let Ok(accept) = HeaderValue::from_str(&accept) else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    let on_upgrade = hyper::upgrade::on(&mut request);
    // Nothing of the request is kept: an idle connection holds no HTTP buffers.
    drop(request);
    let limit = usize::try_from(endpoint.settings.max_message_bytes).unwrap_or(usize::MAX);
    let config = WebSocketConfig::default()
        .read_buffer_size(WEBSOCKET_READ_BUFFER_BYTES)
        .max_message_size(Some(limit))
        .max_frame_size(Some(limit));
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => {
                let ws = WebSocketStream::from_raw_socket(
                    GrowingReads::new(TokioIo::new(upgraded)),
                    Role::Server,
                    Some(config),
                )
                .await;
                endpoint.serve(ws).await;
            }
            Err(e) => debug!(error = %e, "WebSocket upgrade failed"),
        }
    });
    (
        StatusCode::SWITCHING_PROTOCOLS,
        [
            (header::UPGRADE, HeaderValue::from_static("websocket")),
            (header::CONNECTION, HeaderValue::from_static("Upgrade")),
            (header::SEC_WEBSOCKET_ACCEPT, accept),
        ],
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_websocket_only_handshakes_are_taken_over() {
        let get = Method::GET;
        let ws = Some("EIO=4&transport=websocket");
        assert!(is_direct_websocket(&get, "/socket.io/", ws));
        assert!(is_direct_websocket(&get, "/socket.io", ws));
        assert!(is_direct_websocket(
            &get,
            "/socket.io/",
            Some("transport=websocket&t=x&EIO=4")
        ));
        // Upgrades of polling sessions, polling, other versions, other paths: socketioxide.
        assert!(!is_direct_websocket(
            &get,
            "/socket.io/",
            Some("EIO=4&transport=websocket&sid=abc")
        ));
        assert!(!is_direct_websocket(
            &get,
            "/socket.io/",
            Some("EIO=4&transport=polling")
        ));
        assert!(!is_direct_websocket(
            &get,
            "/socket.io/",
            Some("EIO=3&transport=websocket")
        ));
        assert!(!is_direct_websocket(&get, "/socket.io/", None));
        assert!(!is_direct_websocket(&get, "/socket.iox/", ws));
        assert!(!is_direct_websocket(&get, "/other/", ws));
        assert!(!is_direct_websocket(&Method::POST, "/socket.io/", ws));
    }

    #[test]
    fn an_upgrade_needs_the_headers_of_rfc_6455() {
        let mut headers = HeaderMap::new();
        headers.insert(header::UPGRADE, HeaderValue::from_static("WebSocket"));
        headers.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, Upgrade"),
        );
        headers.insert(
            header::SEC_WEBSOCKET_VERSION,
            HeaderValue::from_static("13"),
        );
        assert!(upgrade_key(&headers).is_none(), "no key");
        headers.insert(
            header::SEC_WEBSOCKET_KEY,
            HeaderValue::from_static("dGhlIHNhbXBsZSBub25jZQ=="),
        );
        assert!(upgrade_key(&headers).is_some());
        headers.insert(header::SEC_WEBSOCKET_VERSION, HeaderValue::from_static("8"));
        assert!(upgrade_key(&headers).is_none(), "old version");
    }
}
