//! A gRPC channel (plaintext HTTP/2) that counts the DATA frames with a payload it has written to
//! the socket: what a test waits on to know that a burst of calls has left the client, all of it,
//! before the gateway is let to read it.

use std::{
    io,
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    task::{Context, Poll},
};

use hyper_util::rt::TokioIo;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
};
use tonic::transport::{Channel, Endpoint};

/// The client connection preface, which comes before the first frame.
const PREFACE_LEN: usize = 24;
const FRAME_HEADER_LEN: usize = 9;
const DATA: u8 = 0x0;

/// Connects a channel to `addr` over one TCP connection, and gives the count of DATA frames with
/// a payload (gRPC messages, on unary calls) written on it so far.
pub async fn counted_channel(addr: SocketAddr) -> (Channel, Arc<AtomicUsize>) {
    let data_frames = Arc::new(AtomicUsize::new(0));
    let counter = data_frames.clone();
    let connector = tower::service_fn(move |_| {
        let counter = counter.clone();
        async move {
            let tcp = TcpStream::connect(addr).await?;
            Ok::<_, io::Error>(TokioIo::new(Counted {
                tcp,
                frames: FrameCounter::default(),
                data_frames: counter,
            }))
        }
    });
    let channel = Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_with_connector(connector)
        .await
        .unwrap();
    (channel, data_frames)
}

struct Counted {
    tcp: TcpStream,
    frames: FrameCounter,
    data_frames: Arc<AtomicUsize>,
}

/// Follows the frames in the bytes written, across writes.
#[derive(Default)]
struct FrameCounter {
    /// Bytes of the preface still to skip.
    preface_seen: usize,
    header: Vec<u8>,
    /// Payload bytes of the current frame still to skip.
    payload_left: usize,
    /// Whether the current frame is DATA with a payload.
    in_data: bool,
}

impl FrameCounter {
    /// Reads `bytes` as the next written bytes; returns how many DATA frames with a payload they
    /// completed.
    fn feed(&mut self, mut bytes: &[u8]) -> usize {
        let mut data_frames = 0;
        while !bytes.is_empty() {
            if self.preface_seen < PREFACE_LEN {
                let take = bytes.len().min(PREFACE_LEN - self.preface_seen);
                self.preface_seen += take;
                bytes = &bytes[take..];
            } else if self.payload_left > 0 {
                let take = bytes.len().min(self.payload_left);
                self.payload_left -= take;
                bytes = &bytes[take..];
                if self.payload_left == 0 && self.in_data {
                    self.in_data = false;
                    data_frames += 1;
                }
            } else {
                let take = bytes.len().min(FRAME_HEADER_LEN - self.header.len());
                self.header.extend_from_slice(&bytes[..take]);
                bytes = &bytes[take..];
                if self.header.len() == FRAME_HEADER_LEN {
                    let length =
                        u32::from_be_bytes([0, self.header[0], self.header[1], self.header[2]]);
                    self.payload_left = length as usize;
                    self.in_data = self.header[3] == DATA && length > 0;
                    self.header.clear();
                }
            }
        }
        data_frames
    }
}

impl AsyncRead for Counted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_read(cx, buf)
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let written = std::task::ready!(Pin::new(&mut this.tcp).poll_write(cx, buf))?;
        let completed = this.frames.feed(&buf[..written]);
        this.data_frames.fetch_add(completed, Ordering::SeqCst);
        Poll::Ready(Ok(written))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}
