//! Serves the gRPC API and the admin listener on listeners bound by the caller, and drains them
//! on shutdown: health turns NOT_SERVING, the API listener closes, calls in flight get the grace
//! period to finish, and the ones still waiting for Graph then end with UNAVAILABLE.

use std::{future::Future, io, net::SocketAddr, time::Duration};

mod admin;
mod conn;
mod listen;
mod tls;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::service::Routes;
use tonic_health::{ServingStatus, server::HealthReporter};

use self::conn::{Protocols, serve_connections};
pub use self::{
    admin::Readiness,
    listen::{ApiListener, ListenAddr, ListenAddrError, SOCKET_MODE},
    tls::{TlsError, TlsFiles},
};

use crate::{
    graph::{self, GraphClient, GraphClientError},
    metrics::Metrics,
    proto::{FILE_DESCRIPTOR_SET, PrintJobServiceServer},
    service::{CallPolicy, PrintJobGateway},
};

/// The largest request message accepted, in bytes. A CancelRequest with two IDs of the longest
/// allowed length is well under 1 KiB; anything far larger is not a CancelRequest.
pub const MAX_REQUEST_BYTES: usize = 4 * 1024;
/// After the grace period has ended the calls still in flight, how long their answers may take
/// to be written before the process exits anyway.
const FLUSH_AFTER_ABORT: Duration = Duration::from_secs(1);

/// Everything [`serve`] needs to know: where it listens, how calls are bounded, and how Graph is
/// reached. Plain values, so that tests build a server without parsing a command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// The gRPC API's address.
    pub listen: ListenAddr,
    /// The admin listener's address.
    pub admin_listen: SocketAddr,
    /// TLS on the gRPC API, when on.
    pub tls: Option<TlsFiles>,
    /// How long calls in flight may take to finish after a shutdown signal.
    pub shutdown_grace: Duration,
    /// How calls are bounded: deadlines, retries and calls in flight.
    pub calls: CallPolicy,
    /// How Graph is reached.
    pub graph: graph::Settings,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            listen: ListenAddr::Tcp(([127, 0, 0, 1], 50051).into()),
            admin_listen: ([0, 0, 0, 0], 9090).into(),
            tls: None,
            shutdown_grace: Duration::from_secs(20),
            calls: CallPolicy::default(),
            graph: graph::Settings::default(),
        }
    }
}

/// The sockets the gateway serves on, bound before [`serve`] so that callers (and tests) know the
/// addresses and no connection is refused in between.
#[derive(Debug)]
pub struct Listeners {
    /// The gRPC API: TCP or a Unix domain socket.
    pub grpc: ApiListener,
    /// The admin listener (gRPC health for probes, and reflection).
    pub admin: TcpListener,
}

