//! Opening one connection to a remote party (Graph, Entra ID): TCP straight to it or through an
//! `HTTPS_PROXY` CONNECT tunnel, then TLS with ALPN, which decides between HTTP/2 and HTTP/1.1.
//! The pool (`pool.rs`) decides when to call it; this file only knows how.

use std::{
    future::{Future, poll_fn},
    io,
    net::SocketAddr,
    path::PathBuf,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use http::Uri;
use hyper_util::client::{
    legacy::connect::{
        HttpConnector,
        dns::{GaiResolver, Name},
        proxy::Tunnel,
    },
    proxy::matcher::Matcher,
};
use rustls::{
    ClientConfig,
    pki_types::{CertificateDer, ServerName, pem::PemObject},
};
use tokio::net::TcpStream;
use tokio_rustls::{TlsConnector, client::TlsStream};
use tower::Service;

use super::ConnectSettings;
use crate::files::{MAX_PEM_BYTES, read_to_limit};

/// Which HTTP versions the gateway speaks to Graph (`--graph-protocol`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Protocol {
    /// HTTP/2 when Graph offers it over TLS (ALPN), HTTP/1.1 otherwise.
    Auto,
    /// HTTP/1.1 only, with a pool of connections: for proxies that break HTTP/2.
    Http1,
    /// HTTP/2 only, multiplexing every call on few connections; over plain HTTP (loopback fakes)
    /// with prior knowledge.
    Http2,
}

/// Why the connector could not be built. (Its messages name Graph, as they always have; Entra
/// ID's connector is built with the same settings.)
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The extra CA file could not be read whole.
    #[error("cannot read CA certificates")]
    CaFileRead(#[from] crate::files::ReadError),
    /// The extra CA file holds something other than PEM certificates.
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
    /// The proxy variable names a proxy the gateway cannot speak to honestly: only `http://`
    /// proxies (HTTP CONNECT, TLS to Graph inside the tunnel) are supported. An `https://` proxy
    /// would otherwise be spoken to in plaintext, credentials included, and a scheme the gateway
    /// does not know (`socks5://`, `ftp://`) would be ignored and Graph reached directly.
    #[error(
        "{variable} uses the scheme {scheme}://, but only http:// proxies are supported (HTTP CONNECT; TLS to Graph runs inside the tunnel)"
    )]
    ProxyScheme {
        /// The variable that named the proxy.
        variable: &'static str,
        /// The refused scheme.
        scheme: String,
    },
    /// The proxy variable is set but is not a proxy URL (`http://host:port`, or `host:port`),
    /// which would otherwise be ignored and Graph reached directly.
    #[error("{variable} is set but is not a proxy URL such as http://proxy.example:3128")]
    ProxyUrl {
        /// The variable that named the proxy.
        variable: &'static str,
    },
    /// Graph's URL has no host to connect to.
    #[error("the Graph URL has no host")]
    NoHost,
}

/// The proxy for HTTPS requests as the environment names it, read once at start-up by `config`:
/// `HTTPS_PROXY` (or `https_proxy`), else `ALL_PROXY` (or `all_proxy`), and `NO_PROXY` (or
/// `no_proxy`), the upper-case name first, an empty value counting as unset.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct ProxyEnv {
    /// The variable that names the proxy, and its value.
    pub proxy: Option<(&'static str, String)>,
    /// The hosts reached without the proxy, as `NO_PROXY` lists them.
    pub no_proxy: Option<String>,
}

impl std::fmt::Debug for ProxyEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The value may carry the proxy's password: only its address is shown.
        let proxy = self.proxy.as_ref().map(|(variable, value)| {
            let shown = value
                .parse::<Uri>()
                .map_or_else(|_| "(not a URL)".to_owned(), |uri| redacted(&uri));
            format!("{variable}={shown}")
        });
        f.debug_struct("ProxyEnv")
            .field("proxy", &proxy)
            .field("no_proxy", &self.no_proxy)
            .finish()
    }
}

