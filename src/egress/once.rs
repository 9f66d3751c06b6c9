//! One request on a connection of its own, for a remote party called too rarely to keep a pool.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, Uri, header, uri::PathAndQuery};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite};

use super::{Connected, Connector, Negotiated, SendError};

/// The longest a connection of one request is kept, whatever its peer does: one request
/// is sent on it, within a call's deadline.
const CONNECTION_LIFETIME: Duration = Duration::from_secs(120);

/// Sends one request on a connection of its own, which ends with its answer (or after
/// [`CONNECTION_LIFETIME`]). For Entra ID's exchanges, which are rare (each caller's Graph token
/// is cached for most of its life), so they keep no pool; Graph's pool is made for its calls.
pub(crate) async fn send_once(
    connector: &Connector,
    request: Request<Full<Bytes>>,
) -> Result<Response<Incoming>, SendError> {
    let (connected, negotiated) = connector.connect().await.map_err(SendError::Unreachable)?;
    match connected {
        Connected::Plain(tcp) => send_on(TokioIo::new(tcp), negotiated, request).await,
        Connected::Tls(tls) => send_on(TokioIo::new(tls), negotiated, request).await,
    }
}

async fn send_on<IO>(
    io: TokioIo<IO>,
    negotiated: Negotiated,
    mut request: Request<Full<Bytes>>,
) -> Result<Response<Incoming>, SendError>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let transport = SendError::Transport;
    match negotiated {
        Negotiated::Http1 => {
            let (mut sender, connection) = hyper::client::conn::http1::handshake(io)
                .await
                .map_err(transport)?;
            tokio::spawn(tokio::time::timeout(CONNECTION_LIFETIME, connection));
            // HTTP/1.1 wants the target in origin form and the host in `Host`.
            let uri = request.uri().clone();
            if let Some(authority) = uri.authority()
                && let Ok(host) = HeaderValue::from_str(authority.as_str())
            {
                request.headers_mut().insert(header::HOST, host);
            }
            let path = uri
                .path_and_query()
                .cloned()
                .unwrap_or(PathAndQuery::from_static("/"));
            *request.uri_mut() = Uri::from(path);
            sender.send_request(request).await.map_err(transport)
        }
        Negotiated::Http2 => {
            let (mut sender, connection) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                    .await
                    .map_err(transport)?;
            tokio::spawn(tokio::time::timeout(CONNECTION_LIFETIME, connection));
            sender.send_request(request).await.map_err(transport)
        }
    }
}
