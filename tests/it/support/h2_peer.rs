//! A hand-driven HTTP/2 peer over TLS (ALPN `h2`), written frame by frame, for what hyper's
//! server does not do on demand: a graceful GOAWAY whose last-stream-id leaves streams it has
//! received unprocessed (RFC 9113 §6.8), as a server restarting under load does.
//!
//! Its first connection answers nothing until [`Http2Peer::go_away_first`]; every later
//! connection answers each request `204` at once. It reads frame headers only (no HPACK
//! decoding), so it knows requests by stream id.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt, WriteHalf},
    net::{TcpListener, TcpStream},
    sync::watch,
    task::JoinHandle,
};
use tokio_rustls::{TlsAcceptor, server::TlsStream};

use super::pki::Pki;

const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const HEADERS: u8 = 0x1;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const END_STREAM: u8 = 0x1;
const ACK: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const SETTINGS_MAX_CONCURRENT_STREAMS: u16 = 0x3;
/// HPACK: `:status: 204`, index 9 of the static table, as an indexed header field.
const STATUS_204: u8 = 0x80 | 9;

/// The streams each connection allows, as most HTTP/2 servers do.
const MAX_STREAMS: u32 = 100;

/// What the peer has seen, per connection in the order they were accepted.
#[derive(Debug, Clone, Default)]
pub struct PeerSeen {
    /// The stream ids of the requests each connection received.
    pub requests: Vec<Vec<u32>>,
    /// How many requests each connection answered (processed).
    pub answered: Vec<usize>,
}

/// A running peer; it stops when dropped.
pub struct Http2Peer {
    /// Where it listens.
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

type Writer = Arc<tokio::sync::Mutex<WriteHalf<TlsStream<TcpStream>>>>;

struct Shared {
    seen: watch::Sender<PeerSeen>,
    /// The first connection's writing half, once it is accepted.
    first: Mutex<Option<Writer>>,
}

impl Http2Peer {
    /// Starts the peer with the server certificate of `pki`.
    pub async fn start(pki: &Pki) -> Self {
        let acceptor = pki.tls_acceptor(&[b"h2"]);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared {
            seen: watch::Sender::new(PeerSeen::default()),
            first: Mutex::new(None),
        });
        let task = tokio::spawn(accept(listener, acceptor, shared.clone()));
        Self { addr, shared, task }
    }

    /// The base URL to give the gateway: an address, so that no resolver is asked; the
    /// certificate names it.
    pub fn url(&self) -> String {
        format!("https://{}/v1.0", self.addr)
    }

    /// What it has seen so far.
    pub fn seen(&self) -> PeerSeen {
        self.shared.seen.borrow().clone()
    }

    /// Waits until what it has seen satisfies `condition`.
    pub async fn wait_until(&self, condition: impl FnMut(&PeerSeen) -> bool) -> PeerSeen {
        self.shared
            .seen
            .subscribe()
            .wait_for(condition)
            .await
            .unwrap()
            .clone()
    }

    /// Sends a graceful GOAWAY (NO_ERROR) on the first connection whose last-stream-id is its
    /// `processed`-th request, then answers those `processed` requests `204`. The requests
    /// above it stay unanswered: the GOAWAY told the client they were not processed.
    pub async fn go_away_first(&self, processed: usize) {
        let mut ids = self.seen().requests[0].clone();
        ids.sort_unstable();
        let last = ids[processed - 1];
        let writer = self.shared.first.lock().unwrap().clone().unwrap();
        let mut writer = writer.lock().await;
        let mut go_away = last.to_be_bytes().to_vec();
        go_away.extend_from_slice(&0u32.to_be_bytes());
        writer
            .write_all(&frame(GOAWAY, 0, 0, &go_away))
            .await
            .unwrap();
        for &id in &ids[..processed] {
            writer.write_all(&answer(id)).await.unwrap();
        }
        writer.flush().await.unwrap();
        self.shared
            .seen
            .send_modify(|seen| seen.answered[0] += processed);
    }
}

impl Drop for Http2Peer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn accept(listener: TcpListener, acceptor: TlsAcceptor, shared: Arc<Shared>) {
    while let Ok((tcp, _)) = listener.accept().await {
        let Ok(tls) = acceptor.accept(tcp).await else {
            continue;
        };
        let mut index = 0;
        shared.seen.send_modify(|seen| {
            index = seen.requests.len();
            seen.requests.push(Vec::new());
            seen.answered.push(0);
        });
        tokio::spawn(serve(tls, index, shared.clone()));
    }
}

/// Speaks HTTP/2 on one connection until the client closes it.
async fn serve(tls: TlsStream<TcpStream>, index: usize, shared: Arc<Shared>) {
    let (mut reader, writer) = tokio::io::split(tls);
    let writer: Writer = Arc::new(tokio::sync::Mutex::new(writer));
    if index == 0 {
        *shared.first.lock().unwrap() = Some(writer.clone());
    }
    let mut preface = [0; PREFACE.len()];
    if reader.read_exact(&mut preface).await.is_err() || &preface != PREFACE {
        return;
    }
    let mut settings = SETTINGS_MAX_CONCURRENT_STREAMS.to_be_bytes().to_vec();
    settings.extend_from_slice(&MAX_STREAMS.to_be_bytes());
    if send(&writer, frame(SETTINGS, 0, 0, &settings))
        .await
        .is_err()
    {
        return;
    }
    loop {
        let mut head = [0; 9];
        if reader.read_exact(&mut head).await.is_err() {
            return;
        }
        let length = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let (kind, flags) = (head[3], head[4]);
        let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
        let mut payload = vec![0; length];
        if reader.read_exact(&mut payload).await.is_err() {
            return;
        }
        let reply = match kind {
            SETTINGS if flags & ACK == 0 => Some(frame(SETTINGS, ACK, 0, &[])),
            // Keepalive: a PING is answered with its payload.
            PING if flags & ACK == 0 => Some(frame(PING, ACK, 0, &payload)),
            HEADERS => {
                shared
                    .seen
                    .send_modify(|seen| seen.requests[index].push(stream));
                (index > 0).then(|| {
                    shared.seen.send_modify(|seen| seen.answered[index] += 1);
                    answer(stream)
                })
            }
            _ => None,
        };
        if let Some(reply) = reply
            && send(&writer, reply).await.is_err()
        {
            return;
        }
    }
}

async fn send(writer: &Writer, bytes: Vec<u8>) -> std::io::Result<()> {
    let mut writer = writer.lock().await;
    writer.write_all(&bytes).await?;
    writer.flush().await
}

/// A complete `204` answer on `stream`.
fn answer(stream: u32) -> Vec<u8> {
    frame(HEADERS, END_HEADERS | END_STREAM, stream, &[STATUS_204])
}

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let length = u32::try_from(payload.len()).unwrap().to_be_bytes();
    let mut bytes = length[1..].to_vec();
    bytes.extend_from_slice(&[kind, flags]);
    bytes.extend_from_slice(&stream.to_be_bytes());
    bytes.extend_from_slice(payload);
    bytes
}
