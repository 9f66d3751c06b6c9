//! What a connection must do before hyper sees it: finish TLS (when on) and send the HTTP/2
//! connection preface (the 24-byte magic and its SETTINGS frame), within the handshake timeout.
//!
//! The preface is read here rather than by hyper because hyper waits for it without a timer: a
//! client that connects and stays silent would otherwise hold a connection, and hyper's state for
//! it, until it left. Reading it first also keeps such a connection cheap (a socket and a few
//! bytes) while it waits, and lets shutdown close it at once.

use std::{
    io,
    pin::Pin,
    task::{Context, Poll},
};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio_rustls::TlsAcceptor;

use super::listen::BoxedConnection;

/// The first bytes of every HTTP/2 connection (RFC 9113, section 3.4).
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// The length of an HTTP/2 frame header.
const FRAME_HEADER_LEN: usize = 9;
/// The type of a SETTINGS frame.
const SETTINGS: u8 = 0x4;
/// The largest frame a client may send before it has seen the server's settings
/// (SETTINGS_MAX_FRAME_SIZE's initial value).
const MAX_INITIAL_FRAME: usize = 16_384;

/// Which protocols a listener speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Protocols {
    /// HTTP/2 only: the gRPC API.
    Http2,
    /// HTTP/1.1 and HTTP/2: the admin listener, for probes that do not speak gRPC.
    Http1AndHttp2,
}

/// Why a connection was closed before it was served.
#[derive(Debug, thiserror::Error)]
pub(crate) enum HandshakeError {
    /// The TLS handshake failed.
    #[error("TLS handshake failed")]
    Tls(#[source] io::Error),
    /// The connection failed or closed while the preface was read.
    #[error("connection closed before the HTTP/2 preface")]
    Io(#[from] io::Error),
    /// The first bytes were not an HTTP/2 preface on a listener that speaks only HTTP/2.
    #[error("not an HTTP/2 connection preface")]
    NotHttp2,
}

/// Completes TLS when `tls` is set, then reads the client's HTTP/2 preface (on a listener that
/// also speaks HTTP/1.1, only as far as it takes to tell the two apart). Returns the connection
/// with the bytes read put back in front, for hyper to read again.
pub(crate) async fn complete(
    connection: BoxedConnection,
    tls: Option<TlsAcceptor>,
    protocols: Protocols,
) -> Result<BoxedConnection, HandshakeError> {
    let mut connection: BoxedConnection = match tls {
        None => connection,
        Some(tls) => Box::pin(tls.accept(connection).await.map_err(HandshakeError::Tls)?),
    };
    let read = read_preface(&mut connection, protocols).await?;
    Ok(Box::pin(Prefixed {
        prefix: read,
        position: 0,
        inner: connection,
    }))
}

/// Reads the HTTP/2 preface and its SETTINGS frame, returning every byte read. On a listener
/// that also speaks HTTP/1.1, stops as soon as the bytes cannot be a preface.
async fn read_preface(
    connection: &mut BoxedConnection,
    protocols: Protocols,
) -> Result<Vec<u8>, HandshakeError> {
    let mut read = Vec::with_capacity(PREFACE.len() + FRAME_HEADER_LEN);
    let mut chunk = [0u8; PREFACE.len()];
    while read.len() < PREFACE.len() {
        let wanted = PREFACE.len() - read.len();
        let n = connection.read(&mut chunk[..wanted]).await?;
        if n == 0 {
            return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into());
        }
        read.extend_from_slice(&chunk[..n]);
        if !PREFACE.starts_with(&read) {
            return match protocols {
                // HTTP/1.1: hyper's header read timeout bounds the rest of the request head.
                Protocols::Http1AndHttp2 => Ok(read),
                Protocols::Http2 => Err(HandshakeError::NotHttp2),
            };
        }
    }
    let mut header = [0u8; FRAME_HEADER_LEN];
    connection.read_exact(&mut header).await?;
    let length =
        usize::from(header[0]) << 16 | usize::from(header[1]) << 8 | usize::from(header[2]);
    if header[3] != SETTINGS || length > MAX_INITIAL_FRAME {
        return Err(HandshakeError::NotHttp2);
    }
    read.extend_from_slice(&header);
    let start = read.len();
    read.resize(start + length, 0);
    connection.read_exact(&mut read[start..]).await?;
    Ok(read)
}

/// A connection whose first bytes were already read: they are read again first.
struct Prefixed {
    prefix: Vec<u8>,
    position: usize,
    inner: BoxedConnection,
}

impl AsyncRead for Prefixed {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.position < this.prefix.len() {
            let rest = &this.prefix[this.position..];
            let n = rest.len().min(buf.remaining());
            buf.put_slice(&rest[..n]);
            this.position += n;
            if this.position == this.prefix.len() {
                // Nothing will read it again: give the memory back.
                this.prefix = Vec::new();
                this.position = 0;
            }
            return Poll::Ready(Ok(()));
        }
        this.inner.as_mut().poll_read(cx, buf)
    }
}

impl AsyncWrite for Prefixed {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.inner.as_mut().poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.inner.as_mut().poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.inner.as_mut().poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.inner.as_mut().poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncWriteExt, duplex};

    use super::*;

    /// The client's first bytes: the magic and an empty SETTINGS frame.
    const HTTP2_START: &[u8] =
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";

    /// What `complete` makes of a client that sends `bytes` (and then closes).
    async fn handshake(bytes: &[u8], protocols: Protocols) -> Result<Vec<u8>, HandshakeError> {
        let (mut client, server) = duplex(64 * 1024);
        client.write_all(bytes).await.unwrap();
        drop(client);
        let mut connection = complete(Box::pin(server), None, protocols).await?;
        let mut replayed = Vec::new();
        connection.read_to_end(&mut replayed).await.unwrap();
        Ok(replayed)
    }

    #[tokio::test]
    async fn the_preface_is_read_and_given_back_to_hyper_with_what_follows() {
        let mut bytes = HTTP2_START.to_vec();
        bytes.extend_from_slice(b"more frames");
        for protocols in [Protocols::Http2, Protocols::Http1AndHttp2] {
            assert_eq!(handshake(&bytes, protocols).await.unwrap(), bytes);
        }
    }

    #[tokio::test]
    async fn http1_is_passed_on_where_it_is_spoken_and_refused_where_it_is_not() {
        let request = b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n";
        assert_eq!(
            handshake(request, Protocols::Http1AndHttp2).await.unwrap(),
            request
        );
        assert!(matches!(
            handshake(request, Protocols::Http2).await,
            Err(HandshakeError::NotHttp2)
        ));
    }

    #[tokio::test]
    async fn a_preface_without_its_settings_frame_is_refused() {
        let mut ping_first = HTTP2_START[..24].to_vec();
        ping_first.extend_from_slice(b"\x00\x00\x08\x06\x00\x00\x00\x00\x00");
        let mut huge_settings = HTTP2_START[..24].to_vec();
        huge_settings.extend_from_slice(b"\x01\x00\x00\x04\x00\x00\x00\x00\x00");
        for bytes in [&ping_first, &huge_settings] {
            assert!(matches!(
                handshake(bytes, Protocols::Http2).await,
                Err(HandshakeError::NotHttp2)
            ));
        }
        assert!(matches!(
            handshake(&HTTP2_START[..30], Protocols::Http2).await,
            Err(HandshakeError::Io(_))
        ));
    }
}
