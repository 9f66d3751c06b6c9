//! The HTTP client that carries requests to Graph: hyper's pooled client over rustls with the
//! platform's roots (plus an optional extra CA), through an `HTTPS_PROXY` tunnel when the
//! environment asks for one, HTTP/2 when Graph offers it. It never follows redirects: hyper
//! does not, and nothing here does.
//!
//! The gateway uses hyper directly, not reqwest, because the benchmark showed reqwest's
//! per-request work (parsing the URL three times, its redirect and timeout layers) costing more
//! than the rest of the forwarded call; see BENCHMARKS.md.

use std::{future::Future, path::PathBuf, pin::Pin, sync::Arc, task::Poll, time::Duration};

use bytes::Bytes;
use http::Uri;
use http_body_util::Empty;
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::{
    client::{
        legacy::{
            Client,
            connect::{HttpConnector, proxy::Tunnel},
        },
        proxy::matcher::Matcher,
    },
    rt::{TokioExecutor, TokioIo, TokioTimer},
};
use rustls::{
    ClientConfig,
    pki_types::{CertificateDer, pem::PemObject},
};
use tokio::net::TcpStream;

/// How long an idle pooled connection is kept.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// How often an HTTP/2 connection to Graph is pinged, and how long the answer may take, so that
/// a connection that died silently is noticed before a call waits on it.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// Which HTTP versions the gateway speaks to Graph.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum GraphProtocol {
    /// HTTP/2 when Graph offers it over TLS (ALPN), HTTP/1.1 otherwise.
    Auto,
    /// HTTP/1.1 only, with a pool of connections: for proxies that break HTTP/2.
    Http1,
    /// HTTP/2 only, multiplexing every call on few connections; over plain HTTP (loopback fakes)
    /// with prior knowledge.
    Http2,
}

/// The pooled HTTP client.
pub(crate) type HttpClient = Client<Connector, Empty<Bytes>>;

/// Why the HTTP client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum GraphClientError {
    /// The extra CA file could not be read.
    #[error("cannot read CA certificates from {path}")]
    CaFile {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    /// TLS could not be set up (no usable root certificates, or a bad extra CA).
    #[error("cannot set up TLS for Graph")]
    Tls(#[from] rustls::Error),
}

/// Builds the client for requests to `graph` (whose scheme and host decide TLS and the proxy).
pub(crate) fn client(
    graph: &Uri,
    protocol: GraphProtocol,
    connect_timeout: Duration,
    extra_ca: Option<&PathBuf>,
) -> Result<HttpClient, GraphClientError> {
    let mut tcp = HttpConnector::new();
    tcp.enforce_http(false);
    tcp.set_nodelay(true);
    tcp.set_connect_timeout(Some(connect_timeout));
    let route = match Matcher::from_env().intercept(graph) {
        Some(proxy) if graph.scheme_str() == Some("https") => {
            let mut tunnel = Tunnel::new(proxy.uri().clone(), tcp);
            if let Some(auth) = proxy.basic_auth() {
                tunnel = tunnel.with_auth(auth.clone());
            }
            tracing::info!(proxy = %redacted(proxy.uri()), "Graph is reached through a proxy");
            Route::Tunnel(tunnel)
        }
        _ => Route::Direct(tcp),
    };
    let https = HttpsConnectorBuilder::new()
        .with_tls_config(tls_config(extra_ca)?)
        .https_or_http();
    let https = match protocol {
        GraphProtocol::Auto => https.enable_all_versions().wrap_connector(route),
        GraphProtocol::Http1 => https.enable_http1().wrap_connector(route),
        GraphProtocol::Http2 => https.enable_http2().wrap_connector(route),
    };
    let connector = Connector {
        https,
        timeout: connect_timeout,
    };

    let mut builder = Client::builder(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(POOL_IDLE_TIMEOUT)
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .http2_keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .http2_only(protocol == GraphProtocol::Http2);
    Ok(builder.build(connector))
}

/// rustls with ring, the platform's root certificates, and the extra CA when given (for egress
/// that inspects TLS, or a private Graph stand-in).
fn tls_config(extra_ca: Option<&PathBuf>) -> Result<ClientConfig, GraphClientError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let extra_roots = match extra_ca {
        None => Vec::new(),
        Some(path) => CertificateDer::pem_file_iter(path)
            .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
            .map_err(|source| GraphClientError::CaFile {
                path: path.clone(),
                source,
            })?,
    };
    let verifier =
        rustls_platform_verifier::Verifier::new_with_extra_roots(extra_roots, provider.clone())?;
    Ok(ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth())
}

/// A proxy's address without its credentials, for the logs.
fn redacted(uri: &Uri) -> String {
    match uri.authority() {
        Some(authority) => authority
            .as_str()
            .rsplit('@')
            .next()
            .unwrap_or_default()
            .to_owned(),
        None => String::new(),
    }
}

/// How connections are opened: straight to Graph, or through an HTTP CONNECT tunnel.
#[derive(Debug, Clone)]
pub(crate) enum Route {
    Direct(HttpConnector),
    Tunnel(Tunnel<HttpConnector>),
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Connecting<T> = Pin<Box<dyn Future<Output = Result<T, BoxError>> + Send>>;

impl tower::Service<Uri> for Route {
    type Response = TokioIo<TcpStream>;
    type Error = BoxError;
    type Future = Connecting<Self::Response>;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> Poll<Result<(), Self::Error>> {
        match self {
            Self::Direct(tcp) => tcp.poll_ready(cx).map_err(Into::into),
            Self::Tunnel(tunnel) => tunnel.poll_ready(cx).map_err(Into::into),
        }
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        match self {
            Self::Direct(tcp) => {
                let connecting = tcp.call(uri);
                Box::pin(async move { connecting.await.map_err(Into::into) })
            }
            Self::Tunnel(tunnel) => {
                let connecting = tunnel.call(uri);
                Box::pin(async move { connecting.await.map_err(Into::into) })
            }
        }
    }
}

/// The connector hyper's client uses: TLS over the route, with the TLS handshake included in
/// the connect timeout. Its future is boxed: hyper wants it `Unpin`, and a timer is not.
#[derive(Debug, Clone)]
pub(crate) struct Connector {
    https: HttpsConnector<Route>,
    timeout: Duration,
}

impl tower::Service<Uri> for Connector {
    type Response = <HttpsConnector<Route> as tower::Service<Uri>>::Response;
    type Error = BoxError;
    type Future = Connecting<Self::Response>;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.https.poll_ready(cx)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let connecting = self.https.call(uri);
        let timeout = self.timeout;
        Box::pin(async move {
            match tokio::time::timeout(timeout, connecting).await {
                Ok(connected) => connected,
                Err(_) => Err(format!("no connection within {timeout:?}").into()),
            }
        })
    }
}
