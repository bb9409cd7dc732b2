//! Reads that grow for a large message and shrink after it.
//!
//! tungstenite reads at most its `read_buffer_size` per `read` call, and that size is also the
//! buffer every connection keeps for its whole life (1 KiB on this transport: idle connections
//! are most of a host's connections, see `transport::WEBSOCKET_READ_BUFFER_BYTES`). A 1 MB request therefore cost
//! about 500 `read` system calls. [`GrowingReads`] sits between tungstenite and the socket:
//! small reads go straight to the socket as before; once a read fills tungstenite's whole
//! buffer — a message larger than it is arriving — the next one takes up to [`LARGE_READ`]
//! from the socket at once into a buffer of its own and hands it out from memory. That
//! buffer is freed as soon as it is drained, so an idle connection keeps nothing more. It is
//! read into uninitialised: zero-filling 64 KiB before each read cost a megabyte of `memset`
//! per 1 MB message (docs/performance.md, "Large payloads II").

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// How much one read takes from the socket while a large message arrives.
pub const LARGE_READ: usize = 64 * 1024;

/// An I/O stream whose reads grow while large messages arrive (see the module's text).
#[derive(Debug)]
pub struct GrowingReads<IO> {
    io: IO,
    /// Read from the socket, not handed out yet (empty and unallocated between messages).
    pending: BytesMut,
    /// The last read from the socket filled the buffer it was given: more is probably waiting.
    streak: bool,
}

impl<IO> GrowingReads<IO> {
    pub fn new(io: IO) -> Self {
        GrowingReads {
            io,
            pending: BytesMut::new(),
            streak: false,
        }
    }

    /// Bytes held between reads (0 when idle): for tests and the idle-memory budget.
    pub fn held_capacity(&self) -> usize {
        self.pending.capacity()
    }

