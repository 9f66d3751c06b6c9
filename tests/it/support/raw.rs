//! Fake Graph servers that are not HTTP servers at all: raw TCP on loopback, for the failures a
//! real server cannot be asked to produce.

use std::{net::SocketAddr, time::Duration};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::mpsc,
};

/// What a raw fake does once a request's headers have arrived.
#[derive(Debug, Clone)]
pub enum Behaviour {
    /// Closes the connection with a TCP reset.
    Reset,
    /// Writes these bytes, then closes.
    Write(Vec<u8>),
    /// Never answers, and reports when the gateway closes the connection.
    Hang,
}

/// A raw TCP fake. Events arrive on `events`: `"request"` when a request's headers are in, and
/// `"closed"` when the gateway closed the connection of a hanging request.
pub struct RawFake {
    /// Where it listens.
    pub addr: SocketAddr,
    /// What happened, in order.
    pub events: mpsc::UnboundedReceiver<&'static str>,
    task: tokio::task::JoinHandle<()>,
}

impl RawFake {
    /// Starts a fake that behaves as `behaviour` on every connection.
    pub async fn start(behaviour: Behaviour) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, events) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve(stream, behaviour.clone(), tx.clone()));
            }
        });
        Self { addr, events, task }
    }

    /// The Graph base URL to give the gateway.
    pub fn url(&self) -> String {
        format!("http://{}/v1.0", self.addr)
    }

    /// Waits for the next event, failing the test after `within`.
    pub async fn next_event(&mut self, within: Duration) -> &'static str {
        tokio::time::timeout(within, self.events.recv())
            .await
            .expect("the raw fake reports an event in time")
            .expect("the raw fake is running")
    }
}

impl Drop for RawFake {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(
    mut stream: TcpStream,
    behaviour: Behaviour,
    events: mpsc::UnboundedSender<&'static str>,
) {
    let mut received = Vec::new();
    let mut buffer = [0u8; 4096];
    while !received.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(n) => received.extend_from_slice(&buffer[..n]),
        }
    }
    let _ = events.send("request");
    match behaviour {
        Behaviour::Reset => {
            let _ = stream.set_zero_linger();
            drop(stream);
        }
        Behaviour::Write(bytes) => {
            let _ = stream.write_all(&bytes).await;
            let _ = stream.shutdown().await;
        }
        Behaviour::Hang => {
            while let Ok(n) = stream.read(&mut buffer).await {
                if n == 0 {
                    break;
                }
            }
            let _ = events.send("closed");
        }
    }
}
