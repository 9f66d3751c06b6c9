//! The server's metrics: connections open and closed on each listener, health and reflection
//! streams refused, readiness, the connection cap, and the serving certificate. Registered under
//! a sub-registry of the gateway's (`metrics`), with the label values that only the server sets.

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

use crate::metrics::{InFlight, label_values, register, register_seconds, start_at_zero};

label_values! {
    /// Which listener a connection came to.
    pub enum Listener {
        /// The gRPC API.
        Api => "api",
        /// The admin listener.
        Admin => "admin",
    }
}

label_values! {
    /// Why the gateway closed a connection: before it was served, or because of a limit.
    pub enum ConnectionClosed {
        /// The listener was at `--max-connections`: the new connection, or an older one that made
        /// room for it (still in its handshake, or idle the longest).
        Limit => "limit",
        /// TLS and the HTTP/2 preface did not complete within `--handshake-timeout`.
        HandshakeTimeout => "handshake_timeout",
        /// TLS failed, or the client did not speak HTTP/2.
        HandshakeFailed => "handshake_failed",
        /// A served connection had no stream open for `--idle-connection-timeout`.
        IdleTimeout => "idle_timeout",
    }
}

/// The server's metrics. Each field is a handle on what a scrape reads (an `Arc` inside); they
/// are cloned only at start-up: a listener's connections share one copy, and its stream caps
/// hold only their count of refusals.
#[derive(Debug, Clone)]
pub struct ServerMetrics {
    connections_open: Family<ListenerLabels, Gauge>,
    connections_closed: Family<ClosedLabels, Counter>,
    streams_refused: Family<ListenerLabels, Counter>,
    ready: Gauge,
    connections_limit: Family<ListenerLabels, Gauge>,
    tls_certificate_expiry: Family<ListenerLabels, Gauge>,
    tls_reloads: Family<ReloadLabels, Counter>,
    tls_last_reload_successful: Family<ListenerLabels, Gauge>,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReloadLabels {
    listener: Listener,
    outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ListenerLabels {
    listener: Listener,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClosedLabels {
    listener: Listener,
    reason: ConnectionClosed,
}

// === impl ServerMetrics ===

impl ServerMetrics {
    /// Registers the server's metrics in `registry` (the gateway's sub-registry for the server).
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            connections_open: register(
                registry,
                "connections_open",
                "Connections open now, by listener",
                Family::default(),
            ),
            connections_closed: register(
                registry,
                "connections_closed",
                "Connections the gateway closed, by listener and reason (limit: --max-connections, a new one or one that made room; handshake_timeout, handshake_failed; idle_timeout: --idle-connection-timeout)",
                Family::default(),
            ),
            streams_refused: register(
                registry,
                "service_streams_refused",
                "Health and reflection streams refused with RESOURCE_EXHAUSTED at a cap (per listener or per connection)",
                Family::default(),
            ),
            ready: register(
                registry,
                "ready",
                "1 while the gateway takes calls (what /readyz and gRPC health report), 0 while it starts or drains",
                Gauge::default(),
            ),
            connections_limit: register(
                registry,
                "connections_limit",
                "The most connections open at once on each listener (--max-connections)",
                Family::default(),
            ),
            tls_certificate_expiry: register_seconds(
                registry,
                "tls_certificate_expiry_timestamp",
                "When the serving certificate in use expires (its notAfter), as Unix time, by listener",
                Family::default(),
            ),
            tls_reloads: register(
                registry,
                "tls_reloads",
                "Reloads of the TLS files after they changed, by listener and outcome (loaded, failed)",
                Family::default(),
            ),
            tls_last_reload_successful: register(
                registry,
                "tls_last_reload_successful",
                "0 while the TLS files on disk do not load and an older certificate is in use, else 1",
                Family::default(),
            ),
        };
        let listeners = Listener::ALL
            .iter()
            .map(|&listener| ListenerLabels { listener });
        start_at_zero(&metrics.streams_refused, listeners.clone());
        start_at_zero(&metrics.connections_open, listeners);
        for &listener in Listener::ALL {
            start_at_zero(
                &metrics.connections_closed,
                [
                    ConnectionClosed::Limit,
                    ConnectionClosed::HandshakeTimeout,
                    ConnectionClosed::HandshakeFailed,
                ]
                .map(|reason| ClosedLabels { listener, reason }),
            );
        }
        metrics
    }

    /// Sets whether the gateway takes calls.
    pub fn set_ready(&self, ready: bool) {
        self.ready.set(i64::from(ready));
    }

    /// Sets the limit an operator's alerts compare the connections with: `--max-connections`
    /// (the same on each listener).
    pub fn set_connections_limit(&self, max_connections: usize) {
        for &listener in Listener::ALL {
            self.connections_limit
                .get_or_create(&ListenerLabels { listener })
                .set(i64::try_from(max_connections).unwrap_or(i64::MAX));
        }
    }

    /// Records the serving certificate now in use on `listener`: when it expires, as seconds
    /// since the Unix epoch.
    pub fn tls_certificate_loaded(&self, listener: Listener, not_after: i64) {
        self.tls_certificate_expiry
            .get_or_create(&ListenerLabels { listener })
            .set(not_after);
        self.tls_last_reload_successful
            .get_or_create(&ListenerLabels { listener })
            .set(1);
    }

    /// Counts a reload of the TLS files after they changed; a failed one leaves the certificate
    /// in use (and its expiry) as it was.
    pub fn tls_reloaded(&self, listener: Listener, loaded: bool) {
        let outcome = if loaded { "loaded" } else { "failed" };
        self.tls_reloads
            .get_or_create(&ReloadLabels { listener, outcome })
            .inc();
        self.tls_last_reload_successful
            .get_or_create(&ListenerLabels { listener })
            .set(i64::from(loaded));
    }

    /// Counts a connection open until the returned guard is dropped.
    pub fn connection_open(&self, listener: Listener) -> InFlight {
        InFlight::count(
            self.connections_open
                .get_or_create(&ListenerLabels { listener })
                .clone(),
        )
    }

    /// Counts a connection closed before it was served.
    pub fn connection_closed(&self, listener: Listener, reason: ConnectionClosed) {
        self.connections_closed
            .get_or_create(&ClosedLabels { listener, reason })
            .inc();
    }

    /// The count of health and reflection streams refused at `listener`'s caps: its stream cap
    /// holds it, so that a health or reflection stream clones no more than that.
    pub fn streams_refused(&self, listener: Listener) -> Counter {
        self.streams_refused
            .get_or_create(&ListenerLabels { listener })
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{Metrics, subsystem};

    #[test]
    fn series_of_fixed_label_sets_start_at_zero_and_names_keep_their_prefix() {
        let (metrics, server) =
            Metrics::with_subsystem(|registry| ServerMetrics::register(subsystem(registry)));
        let text = metrics.encode_prometheus_text();
        for expected in [
            r#"printjob_gateway_service_streams_refused_total{listener="admin"} 0"#,
            r#"printjob_gateway_connections_closed_total{listener="api",reason="limit"} 0"#,
            r#"printjob_gateway_connections_open{listener="api"} 0"#,
        ] {
            assert!(text.contains(expected), "{expected} in\n{text}");
        }
        server.set_ready(true);
        server.set_connections_limit(512);
        server.tls_certificate_loaded(Listener::Api, 1_893_542_400);
        server.tls_reloaded(Listener::Api, false);
        let text = metrics.encode();
        for expected in [
            "printjob_gateway_ready 1",
            r#"printjob_gateway_connections_limit{listener="admin"} 512"#,
            r#"printjob_gateway_tls_certificate_expiry_timestamp_seconds{listener="api"} 1893542400"#,
            r#"printjob_gateway_tls_reloads_total{listener="api",outcome="failed"} 1"#,
            r#"printjob_gateway_tls_last_reload_successful{listener="api"} 0"#,
        ] {
            assert!(text.contains(expected), "{expected} in\n{text}");
        }
    }
}
