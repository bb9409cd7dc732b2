//! The host's listening socket, with an accept queue long enough for a burst of
//! handshakes.
//!
//! `TcpListener::bind` (std's, mio's, tokio's) asks the kernel for a backlog of 128. When
//! more connections than that complete their TCP handshake before the host accepts them —
//! thousands of clients reconnecting after a restart, or opening at 10,000 a second — the
//! kernel drops the overflow and the clients retry a second later and more (measured by
//! `taskgate-bench idle-100k`: the listen queue overflowed with 2,000 connections opening).
//! The host asks for [`BACKLOG`]; the kernel cuts any request to `net.core.somaxconn`
//! (4,096 by default since Linux 5.4), which is therefore the operator's knob.

use std::io;
use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpSocket};

/// The accept queue asked for; the kernel caps it at `net.core.somaxconn`.
pub const BACKLOG: u32 = 65_535;

/// A listener on `addr` with the accept queue of [`BACKLOG`] (and `SO_REUSEADDR`, as
/// `TcpListener::bind` sets it, so a restarted host can bind while old connections linger).
pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use std::time::Duration;

    use tokio::net::TcpStream;

    use super::*;

    /// More connections than std's backlog of 128 complete while nobody accepts: with that
    /// backlog the kernel would drop the SYNs past it, and their connects would hang.
    #[tokio::test]
    async fn a_burst_larger_than_128_waits_in_the_accept_queue() {
        let somaxconn: u32 = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(4096);
        let burst = 400.min(somaxconn.saturating_sub(1)) as usize;
        if burst <= 129 {
            eprintln!("net.core.somaxconn is {somaxconn}: nothing to test here");
            return;
        }
        let listener = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        let connects: Vec<_> = (0..burst)
            .map(|_| {
                tokio::spawn(tokio::time::timeout(
                    Duration::from_millis(900),
                    TcpStream::connect(addr),
                ))
            })
            .collect();
        let mut open = Vec::new();
        for connect in connects {
            let stream = connect
                .await
                .unwrap()
                .expect("a connect waited for the accept queue")
                .unwrap();
            open.push(stream);
        }
        assert_eq!(open.len(), burst);
        // They are all there to accept.
        let (_first, _) = listener.accept().await.unwrap();
    }

    #[tokio::test]
    async fn binds_ipv4_and_reports_the_port() {
        let listener = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        assert_ne!(listener.local_addr().unwrap().port(), 0);
    }
}
