//! A Graph-like upstream: TLS on loopback with a certificate from the test PKI, HTTP/2 only
//! with a cap on concurrent streams per connection (or HTTP/1.1 only), built on hyper's server.
//! It counts connections and requests, holds answers until told, refuses streams, and sends
//! GOAWAY to its connections on demand.

use std::{
    collections::HashSet,
    convert::Infallible,
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Empty;
use hyper::{body::Incoming, service::service_fn};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::{net::TcpListener, sync::watch, task::JoinHandle};
use tokio_rustls::TlsAcceptor;

use super::pki::Pki;

/// Which HTTP the upstream speaks.
#[derive(Debug, Clone, Copy)]
pub enum Speaks {
    /// HTTP/2 only (ALPN `h2`), at most this many concurrent streams per connection.
    Http2 { max_streams: u32 },
    /// HTTP/1.1 only (ALPN `http/1.1`).
    Http1,
}

/// What the upstream has seen so far.
#[derive(Debug, Clone, Default)]
pub struct Seen {
    /// Connections accepted (TLS completed).
    pub connections: usize,
    /// Connections still open.
    pub open: usize,
    /// The path of every request it processed, in order of arrival.
    pub processed: Vec<String>,
    /// Requests refused with REFUSED_STREAM.
    pub refused: usize,
}

/// A running upstream; it stops when dropped.
pub struct GraphLike {
    /// Where it listens.
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

struct Shared {
    seen: watch::Sender<Seen>,
    /// Requests whose path contains this are answered only once `release` is called.
    hold: Mutex<Option<String>>,
    released: watch::Sender<u64>,
    /// Refuse each path the first time it arrives.
    refuse_first: Mutex<Option<HashSet<String>>>,
    /// Bumped to make every open connection shut down gracefully (GOAWAY).
    go_away: watch::Sender<u64>,
}

// === impl GraphLike ===

impl GraphLike {
    /// Starts the upstream with the server certificate of `pki`.
    pub async fn start(pki: &Pki, speaks: Speaks) -> Self {
        let alpn: &[u8] = match speaks {
            Speaks::Http2 { .. } => b"h2",
            Speaks::Http1 => b"http/1.1",
        };
        let acceptor = pki.tls_acceptor(&[alpn]);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared {
            seen: watch::Sender::new(Seen::default()),
            hold: Mutex::new(None),
            released: watch::Sender::new(0),
            refuse_first: Mutex::new(None),
            go_away: watch::Sender::new(0),
        });
        let task = tokio::spawn(accept(listener, acceptor, speaks, shared.clone()));
        Self { addr, shared, task }
    }

    /// The base URL to give the gateway: an address, so that no resolver is asked; the
    /// certificate names it.
    pub fn url(&self) -> String {
        format!("https://{}/v1.0", self.addr)
    }

    /// What it has seen so far.
    pub fn seen(&self) -> Seen {
        self.shared.seen.borrow().clone()
    }

    /// Waits until what it has seen satisfies `condition`.
    pub async fn wait_until(&self, condition: impl FnMut(&Seen) -> bool) -> Seen {
        self.shared
            .seen
            .subscribe()
            .wait_for(condition)
            .await
            .unwrap()
            .clone()
    }

    /// Holds the answer to every request whose path contains `marker` until [`Self::release`].
    pub fn hold(&self, marker: &str) {
        *self.shared.hold.lock().unwrap() = Some(marker.to_owned());
    }

    /// Answers every held request, and stops holding.
    pub fn release(&self) {
        *self.shared.hold.lock().unwrap() = None;
        self.shared
            .released
            .send_modify(|generation| *generation += 1);
    }

    /// Refuses each path with REFUSED_STREAM the first time it arrives.
    pub fn refuse_first(&self) {
        *self.shared.refuse_first.lock().unwrap() = Some(HashSet::new());
    }

    /// Shuts every open connection down gracefully: GOAWAY, then close once its streams are done.
    pub fn go_away(&self) {
        self.shared
            .go_away
            .send_modify(|generation| *generation += 1);
    }
}

impl Drop for GraphLike {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn accept(listener: TcpListener, acceptor: TlsAcceptor, speaks: Speaks, shared: Arc<Shared>) {
    while let Ok((tcp, _)) = listener.accept().await {
        let acceptor = acceptor.clone();
        let shared = shared.clone();
        tokio::spawn(async move {
            let Ok(tls) = acceptor.accept(tcp).await else {
                return;
            };
            shared.seen.send_modify(|seen| {
                seen.connections += 1;
                seen.open += 1;
            });
            serve(TokioIo::new(tls), speaks, &shared).await;
            shared.seen.send_modify(|seen| seen.open -= 1);
        });
    }
}

async fn serve<T>(io: T, speaks: Speaks, shared: &Arc<Shared>)
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let mut go_away = shared.go_away.subscribe();
    go_away.mark_unchanged();
    let service = {
        let shared = shared.clone();
        service_fn(move |request| answer(shared.clone(), request))
    };
    match speaks {
        Speaks::Http2 { max_streams } => {
            let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
            builder.max_concurrent_streams(max_streams);
            let connection = builder.serve_connection(io, service);
            let mut connection = std::pin::pin!(connection);
            loop {
                tokio::select! {
                    _ = connection.as_mut() => break,
                    Ok(()) = go_away.changed() => connection.as_mut().graceful_shutdown(),
                }
            }
        }
        Speaks::Http1 => {
            let connection =
                hyper::server::conn::http1::Builder::new().serve_connection(io, service);
            let mut connection = std::pin::pin!(connection);
            loop {
                tokio::select! {
                    _ = connection.as_mut() => break,
                    Ok(()) = go_away.changed() => connection.as_mut().graceful_shutdown(),
                }
            }
        }
    }
}

type ServiceError = Box<dyn std::error::Error + Send + Sync>;

async fn answer(
    shared: Arc<Shared>,
    request: Request<Incoming>,
) -> Result<Response<Empty<Bytes>>, ServiceError> {
    let path = request.uri().path().to_owned();
    if let Some(seen) = shared.refuse_first.lock().unwrap().as_mut()
        && seen.insert(path.clone())
    {
        shared.seen.send_modify(|seen| seen.refused += 1);
        // hyper resets the stream with the reason of an h2 error the service returns.
        return Err(Box::new(h2::Error::from(h2::Reason::REFUSED_STREAM)));
    }
    let mut released = shared.released.subscribe();
    released.mark_unchanged();
    let held = matches!(&*shared.hold.lock().unwrap(), Some(marker) if path.contains(marker));
    shared
        .seen
        .send_modify(|seen| seen.processed.push(path.clone()));
    if held {
        let _ = released.changed().await;
    }
    Ok::<_, Infallible>(
        Response::builder()
            .status(204)
            .header("request-id", "graph-like")
            .body(Empty::new())
            .unwrap(),
    )
    .map_err(|never| match never {})
}
