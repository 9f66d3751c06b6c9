//! A TCP relay on loopback that can go silent, the way a NAT or load balancer that dropped a
//! connection does: it stops reading and forwarding on the connections it holds, without
//! closing them. Connections accepted later relay normally.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream, tcp::OwnedReadHalf, tcp::OwnedWriteHalf},
    sync::watch,
    task::JoinHandle,
};

/// Which way a stall stops the bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Nothing from the upstream reaches the gateway; the gateway's bytes still get through.
    ToGateway,
    /// Nothing moves either way.
    Both,
}

/// A running relay; it stops when dropped.
pub struct StallProxy {
    /// Where the gateway connects.
    pub addr: SocketAddr,
    accepted: watch::Sender<usize>,
    gates: Arc<Mutex<Gates>>,
    task: JoinHandle<()>,
}

/// Every connection's gate, and how new connections start.
#[derive(Default)]
struct Gates {
    all: Vec<Gate>,
    /// Set by [`StallProxy::stall_all`]: new connections start stalled.
    new: Option<Direction>,
}

/// One relayed connection's two directions: `true` while stalled.
#[derive(Clone)]
struct Gate {
    to_gateway: watch::Sender<bool>,
    to_upstream: watch::Sender<bool>,
}

// === impl StallProxy ===

impl StallProxy {
    /// A relay to `upstream`.
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = watch::Sender::new(0);
        let gates = Arc::new(Mutex::new(Gates::default()));
        let task = tokio::spawn({
            let accepted = accepted.clone();
            let gates = gates.clone();
            async move {
                while let Ok((gateway, _)) = listener.accept().await {
                    let Ok(upstream) = TcpStream::connect(upstream).await else {
                        continue;
                    };
                    let gate = Gate {
                        to_gateway: watch::Sender::new(false),
                        to_upstream: watch::Sender::new(false),
                    };
                    {
                        let mut gates = gates.lock().unwrap();
                        if let Some(direction) = gates.new {
                            gate.stall(direction);
                        }
                        gates.all.push(gate.clone());
                    }
                    accepted.send_modify(|count| *count += 1);
                    let (gateway_read, gateway_write) = gateway.into_split();
                    let (upstream_read, upstream_write) = upstream.into_split();
                    tokio::spawn(relay(
                        gateway_read,
                        upstream_write,
                        gate.to_upstream.subscribe(),
                    ));
                    tokio::spawn(relay(
                        upstream_read,
                        gateway_write,
                        gate.to_gateway.subscribe(),
                    ));
                }
            }
        });
        Self {
            addr,
            accepted,
            gates,
            task,
        }
    }

    /// The base URL to give the gateway for an upstream whose certificate names 127.0.0.1: an
    /// address, so that no resolver is asked.
    pub fn url(&self) -> String {
        format!("https://{}/v1.0", self.addr)
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        *self.accepted.borrow()
    }

    /// Stalls every connection accepted so far; later ones relay normally.
    pub fn stall(&self, direction: Direction) {
        for gate in &self.gates.lock().unwrap().all {
            gate.stall(direction);
        }
    }

    /// Stalls every connection, those accepted later too, until [`Self::resume`].
    pub fn stall_all(&self, direction: Direction) {
        let mut gates = self.gates.lock().unwrap();
        gates.new = Some(direction);
        for gate in &gates.all {
            gate.stall(direction);
        }
    }

    /// Lets every connection move again, the held bytes first.
    pub fn resume(&self) {
        let mut gates = self.gates.lock().unwrap();
        gates.new = None;
        for gate in &gates.all {
            gate.to_gateway.send_replace(false);
            gate.to_upstream.send_replace(false);
        }
    }
}

impl Drop for StallProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

// === impl Gate ===

impl Gate {
    fn stall(&self, direction: Direction) {
        self.to_gateway.send_replace(true);
        if direction == Direction::Both {
            self.to_upstream.send_replace(true);
        }
    }
}

/// Copies `from` to `to`, and neither reads nor writes while stalled.
async fn relay(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    mut stalled: watch::Receiver<bool>,
) {
    let mut buffer = vec![0u8; 16 * 1024];
    loop {
        if stalled.wait_for(|stalled| !*stalled).await.is_err() {
            return;
        }
        let n = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        // Bytes read just before a stall are held, not sent, until it ends.
        if stalled.wait_for(|stalled| !*stalled).await.is_err() {
            return;
        }
        if to.write_all(&buffer[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}