    /// Copies what `pending` still holds into `buf`; frees `pending` once drained.
    fn hand_out(&mut self, buf: &mut ReadBuf<'_>) {
        let n = self.pending.len().min(buf.remaining());
        buf.put_slice(&self.pending[..n]);
        self.pending.advance(n);
        if self.pending.is_empty() {
            self.pending = BytesMut::new();
        }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for GrowingReads<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.pending.is_empty() {
            this.hand_out(buf);
            return Poll::Ready(Ok(()));
        }
        let wanted = buf.remaining();
        if !this.streak || wanted >= LARGE_READ {
            // Straight into the caller's buffer, as without this layer.
            let before = buf.filled().len();
            let read = Pin::new(&mut this.io).poll_read(cx, buf);
            if let Poll::Ready(Ok(())) = read {
                let n = buf.filled().len() - before;
                this.streak = n > 0 && n == wanted;
            }
            return read;
        }
        // A large message is arriving: take as much of it as the socket has, up to LARGE_READ.
        let mut large = BytesMut::with_capacity(LARGE_READ);
        match tokio_util::io::poll_read_buf(Pin::new(&mut this.io), cx, &mut large) {
            Poll::Ready(Ok(n)) => {
                this.streak = n >= LARGE_READ;
                if n > 0 {
                    this.pending = large;
                    this.hand_out(buf);
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for GrowingReads<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Counts the reads that reach the wrapped stream.
    struct Counting<IO> {
        io: IO,
        reads: usize,
        /// The most bytes a read was handed already initialised beyond what it had to
        /// fill (64 KiB when the buffer was zero-filled first).
        max_initialised: usize,
    }

    fn counting<IO>(io: IO) -> Counting<IO> {
        Counting {
            io,
            reads: 0,
            max_initialised: 0,
        }
    }

    impl<IO: AsyncRead + Unpin> AsyncRead for Counting<IO> {
        fn poll_read(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            let this = self.get_mut();
            let initialised = buf.initialized().len() - buf.filled().len();
            if buf.remaining() >= LARGE_READ {
                this.max_initialised = this.max_initialised.max(initialised);
            }
            let read = Pin::new(&mut this.io).poll_read(cx, buf);
            if read.is_ready() {
                this.reads += 1;
            }
            read
        }
    }

    /// Reads `total` bytes in calls of at most 2 KiB, as tungstenite does.
    async fn read_as_tungstenite<R: AsyncRead + Unpin>(reader: &mut R, total: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(total);
        let mut chunk = [0u8; 2048];
        while out.len() < total {
            let n = reader.read(&mut chunk).await.unwrap();
            assert!(n > 0, "early end of stream");
            out.extend_from_slice(&chunk[..n]);
        }
        out
    }

    #[tokio::test]
    async fn a_large_message_takes_few_reads_and_arrives_intact() {
        let (mut client, server) = tokio::io::duplex(2 * 1024 * 1024);
        let message: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
        client.write_all(&message).await.unwrap();
        let mut reads = GrowingReads::new(counting(server));
        let got = read_as_tungstenite(&mut reads, message.len()).await;
        assert_eq!(got, message);
        // 2 KiB at a time would be 489 reads.
        assert!(
            reads.io.reads <= 20,
            "{} reads reached the socket",
            reads.io.reads
        );
        assert_eq!(reads.held_capacity(), 0, "nothing kept once drained");
    }

    #[tokio::test]
    async fn large_reads_are_not_zero_filled_first() {
        let (mut client, server) = tokio::io::duplex(2 * 1024 * 1024);
        let message: Vec<u8> = (0..300_000u32).map(|i| (i % 241) as u8).collect();
        client.write_all(&message).await.unwrap();
        let mut reads = GrowingReads::new(counting(server));
        let got = read_as_tungstenite(&mut reads, message.len()).await;
        assert_eq!(got, message);
        assert!(reads.io.reads < 20, "{} reads", reads.io.reads);
        assert_eq!(
            reads.io.max_initialised, 0,
            "a large read's buffer was initialised before the socket filled it"
        );
    }

    #[tokio::test]
    async fn small_messages_go_straight_through_and_nothing_is_kept() {
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let mut reads = GrowingReads::new(counting(server));
        for i in 0..100u8 {
            let message = vec![i; 100];
            client.write_all(&message).await.unwrap();
            let got = read_as_tungstenite(&mut reads, message.len()).await;
            assert_eq!(got, message);
            assert_eq!(reads.held_capacity(), 0);
        }
        assert_eq!(reads.io.reads, 100, "one read per small message");
    }

    #[tokio::test]
    async fn the_end_of_the_stream_is_seen_during_a_streak() {
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        client.write_all(&[7u8; 4096]).await.unwrap();
        drop(client);
        let mut reads = GrowingReads::new(server);
        let got = read_as_tungstenite(&mut reads, 4096).await;
        assert_eq!(got, vec![7u8; 4096]);
        let mut chunk = [0u8; 2048];
        assert_eq!(reads.read(&mut chunk).await.unwrap(), 0);
        assert_eq!(reads.held_capacity(), 0);
    }

    /// The host's own transport gives tungstenite a 1 KiB buffer
    /// (`transport::WEBSOCKET_READ_BUFFER_BYTES`): a 10 KB request still takes two reads
    /// from the socket, as with 2 KiB, and a 100 B one still one.
    #[tokio::test]
    async fn a_small_tungstenite_buffer_costs_no_more_socket_reads() {
        let buffer = crate::transport::WEBSOCKET_READ_BUFFER_BYTES;
        for (size, most) in [(10_000usize, 2usize), (100, 1)] {
            let (mut client, server) = tokio::io::duplex(64 * 1024);
            let message = vec![5u8; size];
            client.write_all(&message).await.unwrap();
            let mut reads = GrowingReads::new(counting(server));
            let mut got = Vec::new();
            let mut chunk = vec![0u8; buffer];
            while got.len() < size {
                let n = reads.read(&mut chunk).await.unwrap();
                assert!(n > 0, "early end of stream");
                got.extend_from_slice(&chunk[..n]);
            }
            assert_eq!(got, message);
            assert!(reads.io.reads <= most, "{size} B: {} reads", reads.io.reads);
            assert_eq!(reads.held_capacity(), 0);
        }
    }

    #[tokio::test]
    async fn writes_pass_through() {
        let (mut client, server) = tokio::io::duplex(1024);
        let mut reads = GrowingReads::new(server);
        reads.write_all(b"hello").await.unwrap();
        reads.flush().await.unwrap();
        let mut got = [0u8; 5];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"hello");
    }
}
