//! printjob-gateway serves one gRPC method, `graph.print.v1.PrintJobService/Cancel`, and turns
//! every call into the Microsoft Graph REST call that cancels a Universal Print job.
//!
//! # Layout
//!
//! - [`app`]: what the binary runs: the gateway, the simulated Graph, or both (the demo).
//! - [`config`]: every flag, its environment twin and its default; it builds each subsystem's
//!   settings value. Only `main` and `app` use it, and nothing else reads the environment.
//! - [`server`]: binds nothing itself; serves the gRPC API and the admin listener on listeners it
//!   is given, and drains them on shutdown.
//! - [`proto`]: the code generated from `proto/` and the descriptor set served by reflection.
//! - [`service`]: the `PrintJobService` implementation: validates a call at the boundary, makes
//!   the Graph call within the call's deadline, and answers.
//! - [`request`]: the validated domain types a call becomes (`CancelTarget`, `ClientRequestId`,
//!   the deadline).
//! - [`backoff`]: the retry settings and the wait between attempts, shared by Graph and Entra ID.
//! - [`retry`]: which Graph outcomes are tried again, how long to wait (run by the retry loop of
//!   [`egress`]), never past the deadline.
//! - [`auth`]: `BearerToken`, read from the `authorization` metadata; it never prints.
//! - [`credentials`]: which token goes to Graph: the caller's own, or the one the on-behalf-of
//!   exchange gave for it.
//! - [`egress`]: the outbound transport Graph and Entra ID both stand on: the connector (TCP or
//!   the proxy tunnel, rustls, ALPN), the pool, the https-unless-loopback rule, `Retry-After`,
//!   bounded reads of an answer, and the one retry loop.
//! - [`entra`]: the only module that knows Entra ID: the on-behalf-of exchange, the gateway's
//!   client credential, and the cache of exchanged tokens.
//! - [`graph`]: the only module that knows Graph: its URLs, headers and JSON errors.
//! - [`error`]: `CancelError`, every way a call can fail; [`status`] maps it, through the one
//!   HTTP-to-gRPC table, to the `tonic::Status` the caller sees.
//! - [`simulator`]: a simulated Graph cancel endpoint with printers, job states and scripted
//!   answers, for demos and for testing callers without Universal Print.
//! - [`metrics`]: the Prometheus registry that each subsystem registers its own metrics under,
//!   and the scrape.
//! - [`flags`]: what every subsystem's flags share (durations, bounded). Each subsystem declares
//!   its own flags beside its settings; `config` composes them.
//! - [`files`]: reads of the operator's files (TLS, the client credential) off the runtime's
//!   workers, bounded in time and size.
//! - [`telemetry`]: the tracing subscriber, the one place that installs process-wide state.

#![forbid(unsafe_code)]

pub mod app;
pub mod auth;
pub mod backoff;
pub mod config;
pub mod credentials;
pub mod egress;
pub mod entra;
pub mod error;
pub mod files;
pub mod flags;
pub mod graph;
pub mod metrics;
pub mod proto;
pub mod request;
pub mod retry;
pub mod server;
pub mod service;
pub mod simulator;
pub mod status;
pub mod telemetry;

pub use server::{Listeners, Settings, serve};
