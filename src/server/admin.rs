//! The admin listener's plain-HTTP routes, beside gRPC health and reflection: `/metrics` for
//! Prometheus, and `/healthz` and `/readyz` for probes and load balancers that do not speak gRPC.
//! Readiness never depends on Graph: a Graph outage must not pull every pod out of rotation.

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

use axum::{http::StatusCode, response::IntoResponse, routing::get};
use tonic::service::Routes;

use crate::metrics::Metrics;

/// The content type of the OpenMetrics text format that prometheus-client writes.
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
const PROMETHEUS_TEXT: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Whether the gateway accepts new calls: true once it serves, false while it drains.
#[derive(Debug, Clone, Default)]
pub struct Readiness(Arc<AtomicBool>);

// === impl Readiness ===

impl Readiness {
    /// Marks the gateway ready or not.
    pub fn set(&self, ready: bool) {
        self.0.store(ready, Ordering::Release);
    }

    /// Whether the gateway is ready.
    pub fn is_ready(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// The admin router: the given gRPC routes plus `/metrics`, `/healthz` and `/readyz`.
pub(crate) fn router(grpc: Routes, metrics: Metrics, readiness: Readiness) -> axum::Router {
    grpc.into_axum_router()
        .route(
            "/metrics",
            get(move |headers: axum::http::HeaderMap| {
                // Content negotiation as Prometheus' own client libraries do it: OpenMetrics
                // for a scraper that asks for it (Prometheus does), else the Prometheus text
                // format, which older scrapers and `promtool check metrics` read.
                let openmetrics = headers
                    .get_all(axum::http::header::ACCEPT)
                    .iter()
                    .filter_map(|value| value.to_str().ok())
                    .any(|value| value.contains("application/openmetrics-text"));
                let answer = if openmetrics {
                    (OPENMETRICS, metrics.encode())
                } else {
                    (PROMETHEUS_TEXT, metrics.encode_prometheus_text())
                };
                async move { ([(axum::http::header::CONTENT_TYPE, answer.0)], answer.1) }
            }),
        )
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(move || {
                let ready = readiness.is_ready();
                async move {
                    if ready {
                        (StatusCode::OK, "ready\n").into_response()
                    } else {
                        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n").into_response()
                    }
                }
            }),
        )
}
