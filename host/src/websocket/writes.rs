//! Large text frames written past tungstenite's write buffer.
//!
//! tungstenite copies every frame it sends into its own write buffer before the socket gets
//! it: for a 1 MB result that is a second copy of the megabyte the host already copied into
//! the frame (docs/performance.md, "Large payloads II"). A frame of at least
//! [`DIRECT_WRITE_BYTES`] is instead written by the connection's task itself, once
//! tungstenite's buffer is flushed: the frame header and the frame's own bytes in one
//! vectored write, nothing copied. A server's frames are not masked (RFC 6455 §5.1), so the
//! header is all there is to add. Only the connection's task writes to its socket, and it
//! does so between tungstenite's frames, never inside one.

use std::io::{self, IoSlice};

use tokio::io::{AsyncWrite, AsyncWriteExt};

/// Frames from this size on skip tungstenite's write buffer; smaller ones are cheaper to
/// copy than to write apart from the frames around them.
pub const DIRECT_WRITE_BYTES: usize = 32 * 1024;

/// The header of an unmasked, final text frame of `len` bytes (RFC 6455 §5.2).
fn text_frame_header(len: usize) -> ([u8; 10], usize) {
    const FIN_TEXT: u8 = 0x81;
    let mut header = [0u8; 10];
    header[0] = FIN_TEXT;
    match u16::try_from(len) {
        Ok(short) if short < 126 => {
            header[1] = short as u8;
            (header, 2)
        }
        Ok(medium) => {
            header[1] = 126;
            header[2..4].copy_from_slice(&medium.to_be_bytes());
            (header, 4)
        }
        Err(_) => {
            header[1] = 127;
            header[2..10].copy_from_slice(&(len as u64).to_be_bytes());
            (header, 10)
        }
    }
}

/// Writes `text` as one text frame straight to `io` and flushes it.
pub async fn write_text_frame<IO: AsyncWrite + Unpin>(io: &mut IO, text: &str) -> io::Result<()> {
    let (header, header_len) = text_frame_header(text.len());
    let mut header = &header[..header_len];
    let mut payload = text.as_bytes();
    while !header.is_empty() {
        let written = io
            .write_vectored(&[IoSlice::new(header), IoSlice::new(payload)])
            .await?;
        if written == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        let from_header = written.min(header.len());
        header = &header[from_header..];
        payload = &payload[written - from_header..];
    }
    io.write_all(payload).await?;
    io.flush().await
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
    use tokio_tungstenite::tungstenite::protocol::frame::FrameHeader;
    use tokio_tungstenite::tungstenite::protocol::Role;
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::WebSocketStream;

    #[test]
    fn headers_are_tungstenites_for_every_length_encoding() {
        for len in [0, 1, 125, 126, 127, 65_535, 65_536, 1_000_000] {
            let (header, n) = text_frame_header(len);
            let expected = FrameHeader {
                opcode: OpCode::Data(Data::Text),
                ..FrameHeader::default()
            };
            let mut bytes = Vec::new();
            expected.format(len as u64, &mut bytes).unwrap();
            assert_eq!(&header[..n], &bytes[..], "length {len}");
        }
    }

    /// Writes one byte at a time: every partial write of header and payload is exercised.
    struct Trickle<IO>(IO);

    impl<IO: AsyncWrite + Unpin> AsyncWrite for Trickle<IO> {
        fn poll_write(
            self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
            buf: &[u8],
        ) -> std::task::Poll<io::Result<usize>> {
            let n = buf.len().min(1);
            std::pin::Pin::new(&mut self.get_mut().0).poll_write(cx, &buf[..n])
        }
        fn poll_flush(
            self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<io::Result<()>> {
            std::pin::Pin::new(&mut self.get_mut().0).poll_flush(cx)
        }
        fn poll_shutdown(
            self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<io::Result<()>> {
            std::pin::Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
        }
    }

    #[tokio::test]
    async fn a_websocket_client_reads_the_frames_intact_even_written_piecemeal() {
        let (server, client) = tokio::io::duplex(1 << 16);
        let texts: Vec<String> = [0usize, 125, 126, 65_535, 65_536, 300_000]
            .iter()
            .map(|&n| "é".repeat(n / 2) + &"x".repeat(n % 2))
            .collect();
        let sent = texts.clone();
        let writer = tokio::spawn(async move {
            let mut server = server;
            for (i, text) in sent.iter().enumerate() {
                if i % 2 == 0 {
                    write_text_frame(&mut server, text).await.unwrap();
                } else {
                    write_text_frame(&mut Trickle(&mut server), text)
                        .await
                        .unwrap();
                }
            }
            server
        });
        let mut client = WebSocketStream::from_raw_socket(client, Role::Client, None).await;
        for text in &texts {
            match client.next().await.unwrap().unwrap() {
                Message::Text(got) => assert_eq!(got.as_str(), text.as_str()),
                other => panic!("{other:?}"),
            }
        }
        writer.await.unwrap();
    }
}
