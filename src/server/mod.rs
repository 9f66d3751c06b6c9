//! Serves the gRPC API and the admin listener on listeners bound by the caller, and drains them
//! on shutdown: health turns NOT_SERVING, the API listener closes, calls in flight get the grace
//! period to finish, and the ones still waiting for Graph then end with UNAVAILABLE. Connections
//! with no call in flight do not hold the drain, and a second signal ends the process at once.

use std::{future::Future, io, net::SocketAddr, sync::Arc, time::Duration};

mod admin;
mod admission;
mod args;
mod conn;
mod handshake;
mod listen;
mod metrics;
mod slots;
mod streams;
mod tls;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::service::Routes;
use tonic_health::{ServingStatus, server::HealthReporter};

pub use self::{
    admin::Readiness,
    args::{LimitsArgs, ListenArgs},
    conn::MAX_CONCURRENT_STREAMS,
    listen::{ApiListener, ListenAddr, ListenAddrError, SOCKET_MODE},
    metrics::{ConnectionClosed, Listener, ServerMetrics},
    streams::MAX_SERVICE_STREAMS,
    tls::{POLL_INTERVAL as TLS_POLL_INTERVAL, TlsError, TlsFiles},
};
use self::{
    admission::Admitted,
    conn::{Serving, Stops, serve_connections},
    handshake::Protocols,
    streams::StreamCap,
    tls::TlsConfig,
};

use crate::{
    credentials::GraphCredentials,
    entra::{self, ExchangeMetrics, SetupError},
    graph::{self, GraphClient, GraphClientError, GraphMetrics},
    metrics::{Metrics, subsystem},
    proto::{FILE_DESCRIPTOR_SET, PrintJobServiceServer},
    service::{CallMetrics, CallPolicy, PrintJobGateway},
};

/// The largest request message accepted, in bytes. A CancelRequest with two IDs of the longest
/// allowed length is well under 1 KiB; anything far larger is not a CancelRequest.
pub const MAX_REQUEST_BYTES: usize = 4 * 1024;
/// The default of `--idle-connection-timeout`: far above the gaps between a working client's
/// calls, so that only connections nobody uses are closed. A caller that calls less often pays
/// one handshake (a round trip, and TLS when on) on its next call; gRPC clients reconnect on
/// their own after a GOAWAY.
pub const IDLE_CONNECTION_TIMEOUT: Duration = Duration::from_secs(5 * 60);
/// How long a Cancel call's request message may take to arrive after its headers. Every client
/// sends the message (about 100 bytes) right behind the headers, within a round trip; a stream
/// that sends only headers would otherwise hold a place under `--max-in-flight` for its whole
/// deadline.
pub const MESSAGE_WAIT: Duration = Duration::from_secs(2);
/// After the grace period has ended the calls still in flight, how long their answers may take
/// to be written before the process exits anyway.
const FLUSH_AFTER_ABORT: Duration = Duration::from_secs(1);
/// How often a drain checks whether calls are still in flight. Polled rather than notified:
/// it runs only while shutting down, and costs nothing on the call path.
const DRAIN_POLL: Duration = Duration::from_millis(10);

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
    /// The most connections open at once on each listener.
    pub max_connections: usize,
    /// How long a new connection may take to finish TLS and send the HTTP/2 preface.
    pub handshake_timeout: Duration,
    /// How long a connection may stay without an open stream before it is closed, whether or
    /// not its client sends PINGs.
    pub idle_connection_timeout: Duration,
    /// How long a Cancel call's request message may take to arrive after its headers.
    pub message_wait: Duration,
    /// How calls are bounded: deadlines, retries and calls in flight.
    pub calls: CallPolicy,
    /// How Graph is reached.
    pub graph: graph::Settings,
    /// Which token goes to Graph: the caller's, or one exchanged on behalf of its user.
    pub token_exchange: entra::Settings,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            listen: ListenAddr::Tcp(([127, 0, 0, 1], 50051).into()),
            admin_listen: ([0, 0, 0, 0], 9090).into(),
            tls: None,
            // As long as the longest call (`CallPolicy`'s 30 s), so that every call in flight
            // can finish.
            shutdown_grace: Duration::from_secs(30),
            max_connections: 512,
            handshake_timeout: Duration::from_secs(10),
            idle_connection_timeout: IDLE_CONNECTION_TIMEOUT,
            message_wait: MESSAGE_WAIT,
            calls: CallPolicy::default(),
            graph: graph::Settings::default(),
            token_exchange: entra::Settings::default(),
        }
    }
}