impl ProxyEnv {
    /// The proxy to tunnel HTTPS through, once its URL is checked, or `None` when there is none.
    fn matcher(&self) -> Result<Option<Matcher>, ClientError> {
        let Some((variable, value)) = &self.proxy else {
            return Ok(None);
        };
        let variable = *variable;
        let uri = value
            .parse::<Uri>()
            .ok()
            .filter(|uri| uri.authority().is_some())
            .ok_or(ClientError::ProxyUrl { variable })?;
        // hyper-util's matcher takes a URL without a scheme to mean http://.
        if let Some(scheme) = uri.scheme_str()
            && scheme != "http"
        {
            return Err(ClientError::ProxyScheme {
                variable,
                scheme: scheme.to_owned(),
            });
        }
        let matcher = Matcher::builder()
            .https(value)
            .no(self.no_proxy.as_deref().unwrap_or_default())
            .build();
        Ok(Some(matcher))
    }
}

/// How a host name becomes addresses: the system's resolver (`getaddrinfo` on the blocking pool,
/// as hyper-util does it) unless whoever builds the settings hands in its own. Only code can: the
/// binary has no flag for it and always resolves as the system does. The tests give a resolver
/// that answers at once, so that none of them depends on the machine's DNS.
#[derive(Clone, Default)]
pub struct Resolver(Option<Arc<ResolveFn>>);

/// A resolver handed in by code: the host name in, its addresses (any port; the URL's is used) out.
type ResolveFn = dyn Fn(String) -> Resolving + Send + Sync;

/// A lookup under way.
type Resolving = Pin<Box<dyn Future<Output = io::Result<Vec<SocketAddr>>> + Send>>;

// === impl Resolver ===

impl Resolver {
    /// The system's resolver, `getaddrinfo`: what the gateway uses.
    pub fn system() -> Self {
        Self(None)
    }

    /// A resolver that answers each host name with what `resolve` returns for it.
    pub fn from_fn<F, Fut>(resolve: F) -> Self
    where
        F: Fn(String) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = io::Result<Vec<SocketAddr>>> + Send + 'static,
    {
        Self(Some(Arc::new(move |host| Box::pin(resolve(host)))))
    }
}

impl PartialEq for Resolver {
    /// The same resolver: the system's, or one handed in, the very same.
    fn eq(&self, other: &Self) -> bool {
        match (&self.0, &other.0) {
            (None, None) => true,
            (Some(one), Some(other)) => Arc::ptr_eq(one, other),
            _ => false,
        }
    }
}

impl Eq for Resolver {}

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "Resolver(handed in)"
        } else {
            "Resolver(system)"
        })
    }
}

/// [`Resolver`] as the `Service<Name>` that `HttpConnector` resolves through.
#[derive(Debug, Clone)]
struct Dns {
    resolver: Resolver,
    system: GaiResolver,
}

impl Service<Name> for Dns {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Neither resolver has a capacity to wait for (GaiResolver is always ready).
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        match &self.resolver.0 {
            Some(resolve) => {
                let resolving = resolve(name.as_str().to_owned());
                Box::pin(async move { resolving.await.map(Vec::into_iter) })
            }
            None => {
                let resolving = self.system.call(name);
                Box::pin(async move {
                    resolving
                        .await
                        .map(|addrs| addrs.collect::<Vec<_>>().into_iter())
                })
            }
        }
    }
}

/// The HTTP version a new connection speaks, as TLS negotiated it (or as configured over plain
/// HTTP).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Negotiated {
    Http1,
    Http2,
}

/// An open connection, before any HTTP.
pub(crate) enum Connected {
    /// Plain TCP: loopback stand-ins for Graph only (see `GraphBaseUrl`).
    Plain(TcpStream),
    /// TLS over TCP (itself direct or tunnelled).
    Tls(Box<TlsStream<TcpStream>>),
}

/// Why a connection could not be opened. Nothing was sent to Graph.
#[derive(Debug, Clone, thiserror::Error)]
#[error("cannot connect to Graph: {reason}")]
pub struct ConnectError {
    reason: Arc<str>,
}

