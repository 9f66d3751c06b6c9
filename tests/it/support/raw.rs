//! Fake Graph servers that break HTTP on purpose: raw TCP on loopback, for the failures a real
//! server cannot be asked to produce. Only requests for the printer `faulty` misbehave; every
//! other request gets a plain 204, so a test can show that the gateway still serves afterwards.

use std::{net::SocketAddr, time::Duration};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::mpsc,
};

/// The printer ID whose requests misbehave.
pub const FAULTY: &str = "faulty";

/// What a raw fake does once the headers of a request for [`FAULTY`] have arrived.
#[derive(Debug, Clone)]
pub enum Behaviour {
    /// Closes the connection with a TCP reset.
    Reset,
    /// Writes these bytes, then closes.
    Write(Vec<u8>),
    /// Never answers, and reports when the gateway closes the connection.
    Hang,
    /// Writes these bytes (say, a status line, headers and part of a body), then never another.
    WriteThenStall(Vec<u8>),
    /// Answers this status with a body of this many bytes, written as fast as it is read.
    HugeBody(u16, usize),
}

/// A raw TCP fake. Events arrive on `events`: `"request"` when the headers of a request for
/// [`FAULTY`] are in, and `"closed"` when the gateway closed the connection of a hanging one.
pub struct RawFake {
    /// Where it listens.
    pub addr: SocketAddr,
    /// What happened, in order.
    pub events: mpsc::UnboundedReceiver<&'static str>,
    task: tokio::task::JoinHandle<()>,
}

impl RawFake {
    /// Starts a fake that behaves as `behaviour` for the printer [`FAULTY`].
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

    /// How many events are waiting, without waiting for more.
    pub fn pending_events(&mut self) -> usize {
        let mut count = 0;
        while self.events.try_recv().is_ok() {
            count += 1;
        }
        count
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
    let request_line = received.split(|&b| b == b'\r').next().unwrap_or_default();
    if !String::from_utf8_lossy(request_line).contains(&format!("/printers/{FAULTY}/")) {
        let _ = stream
            .write_all(
                b"HTTP/1.1 204 No Content\r\nrequest-id: raw-ok\r\nconnection: close\r\n\r\n",
            )
            .await;
        let _ = stream.shutdown().await;
        return;
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
        Behaviour::WriteThenStall(bytes) => {
            let _ = stream.write_all(&bytes).await;
            // Holds the connection open without a byte more, until the gateway lets go.
            while let Ok(n) = stream.read(&mut buffer).await {
                if n == 0 {
                    break;
                }
            }
        }
        Behaviour::HugeBody(status, size) => {
            let head = format!(
                "HTTP/1.1 {status} Error\r\ncontent-type: text/plain\r\ncontent-length: {size}\r\n\r\n"
            );
            let _ = stream.write_all(head.as_bytes()).await;
            let chunk = vec![b'x'; 64 * 1024];
            let mut left = size;
            while left > 0 {
                let n = left.min(chunk.len());
                if stream.write_all(&chunk[..n]).await.is_err() {
                    break;
                }
                left -= n;
            }
        }
    }
}
