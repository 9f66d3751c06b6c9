//! The real gateway, served in-process by `printjob_gateway::serve` on listeners bound to
//! `127.0.0.1:0`, and a small builder for Cancel calls.

use std::{net::SocketAddr, time::Duration};

use printjob_gateway::{
    Listeners, Settings,
    graph::{GraphBaseUrl, Resolver},
    proto::{CancelRequest, CancelResponse, PrintJobServiceClient},
    serve,
    server::{ListenAddr, ServeError},
};
use tokio::{sync::oneshot, task::JoinHandle};
use tonic::{
    Response, Status,
    metadata::{MetadataKey, MetadataValue},
    transport::Channel,
};

/// A gateway serving in this process. Dropping it stops it.
pub struct TestGateway {
    /// The gRPC API.
    pub grpc_addr: SocketAddr,
    /// The admin listener.
    pub admin_addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), ServeError>>>,
}

// === impl TestGateway ===

impl TestGateway {
    /// A gateway in front of the Graph at `graph_url`, with default settings.
    pub async fn start(graph_url: &str) -> Self {
        Self::start_with(graph_url, |_| {}).await
    }

    /// A gateway in front of the Graph at `graph_url`, with the default settings changed by
    /// `change`.
    pub async fn start_with(graph_url: &str, change: impl FnOnce(&mut Settings)) -> Self {
        let mut settings = settings(graph_url);
        change(&mut settings);
        Self::start_from(settings).await
    }

    /// A gateway with exactly these settings (whose listeners should be on port 0).
    pub async fn start_from(settings: Settings) -> Self {
        let listeners = Listeners::bind(&settings).await.unwrap();
        let ListenAddr::Tcp(grpc_addr) = listeners.grpc.local_addr().unwrap() else {
            panic!("TestGateway serves the API on TCP");
        };
        let admin_addr = listeners.admin.local_addr().unwrap();
        let (shutdown, signal) = oneshot::channel::<()>();
        let task = tokio::spawn(serve(settings, listeners, async {
            let _ = signal.await;
        }));
        Self {
            grpc_addr,
            admin_addr,
            shutdown: Some(shutdown),
            task: Some(task),
        }
    }

    /// A channel to the gRPC API.
    pub async fn channel(&self) -> Channel {
        connect(self.grpc_addr).await
    }

    /// A channel to the admin listener.
    pub async fn admin_channel(&self) -> Channel {
        connect(self.admin_addr).await
    }

    /// A Cancel call with a valid token and IDs, ready to be changed and sent.
    pub fn call(&self) -> Call {
        Call::to(self.grpc_addr)
    }

    /// Sends the shutdown signal.
    pub fn begin_shutdown(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
    }

    /// Sends the shutdown signal and waits until `serve` has returned.
    pub async fn shut_down(mut self) -> Result<(), ServeError> {
        self.begin_shutdown();
        self.task.take().unwrap().await.unwrap()
    }
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// The default settings, with both listeners on `127.0.0.1:0`, Graph at `graph_url`, and
/// [`loopback_resolver`] in place of the system's.
pub fn settings(graph_url: &str) -> Settings {
    let mut settings = Settings {
        listen: ListenAddr::Tcp(([127, 0, 0, 1], 0).into()),
        admin_listen: ([127, 0, 0, 1], 0).into(),
        ..Settings::default()
    };
    settings.graph.base_url = GraphBaseUrl::parse(graph_url).unwrap();
    settings.graph.resolver = loopback_resolver();
    settings
}

/// A resolver that asks no one and knows no name: every fake is reached by its loopback address,
/// so a name is a mistake, and it fails at once rather than depend on, or wait for, the
/// machine's DNS.
pub fn loopback_resolver() -> Resolver {
    Resolver::from_fn(|host: String| {
        std::future::ready(Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("{host}: no such host (the tests reach every fake by its loopback address)"),
        )))
    })
}

