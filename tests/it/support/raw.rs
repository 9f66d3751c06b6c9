//! Fake Graph servers that break HTTP on purpose: raw TCP on loopback, for the failures a real
//! server cannot be asked to produce. Only requests for the printer `faulty` misbehave; every
//! other request gets a plain 204, so a test can show that the gateway still serves afterwards.
//! And hostile clients for the gateway: silent connections, and HTTP/2 streams that send their
//! headers and never their message.

use std::{net::SocketAddr, time::Duration};

use bytes::Bytes;

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

// === Hostile clients ===

/// Opens `count` TCP connections to `addr` that never send a byte.
pub async fn silent_connections(addr: SocketAddr, count: usize) -> Vec<TcpStream> {
    let mut connections = Vec::with_capacity(count);
    for _ in 0..count {
        connections.push(TcpStream::connect(addr).await.unwrap());
    }
    connections
}

/// Whether the peer closes `stream` (end of stream or a reset) within `within`. Whatever the
/// peer sends first is read and ignored.
pub async fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    let mut buffer = [0u8; 1024];
    let closed = async {
        while let Ok(n) = stream.read(&mut buffer).await {
            if n == 0 {
                return;
            }
        }
    };
    tokio::time::timeout(within, closed).await.is_ok()
}

/// Opens `count` HTTP/2 connections to `addr` that send the client preface and an empty SETTINGS
/// frame, read the server's SETTINGS (so the gateway has finished their handshake), and then
/// nothing: served connections with no stream open, idle. In the order opened.
pub async fn idle_connections(addr: SocketAddr, count: usize) -> Vec<TcpStream> {
    let mut connections = Vec::with_capacity(count);
    for _ in 0..count {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
            .await
            .unwrap();
        let mut header = [0u8; 9];
        stream.read_exact(&mut header).await.unwrap();
        assert_eq!(header[3], 0x4, "the server's first frame is SETTINGS");
        let length =
            usize::from(header[0]) << 16 | usize::from(header[1]) << 8 | usize::from(header[2]);
        let mut payload = vec![0u8; length];
        stream.read_exact(&mut payload).await.unwrap();
        connections.push(stream);
    }
    connections
}

/// A request body: these bytes (if any), then nothing, ever, and no end of stream.
pub type StallingBody = http_body_util::combinators::BoxBody<Bytes, std::convert::Infallible>;

/// A request body that sends `bytes` and then stalls forever without ending the stream.
pub fn stalling_body(bytes: &[u8]) -> StallingBody {
    use http_body_util::BodyExt;
    use tokio_stream::StreamExt;
    let first =
        (!bytes.is_empty()).then(|| Ok(hyper::body::Frame::data(Bytes::copy_from_slice(bytes))));
    let frames = tokio_stream::iter(first).chain(tokio_stream::pending());
    http_body_util::StreamBody::new(frames).boxed()
}

/// A request body of these bytes, then the end of the stream.
pub fn whole_body(bytes: &[u8]) -> StallingBody {
    use http_body_util::BodyExt;
    http_body_util::Full::new(Bytes::copy_from_slice(bytes))
        .map_err(|never| match never {})
        .boxed()
}

/// A raw HTTP/2 connection for streams no well-behaved gRPC client would send.
pub struct RawH2 {
    addr: SocketAddr,
    send: hyper::client::conn::http2::SendRequest<StallingBody>,
    task: tokio::task::JoinHandle<()>,
}

impl RawH2 {
    /// Opens an HTTP/2 connection (prior knowledge) to `addr`.
    pub async fn connect(addr: SocketAddr) -> Self {
        Self::connect_with(addr, None).await
    }

    /// Opens an HTTP/2 connection that sends a PING every `interval`, with or without streams
    /// (and answers the gateway's, as every connection does).
    pub async fn connect_pinging(addr: SocketAddr, interval: Duration) -> Self {
        Self::connect_with(addr, Some(interval)).await
    }