/// Opens connections to one Graph host; built once.
pub(crate) struct Connector {
    route: Route,
    tls: Option<(TlsConnector, ServerName<'static>)>,
    protocol: Protocol,
    target: Uri,
    timeout: Duration,
}

/// How the TCP connection is made: straight to Graph, or through an HTTP CONNECT tunnel.
#[derive(Debug, Clone)]
enum Route {
    Direct(HttpConnector<Dns>),
    Tunnel(Tunnel<HttpConnector<Dns>>),
}

// === impl Connector ===

impl Connector {
    /// A connector for `graph` (whose scheme and host decide TLS and the proxy): rustls with the
    /// platform's roots plus `extra_ca`, ALPN as `protocol` asks, through the proxy `proxy`
    /// names unless its `NO_PROXY` lists Graph's host.
    pub(crate) fn new(
        graph: &Uri,
        protocol: Protocol,
        settings: &ConnectSettings,
    ) -> Result<Self, ClientError> {
        let ConnectSettings {
            connect_timeout: timeout,
            extra_ca,
            proxy,
            resolver,
        } = settings;
        let timeout = *timeout;
        let extra_ca = extra_ca.as_ref();
        let host = graph.host().ok_or(ClientError::NoHost)?;
        let https = graph.scheme_str() == Some("https");
        let mut tcp = HttpConnector::new_with_resolver(Dns {
            resolver: resolver.clone(),
            system: GaiResolver::new(),
        });
        tcp.enforce_http(false);
        tcp.set_nodelay(true);
        // Checked whatever Graph's URL, so that a bad proxy setting stops start-up.
        let matcher = proxy.matcher()?;
        let intercept = matcher
            .as_ref()
            .and_then(|matcher| matcher.intercept(graph));
        let route = match intercept {
            Some(proxy) if https => {
                let mut tunnel = Tunnel::new(proxy.uri().clone(), tcp);
                if let Some(auth) = proxy.basic_auth() {
                    tunnel = tunnel.with_auth(auth.clone());
                }
                tracing::info!(proxy = %redacted(proxy.uri()), "Graph is reached through a proxy");
                Route::Tunnel(tunnel)
            }
            _ => Route::Direct(tcp),
        };
        let tls = if https {
            let mut config = tls_config(extra_ca)?;
            config.alpn_protocols = match protocol {
                Protocol::Auto => vec![b"h2".to_vec(), b"http/1.1".to_vec()],
                Protocol::Http1 => vec![b"http/1.1".to_vec()],
                Protocol::Http2 => vec![b"h2".to_vec()],
            };
            let name = ServerName::try_from(host.trim_matches(['[', ']']).to_owned())
                .map_err(|_| ClientError::NoHost)?;
            Some((TlsConnector::from(Arc::new(config)), name))
        } else {
            None
        };
        Ok(Self {
            route,
            tls,
            protocol,
            target: graph.clone(),
            timeout,
        })
    }

    /// The connect timeout.
    pub(crate) fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Opens one connection, TLS handshake included, within the connect timeout.
    pub(crate) async fn connect(&self) -> Result<(Connected, Negotiated), ConnectError> {
        match tokio::time::timeout(self.timeout, self.open()).await {
            Ok(connected) => connected,
            Err(_) => Err(ConnectError::new(format!(
                "no connection within {:?}",
                self.timeout
            ))),
        }
    }

    async fn open(&self) -> Result<(Connected, Negotiated), ConnectError> {
        let tcp = match self.route.clone() {
            Route::Direct(mut tcp) => {
                let _ = poll_fn(|cx| tcp.poll_ready(cx)).await;
                tcp.call(self.target.clone())
                    .await
                    .map_err(ConnectError::from_error)?
                    .into_inner()
            }
            Route::Tunnel(mut tunnel) => {
                poll_fn(|cx| tunnel.poll_ready(cx))
                    .await
                    .map_err(ConnectError::from_error)?;
                tunnel
                    .call(self.target.clone())
                    .await
                    .map_err(ConnectError::from_error)?
                    .into_inner()
            }
        };
        let Some((tls, name)) = &self.tls else {
            let negotiated = match self.protocol {
                Protocol::Http2 => Negotiated::Http2,
                Protocol::Auto | Protocol::Http1 => Negotiated::Http1,
            };
            return Ok((Connected::Plain(tcp), negotiated));
        };
        let stream = tls
            .connect(name.clone(), tcp)
            .await
            .map_err(ConnectError::from_error)?;
        let negotiated = match (stream.get_ref().1.alpn_protocol(), self.protocol) {
            (Some(b"h2"), _) | (_, Protocol::Http2) => Negotiated::Http2,
            _ => Negotiated::Http1,
        };
        Ok((Connected::Tls(Box::new(stream)), negotiated))
    }
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connector")
            .field("route", &self.route)
            .field("tls", &self.tls.is_some())
            .field("protocol", &self.protocol)
            .finish_non_exhaustive()
    }
}