// === impl Settings ===

impl Settings {
    /// What is allowed but probably a mistake, for the logs at start-up.
    pub fn warnings(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        if let ListenAddr::Tcp(addr) = &self.listen
            && !addr.ip().is_loopback()
            && self.tls.is_none()
        {
            warnings.push(format!(
                "the gRPC API listens on {addr} without TLS: bearer tokens would cross the network \
                 unencrypted; set --tls-cert and --tls-key, or listen on loopback or a Unix socket"
            ));
        }
        if self.shutdown_grace < self.calls.deadlines.max {
            warnings.push(format!(
                "--shutdown-grace ({}) is shorter than --max-timeout ({}): calls still in flight \
                 when it ends are cut off with UNAVAILABLE",
                humantime::format_duration(self.shutdown_grace),
                humantime::format_duration(self.calls.deadlines.max),
            ));
        }
        warnings
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
    /// The on-behalf-of token exchange cannot start.
    #[error("cannot set up the on-behalf-of token exchange")]
    TokenExchange(#[from] SetupError),
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

/// Runs a step of start-up unless `shutdown` completes first (`None` then).
async fn until_stopped<T>(
    shutdown: &mut std::pin::Pin<&mut impl Future<Output = ()>>,
    step: impl Future<Output = T>,
) -> Option<T> {
    tokio::select! {
        biased;
        () = shutdown.as_mut() => None,
        done = step => Some(done),
    }
}

/// Says that a signal stopped the gateway before it served; the process then exits 0, as after
/// a drain, without waiting for the start-up step it interrupted.
fn stopped_during_start_up() -> Result<(), ServeError> {
    tracing::info!("stopped during start-up, before serving");
    Ok(())
}

/// Serves until `shutdown` completes, then drains within `settings.shutdown_grace` and returns.
/// A `shutdown` that completes during start-up ends it at once.
pub async fn serve(
    settings: Settings,
    listeners: Listeners,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    for warning in settings.warnings() {
        tracing::warn!("{warning}");
    }
    // Each subsystem registers its own metrics, under a sub-registry of the gateway's.
    let (metrics, (call_metrics, server_metrics, graph_metrics, exchange_metrics)) =
        Metrics::with_subsystem(|registry| {
            (
                CallMetrics::register(subsystem(registry)),
                ServerMetrics::register(subsystem(registry)),
                GraphMetrics::register(subsystem(registry)),
                ExchangeMetrics::register(subsystem(registry)),
            )
        });
    call_metrics.set_in_flight_limit(settings.calls.max_in_flight);
    server_metrics.set_connections_limit(settings.max_connections);
    let graph = GraphClient::new(&settings.graph, graph_metrics)?;
    let abort_calls = CancellationToken::new();
    // Start-up answers SIGTERM and SIGINT at every step that may wait: reading a credential or a
    // certificate from a hung volume, or a FIFO, must not make the process ignore them.
    let mut shutdown = std::pin::pin!(shutdown);
    let credentials = GraphCredentials::new(
        &settings.token_exchange,
        &settings.graph,
        settings.calls.retry,
        &exchange_metrics,
    );
    let credentials = match until_stopped(&mut shutdown, credentials).await {
        Some(credentials) => credentials?,
        None => return stopped_during_start_up(),
    };
    let gateway = Arc::new(PrintJobGateway::new(
        graph,
        credentials,
        call_metrics,
        settings.calls,
        abort_calls.clone(),
    ));
    let (reporter, health_service) = tonic_health::server::health_reporter();
    let health = Health {
        reporter,
        readiness: Readiness::default(),
        metrics: server_metrics.clone(),
    };
    health.set(false).await;

    let reflection_v1 = reflection(API_DESCRIPTORS).build_v1()?;
    let reflection_v1alpha = reflection(API_DESCRIPTORS).build_v1alpha()?;

    // Stops the certificate reloader when `serve` returns, however it returns.
    let stop_reloading = CancellationToken::new();
    let _stop_reloading = stop_reloading.clone().drop_guard();
    let tls = match settings.tls.clone() {
        Some(files) => {
            let loading = TlsConfig::load_and_watch(files, server_metrics.clone(), stop_reloading);
            match until_stopped(&mut shutdown, loading).await {
                Some(loaded) => Some(loaded?),
                None => return stopped_during_start_up(),
            }
        }
        None => None,
    };
    let grpc_addr = listeners
        .grpc
        .local_addr()
        .unwrap_or_else(|_| settings.listen.clone());
    let admin_addr = listeners
        .admin
        .local_addr()
        .unwrap_or(settings.admin_listen);
    let api_streams = StreamCap::new(&server_metrics, Listener::Api);
    let grpc_routes = Routes::new(api_streams.wrap(health_service.clone()))
        .add_service(api_streams.wrap(reflection_v1))
        .add_service(api_streams.wrap(reflection_v1alpha))
        .add_service(Admitted::new(
            PrintJobServiceServer::from_arc(gateway.clone())
                .max_decoding_message_size(MAX_REQUEST_BYTES),
            gateway.clone(),
            settings.calls.max_in_flight,
            MAX_REQUEST_BYTES,
            settings.message_wait,
        ));
    let admin_streams = StreamCap::new(&server_metrics, Listener::Admin);
    let admin_routes = Routes::new(admin_streams.wrap(health_service))
        .add_service(admin_streams.wrap(reflection(ADMIN_DESCRIPTORS).build_v1()?))
        .add_service(admin_streams.wrap(reflection(ADMIN_DESCRIPTORS).build_v1alpha()?));

    let tls_enabled = tls.is_some();
    let serving = |listener, protocols, tls| Serving {
        listener,
        protocols,
        tls,
        max_connections: settings.max_connections,
        handshake_timeout: settings.handshake_timeout,
        idle_timeout: settings.idle_connection_timeout,
        metrics: server_metrics.clone(),
    };
    let (api_stops, api_done) = (Stops::default(), CancellationToken::new());
    let mut grpc = tokio::spawn(serve_connections(
        listeners.grpc,
        grpc_routes.into_axum_router(),
        serving(Listener::Api, Protocols::Http2, tls),
        api_stops.clone(),
        api_done.clone().drop_guard(),
    ));
    let (admin_stops, admin_done) = (Stops::default(), CancellationToken::new());
    let mut admin = tokio::spawn(serve_connections(
        listeners.admin.into(),
        admin::router(admin_routes, metrics.clone(), health.readiness.clone()),
        serving(Listener::Admin, Protocols::Http1AndHttp2, None),
        admin_stops.clone(),
        admin_done.clone().drop_guard(),
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
    api_stops.drain.cancel();
    // The drain waits for calls, not for connections: an idle connection whose client does not
    // answer GOAWAY, or a health Watch, must not hold it.
    let calls_answered = async {
        tokio::select! {
            () = api_done.cancelled() => {}
            () = calls_finished(&gateway) => {}
        }
    };
    if tokio::time::timeout(settings.shutdown_grace, calls_answered)
        .await
        .is_err()
    {
        tracing::warn!("grace period over: ending the calls still in flight with UNAVAILABLE");
        abort_calls.cancel();
        let _ = tokio::time::timeout(FLUSH_AFTER_ABORT, calls_finished(&gateway)).await;
    }
    // Every call is answered: the connections get a moment to write the last answers and close
    // (a client acknowledges GOAWAY within a round trip); whatever is still open is then closed.
    let _ = tokio::time::timeout(FLUSH_AFTER_ABORT, api_done.cancelled()).await;
    api_stops.close.cancel();
    admin_stops.drain.cancel();
    let _ = tokio::time::timeout(FLUSH_AFTER_ABORT, admin_done.cancelled()).await;
    admin_stops.close.cancel();
    let _ = grpc.await;
    let _ = admin.await;
    tracing::info!("shut down");
    Ok(())
}

/// Completes when no call is in flight.
async fn calls_finished(gateway: &PrintJobGateway) {
    while !gateway.is_idle() {
        tokio::time::sleep(DRAIN_POLL).await;
    }
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
        // While the gateway drains, a second signal means the operator will not wait: exit now,
        // with the shell's code for death by that signal.
        tokio::spawn(async move {
            let (name, number) = tokio::select! {
                _ = received(terminate.as_mut()) => ("SIGTERM", 15),
                _ = received(interrupt.as_mut()) => ("SIGINT", 2),
            };
            tracing::warn!("{name} received again: exiting without waiting for calls in flight");
            std::process::exit(128 + number);
        });
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
    metrics: ServerMetrics,
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
        self.metrics.set_ready(serving);
    }
}

/// The accept loops only end when told to; one that ends early has panicked.
fn server_ended(ended: Result<(), tokio::task::JoinError>) -> Result<(), ServeError> {
    match ended {
        Ok(()) => Ok(()),
        Err(join_error) => std::panic::resume_unwind(join_error.into_panic()),
    }
}