/// Why the gateway could not start or stopped serving.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// A listener could not be bound.
    #[error("cannot listen on {addr}")]
    Bind {
        /// The address from the settings.
        addr: ListenAddr,
        /// What the operating system said.
        #[source]
        source: io::Error,
    },
    /// The HTTP client for Graph could not be built.
    #[error(transparent)]
    GraphClient(#[from] GraphClientError),
    /// The TLS certificate, key or client CA is unusable.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// Server reflection could not read the descriptor set.
    #[error("cannot build server reflection")]
    Reflection(#[from] tonic_reflection::server::Error),
}

// === impl Listeners ===

impl Listeners {
    /// Binds the addresses in `settings`.
    pub async fn bind(settings: &Settings) -> Result<Self, ServeError> {
        let failed = |addr: &ListenAddr| {
            let addr = addr.clone();
            move |source| ServeError::Bind { addr, source }
        };
        let grpc = ApiListener::bind(&settings.listen)
            .await
            .map_err(failed(&settings.listen))?;
        let admin_addr = ListenAddr::Tcp(settings.admin_listen);
        let admin = TcpListener::bind(settings.admin_listen)
            .await
            .map_err(failed(&admin_addr))?;
        Ok(Self { grpc, admin })
    }
}

/// Serves until `shutdown` completes, then drains within `settings.shutdown_grace` and returns.
pub async fn serve(
    settings: Settings,
    listeners: Listeners,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    let metrics = Metrics::new();
    let graph = GraphClient::new(&settings.graph, metrics.clone())?;
    let abort_calls = CancellationToken::new();
    let gateway = PrintJobGateway::new(graph, metrics.clone(), settings.calls, abort_calls.clone());
    let (reporter, health_service) = tonic_health::server::health_reporter();
    let health = Health {
        reporter,
        readiness: Readiness::default(),
    };
    health.set(false).await;

    let reflection_v1 = reflection(API_DESCRIPTORS).build_v1()?;
    let reflection_v1alpha = reflection(API_DESCRIPTORS).build_v1alpha()?;

    let tls = settings.tls.as_ref().map(tls::acceptor).transpose()?;
    let grpc_addr = listeners
        .grpc
        .local_addr()
        .unwrap_or_else(|_| settings.listen.clone());
    let admin_addr = listeners
        .admin
        .local_addr()
        .unwrap_or(settings.admin_listen);
    let grpc_routes = Routes::new(health_service.clone())
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(
            PrintJobServiceServer::new(gateway).max_decoding_message_size(MAX_REQUEST_BYTES),
        );
    let admin_routes = Routes::new(health_service)
        .add_service(reflection(ADMIN_DESCRIPTORS).build_v1()?)
        .add_service(reflection(ADMIN_DESCRIPTORS).build_v1alpha()?);

    let stop_accepting = CancellationToken::new();
    let stop_admin = CancellationToken::new();
    let tls_enabled = tls.is_some();
    let mut grpc = tokio::spawn(serve_connections(
        listeners.grpc,
        grpc_routes.into_axum_router(),
        Protocols::Http2,
        tls,
        stop_accepting.clone(),
    ));
    let mut admin = tokio::spawn(serve_connections(
        listeners.admin.into(),
        admin::router(admin_routes, metrics, health.readiness.clone()),
        Protocols::Http1AndHttp2,
        None,
        stop_admin.clone(),
    ));

    health.set(true).await;
    tracing::info!(
        grpc = %grpc_addr,
        admin = %admin_addr,
        tls = tls_enabled,
        graph = %settings.graph.base_url,
        version = env!("CARGO_PKG_VERSION"),
        "printjob-gateway serving"
    );

    tokio::select! {
        () = shutdown => {}
        ended = &mut grpc => return server_ended(ended),
        ended = &mut admin => return server_ended(ended),
    }

    tracing::info!(grace = ?settings.shutdown_grace, "shutting down: draining calls in flight");
    health.set(false).await;
    stop_accepting.cancel();
    if tokio::time::timeout(settings.shutdown_grace, &mut grpc)
        .await
        .is_err()
    {
        tracing::warn!("grace period over: ending the calls still in flight with UNAVAILABLE");
        abort_calls.cancel();
        let _ = tokio::time::timeout(FLUSH_AFTER_ABORT, &mut grpc).await;
    }
    stop_admin.cancel();
    let _ = tokio::time::timeout(FLUSH_AFTER_ABORT, &mut admin).await;
    tracing::info!("shut down");
    Ok(())
}

/// Completes on SIGTERM or SIGINT (Ctrl-C). The handlers are installed when this is called, not
/// when the future is first polled, so that a signal during start-up drains instead of killing
/// the process. Call it inside the runtime.
pub fn shutdown_signal() -> impl Future<Output = ()> + Send + 'static {
    use tokio::signal::unix::{SignalKind, signal};
    let listen = |kind: SignalKind, name: &'static str| {
        signal(kind)
            .map_err(|error| tracing::warn!(%error, "cannot listen for {name}"))
            .ok()
    };
    let mut terminate = listen(SignalKind::terminate(), "SIGTERM");
    let mut interrupt = listen(SignalKind::interrupt(), "SIGINT");
    async move {
        tokio::select! {
            _ = received(terminate.as_mut()) => tracing::info!("SIGTERM received"),
            _ = received(interrupt.as_mut()) => tracing::info!("SIGINT received"),
        }
    }
}

/// The next delivery of `signal`; never, when it could not be listened for.
async fn received(signal: Option<&mut tokio::signal::unix::Signal>) {
    match signal {
        Some(signal) => {
            signal.recv().await;
        }
        None => std::future::pending().await,
    }
}

/// What the admin listener serves: gRPC health and server reflection, both reflection versions
/// included so that tools asking either one see the same list.
const ADMIN_DESCRIPTORS: &[&[u8]] = &[
    tonic_health::pb::FILE_DESCRIPTOR_SET,
    tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
    tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
];
/// What the API listener serves: the admin services plus PrintJobService and the error details.
const API_DESCRIPTORS: &[&[u8]] = &[
    FILE_DESCRIPTOR_SET,
    tonic_health::pb::FILE_DESCRIPTOR_SET,
    tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
    tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
];

/// Server reflection over the given descriptor sets.
fn reflection(descriptor_sets: &[&'static [u8]]) -> tonic_reflection::server::Builder<'static> {
    descriptor_sets
        .iter()
        .fold(
            tonic_reflection::server::Builder::configure(),
            |builder, set| builder.register_encoded_file_descriptor_set(set),
        )
        .include_reflection_service(false)
}

/// Every view of the gateway's health, which always change together: gRPC health for the
/// whole server (`""`) and for the API, and HTTP readiness.
struct Health {
    reporter: HealthReporter,
    readiness: Readiness,
}

impl Health {
    async fn set(&self, serving: bool) {
        let status = if serving {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        let api = <PrintJobServiceServer<PrintJobGateway> as tonic::server::NamedService>::NAME;
        self.reporter.set_service_status("", status).await;
        self.reporter.set_service_status(api, status).await;
        self.readiness.set(serving);
    }
}

/// The accept loops only end when told to; one that ends early has panicked.
fn server_ended(ended: Result<(), tokio::task::JoinError>) -> Result<(), ServeError> {
    match ended {
        Ok(()) => Ok(()),
        Err(join_error) => std::panic::resume_unwind(join_error.into_panic()),
    }
}