// === impl ConnectError ===

impl ConnectError {
    fn new(reason: String) -> Self {
        Self {
            reason: reason.into(),
        }
    }

    /// The HTTP handshake on a new connection failed.
    pub(crate) fn handshake(error: &hyper::Error) -> Self {
        Self::from_error(error)
    }

    /// Graph did not send its HTTP/2 SETTINGS in time.
    pub(crate) fn no_settings() -> Self {
        Self::new("Graph sent no HTTP/2 SETTINGS on a new connection".to_owned())
    }

    /// The pool went away while a call waited; only seen at shutdown.
    pub(crate) fn gone() -> Self {
        Self::new("the connection pool is gone".to_owned())
    }

    /// Keeps the whole chain of causes as text: the error is shared by every call that waited
    /// for the connection, and a proxy's or resolver's error types are not `Clone`.
    fn from_error(error: impl std::error::Error) -> Self {
        let mut reason = error.to_string();
        let mut source = error.source();
        while let Some(cause) = source {
            reason.push_str(": ");
            reason.push_str(&cause.to_string());
            source = cause.source();
        }
        Self::new(reason)
    }
}

/// rustls with ring, the platform's root certificates, and the extra CA when given (for egress
/// that inspects TLS, or a private Graph stand-in).
fn tls_config(extra_ca: Option<&PathBuf>) -> Result<ClientConfig, ClientError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let extra_roots = match extra_ca {
        None => Vec::new(),
        Some(path) => read_ca_certificates(path)?,
    };
    let verifier =
        rustls_platform_verifier::Verifier::new_with_extra_roots(extra_roots, provider.clone())?;
    Ok(ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth())
}

/// The certificates of an extra CA file. Read at start-up (and already by the settings' check,
/// before the runtime started), bounded in size, so that a wrong path (a device) fails rather
/// than fill memory.
pub(crate) fn read_ca_certificates(
    path: &std::path::Path,
) -> Result<Vec<CertificateDer<'static>>, ClientError> {
    CertificateDer::pem_slice_iter(&read_to_limit(path, MAX_PEM_BYTES)?)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| ClientError::CaFile {
            path: path.to_path_buf(),
            source,
        })
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

#[cfg(test)]
mod tests {
    use super::*;

    fn proxy(value: &str) -> ProxyEnv {
        ProxyEnv {
            proxy: Some(("HTTPS_PROXY", value.to_owned())),
            no_proxy: None,
        }
    }

    #[test]
    fn the_proxy_settings_never_show_the_proxys_password() {
        let shown = format!("{:?}", proxy("http://user:s3cret@proxy.example:3128"));
        assert!(shown.contains("HTTPS_PROXY=proxy.example:3128"), "{shown}");
        assert!(!shown.contains("s3cret"), "{shown}");
        let shown = format!("{:?}", proxy("http://user:s3cret@proxy example"));
        assert!(!shown.contains("s3cret"), "{shown}");
    }

    #[test]
    fn only_an_http_proxy_or_a_bare_address_is_taken() {
        assert!(
            proxy("http://proxy.example:3128")
                .matcher()
                .unwrap()
                .is_some()
        );
        assert!(proxy("proxy.example:3128").matcher().unwrap().is_some());
        assert!(ProxyEnv::default().matcher().unwrap().is_none());
        for refused in [
            "https://p:1",
            "socks5h://p:1",
            "ftp://p:1",
            "/p",
            "http://p q",
        ] {
            assert!(proxy(refused).matcher().is_err(), "{refused}");
        }
    }
}
