//! Copies an HTTP request's URI and headers out of hyper's read buffer.
//!
//! hyper parses a request head without copying: every header value (and the URI) is a
//! slice of the connection's read buffer (8 KiB or more), and so is the copy of the URI
//! that axum's router keeps in the request's extensions (`OriginalUri`). engineioxide keeps the request
//! head of every Socket.IO connection for its whole life (`Socket::req_parts`, so
//! handlers can read headers), and with it the whole buffer, for as long as the WebSocket
//! stays open. Copying the few hundred bytes of the head before the upgrade lets hyper's
//! buffer be freed (what that saves per idle connection: see docs/performance.md).

use axum::extract::{OriginalUri, Request};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Uri};

/// The request with a URI and headers of its own (same names, values and order).
pub fn detach(mut request: Request) -> Request {
    let headers = std::mem::take(request.headers_mut());
    let mut owned = HeaderMap::with_capacity(headers.len());
    for (name, value) in &headers {
        // Both come from a valid header, so neither conversion can fail; keep the
        // original (shared) one if it somehow did.
        let name =
            HeaderName::from_bytes(name.as_str().as_bytes()).unwrap_or_else(|_| name.clone());
        let mut copy = HeaderValue::from_bytes(value.as_bytes()).unwrap_or_else(|_| value.clone());
        copy.set_sensitive(value.is_sensitive());
        owned.append(name, copy);
    }
    *request.headers_mut() = owned;
    if let Some(uri) = owned_uri(request.uri()) {
        *request.uri_mut() = uri;
    }
    // axum's router keeps a clone of the URI as it arrived, sharing the buffer too.
    if let Some(OriginalUri(original)) = request.extensions_mut().get_mut::<OriginalUri>() {
        if let Some(uri) = owned_uri(original) {
            *original = uri;
        }
    }
    request
}

fn owned_uri(uri: &Uri) -> Option<Uri> {
    Uri::try_from(uri.to_string()).ok()
}

/// axum middleware form of [`detach`].
pub async fn detach_layer(request: Request) -> Request {
    detach(request)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use axum::body::Body;
    use bytes::Bytes;

    /// Whether `inner` lies inside `outer`'s memory.
    fn within(outer: &Bytes, inner: &[u8]) -> bool {
        let range = outer.as_ptr_range();
        range.contains(&inner.as_ptr())
    }

    #[test]
    fn headers_and_uri_no_longer_point_into_the_read_buffer() {
        // What hyper does: values are slices of one shared buffer.
        let buffer = Bytes::from_static(
            b"GET /socket.io/?EIO=4&transport=websocket x-custom: abc origin: http://a",
        );
        let mut request = Request::new(Body::empty());
        *request.uri_mut() = Uri::from_maybe_shared(buffer.slice(4..41)).unwrap();
        request.headers_mut().append(
            HeaderName::from_static("x-custom"),
            HeaderValue::from_maybe_shared(buffer.slice(52..55)).unwrap(),
        );
        let mut secret = HeaderValue::from_maybe_shared(buffer.slice(64..72)).unwrap();
        secret.set_sensitive(true);
        request
            .headers_mut()
            .append(HeaderName::from_static("origin"), secret);
        request.headers_mut().append(
            HeaderName::from_static("origin"),
            HeaderValue::from_static("second"),
        );
        assert!(within(&buffer, request.headers()["x-custom"].as_bytes()));
        assert!(within(&buffer, request.uri().path().as_bytes()));
        let original = OriginalUri(request.uri().clone());
        request.extensions_mut().insert(original);

        let request = detach(request);
        assert_eq!(request.uri().path(), "/socket.io/");
        assert_eq!(request.uri().query(), Some("EIO=4&transport=websocket"));
        assert_eq!(request.headers()["x-custom"], "abc");
        let origins: Vec<_> = request.headers().get_all("origin").iter().collect();
        assert_eq!(origins, vec!["http://a", "second"]);
        assert!(origins[0].is_sensitive());
        for value in request.headers().values() {
            assert!(!within(&buffer, value.as_bytes()));
        }
        assert!(!within(&buffer, request.uri().path().as_bytes()));
        let OriginalUri(original) = request.extensions().get::<OriginalUri>().unwrap();
        assert_eq!(original, request.uri());
        assert!(!within(&buffer, original.path().as_bytes()));
    }
}