    async fn connect_with(addr: SocketAddr, ping_interval: Option<Duration>) -> Self {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let mut builder =
            hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new());
        if let Some(interval) = ping_interval {
            builder
                .timer(hyper_util::rt::TokioTimer::new())
                .keep_alive_interval(interval)
                .keep_alive_timeout(Duration::from_secs(20))
                .keep_alive_while_idle(true);
        }
        let (send, connection) = builder
            .handshake(hyper_util::rt::TokioIo::new(tcp))
            .await
            .unwrap();
        let task = tokio::spawn(async move {
            let _ = connection.await;
        });
        Self { addr, send, task }
    }

    /// Opens a Cancel stream with a valid token, sending `grpc-timeout` when given, whose body is
    /// `body`. Resolves to the call's gRPC status code and message once the gateway answers.
    pub fn cancel(
        &mut self,
        grpc_timeout: Option<&str>,
        body: StallingBody,
    ) -> impl std::future::Future<Output = (i32, String)> + Send + 'static + use<> {
        let authorization = format!("Bearer {}", super::TOKEN);
        self.stream(
            "/graph.print.v1.PrintJobService/Cancel",
            Some(&authorization),
            grpc_timeout,
            body,
        )
    }

    /// Opens a gRPC stream to `path`, with this `authorization` (if any) and `grpc-timeout` (if
    /// any), whose body is `body`. Resolves to the call's gRPC status code and message once the
    /// gateway answers (for a server stream, once it ends).
    pub fn stream(
        &mut self,
        path: &str,
        authorization: Option<&str>,
        grpc_timeout: Option<&str>,
        body: StallingBody,
    ) -> impl std::future::Future<Output = (i32, String)> + Send + 'static + use<> {
        let mut request = http::Request::post(format!("http://{}{path}", self.addr))
            .header("content-type", "application/grpc")
            .header("te", "trailers");
        if let Some(authorization) = authorization {
            request = request.header("authorization", authorization);
        }
        if let Some(timeout) = grpc_timeout {
            request = request.header("grpc-timeout", timeout);
        }
        let request = request.body(body).unwrap();
        let response = self.send.send_request(request);
        async move { grpc_status(response.await.expect("the gateway answers")).await }
    }

    /// Opens a gRPC stream to `path` with `body` and resolves once the gateway's response
    /// headers have arrived, with the response (whose body may go on).
    pub fn open(
        &mut self,
        path: &str,
        body: StallingBody,
    ) -> impl std::future::Future<Output = http::Response<hyper::body::Incoming>> + Send + 'static + use<>
    {
        let request = http::Request::post(format!("http://{}{path}", self.addr))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(body)
            .unwrap();
        let response = self.send.send_request(request);
        async move { response.await.expect("the gateway answers") }
    }

    /// Whether the gateway has closed this connection.
    pub fn is_closed(&self) -> bool {
        self.task.is_finished()
    }

    /// Completes when the gateway has closed this connection.
    pub async fn closed(&mut self) {
        let _ = (&mut self.task).await;
    }
}

impl Drop for RawH2 {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The gRPC status of a response: from its headers (a trailers-only answer) or its trailers.
pub async fn grpc_status(response: http::Response<hyper::body::Incoming>) -> (i32, String) {
    use http_body_util::BodyExt;
    let (parts, body) = response.into_parts();
    let trailers = if parts.headers.contains_key("grpc-status") {
        parts.headers
    } else {
        body.collect()
            .await
            .ok()
            .and_then(|collected| collected.trailers().cloned())
            .unwrap_or_default()
    };
    let code = trailers
        .get("grpc-status")
        .and_then(|value| value.to_str().ok()?.parse().ok())
        .expect("a grpc-status");
    let message = trailers
        .get("grpc-message")
        .and_then(|value| value.to_str().ok())
        .map(|text| {
            percent_encoding::percent_decode_str(text)
                .decode_utf8_lossy()
                .into_owned()
        })
        .unwrap_or_default();
    (code, message)
}

/// A gRPC message frame: no compression, the length, the payload.
pub fn grpc_frame(payload: &[u8]) -> Vec<u8> {
    let mut frame = vec![0];
    frame.extend_from_slice(&u32::try_from(payload.len()).unwrap().to_be_bytes());
    frame.extend_from_slice(payload);
    frame
}

/// Raises this process's soft limit on open files to its hard limit, for tests that hold a
/// thousand connections (common soft limits are 1,024).
pub fn raise_open_files_limit() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    let _ = setrlimit(
        Resource::Nofile,
        rustix::process::Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        },
    );
}
