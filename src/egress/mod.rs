//! The outbound transport that the Graph client and the Entra ID client both stand on: opening a
//! connection (TCP or the `HTTPS_PROXY` tunnel, rustls, ALPN), the pool of connections to Graph,
//! one request on a connection of its own (Entra ID's rare exchanges), the rule that a token goes
//! only over https (plain http to loopback only), `Retry-After`, bounded reads of an answer, and
//! the one retry loop (`retry.rs`) that both clients' attempts run in.
//! It knows no remote party: `graph/` and `entra/` build on it and never import each other.

mod answer;
mod connect;
mod once;
mod pool;
pub(crate) mod retry;
mod url;

use std::{path::PathBuf, time::Duration};

pub use self::answer::{MAX_MESSAGE_LEN, parse_retry_after, read_bounded};
pub(crate) use self::answer::{bounded_identifier, bounded_message, retry_after};
pub use self::connect::{ClientError, ConnectError, Protocol, ProxyEnv, Resolver};
pub(crate) use self::connect::{Connected, Connector, Negotiated, read_ca_certificates};
pub(crate) use self::once::send_once;
pub use self::pool::{Body, PoolMetrics, ResendReason, SendError};
pub(crate) use self::pool::{Pool, PoolSettings};
pub use self::url::UrlError;
pub(crate) use self::url::{PATH_SEGMENT, parse_base_url};

/// How a connection to a remote party is opened: what Graph's connections and Entra ID's share.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectSettings {
    /// The most time allowed to open a connection, TLS included.
    pub connect_timeout: Duration,
    /// CA certificates (PEM) to trust besides the platform's.
    pub extra_ca: Option<PathBuf>,
    /// The proxy to reach the remote party through, as the environment names it.
    pub proxy: ProxyEnv,
    /// How host names are resolved: the system's resolver unless code hands in another.
    pub resolver: Resolver,
}