pub async fn connect(addr: SocketAddr) -> Channel {
    Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

/// A Cancel call under construction.
#[derive(Debug, Clone)]
pub struct Call {
    addr: SocketAddr,
    printer_id: String,
    print_job_id: String,
    share_id: String,
    metadata: Vec<(String, String)>,
    timeout: Option<Duration>,
}

// === impl Call ===

impl Call {
    /// A Cancel call to the gateway at `addr`, with a valid token and IDs.
    pub fn to(addr: SocketAddr) -> Self {
        Self {
            addr,
            printer_id: "printer-1".to_owned(),
            print_job_id: "42".to_owned(),
            share_id: String::new(),
            metadata: vec![(
                "authorization".to_owned(),
                format!("Bearer {}", super::TOKEN),
            )],
            timeout: None,
        }
    }

    /// Sets both IDs.
    pub fn ids(mut self, printer_id: &str, print_job_id: &str) -> Self {
        self.printer_id = printer_id.to_owned();
        self.print_job_id = print_job_id.to_owned();
        self
    }

    /// Names the job through a printer share: sets `share_id` and `print_job_id`, and clears
    /// `printer_id`.
    pub fn share(mut self, share_id: &str, print_job_id: &str) -> Self {
        self.printer_id.clear();
        self.share_id = share_id.to_owned();
        self.print_job_id = print_job_id.to_owned();
        self
    }

    /// Sets `share_id` beside whatever `printer_id` is.
    pub fn share_id(mut self, share_id: &str) -> Self {
        self.share_id = share_id.to_owned();
        self
    }

    /// Replaces the `authorization` metadata with `value`, or removes it.
    pub fn authorization(mut self, value: Option<&str>) -> Self {
        self.metadata.retain(|(key, _)| key != "authorization");
        if let Some(value) = value {
            self.metadata
                .push(("authorization".to_owned(), value.to_owned()));
        }
        self
    }

    /// Adds metadata.
    pub fn metadata(mut self, key: &str, value: &str) -> Self {
        self.metadata.push((key.to_owned(), value.to_owned()));
        self
    }

    /// Sends `grpc-timeout`.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Sends the call on a new connection.
    pub async fn send(self) -> Result<Response<CancelResponse>, Status> {
        let channel = connect(self.addr).await;
        self.send_on(channel).await
    }

    /// Sends the call with a plain HTTP/2 client that, unlike tonic's `Channel`, runs no timer of
    /// its own for `grpc-timeout`: whatever status comes back is the gateway's.
    pub async fn send_without_client_timer(self) -> Result<Response<CancelResponse>, Status> {
        let http2 =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .http2_only(true)
                .build_http();
        let origin = format!("http://{}", self.addr).parse().unwrap();
        let mut client = PrintJobServiceClient::with_origin(http2, origin);
        client.cancel(self.into_request()).await
    }

    /// Sends the call on `client`, a plain HTTP/2 client from [`timerless_client`] that, unlike
    /// tonic's `Channel`, neither runs a timer of its own nor resets the call when it expires.
    pub async fn send_timerless_on(
        self,
        client: TimerlessClient,
    ) -> Result<Response<CancelResponse>, Status> {
        let origin = format!("http://{}", self.addr).parse().unwrap();
        PrintJobServiceClient::with_origin(client, origin)
            .cancel(self.into_request())
            .await
    }

    /// Sends the call on `channel`.
    pub async fn send_on(self, channel: Channel) -> Result<Response<CancelResponse>, Status> {
        PrintJobServiceClient::new(channel)
            .cancel(self.into_request())
            .await
    }

    fn into_request(self) -> tonic::Request<CancelRequest> {
        let mut request = tonic::Request::new(CancelRequest {
            printer_id: self.printer_id,
            print_job_id: self.print_job_id,
            share_id: self.share_id,
        });
        for (key, value) in &self.metadata {
            let key = MetadataKey::from_bytes(key.as_bytes()).unwrap();
            let value: MetadataValue<_> = value.parse().unwrap();
            request.metadata_mut().append(key, value);
        }
        if let Some(timeout) = self.timeout {
            request.set_timeout(timeout);
        }
        request
    }
}

/// A plain HTTP/2 client to the gateway, one connection shared by every call sent on it.
pub type TimerlessClient = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    tonic::body::Body,
>;

/// A new [`TimerlessClient`]: each one opens its own connection.
pub fn timerless_client() -> TimerlessClient {
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http()
}
