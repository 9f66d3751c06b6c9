//! The one integration test binary: the real gateway against fake Graph servers on loopback.

// A test fails by panicking, and its unwraps say where; Cargo.toml's [lints] keeps them out of
// the gateway's own code.
#![allow(clippy::unwrap_used)]

mod support;

mod architecture;
mod auth;
mod binary;
mod blocking;
mod bounded;
mod cancel;
mod deadlines;
mod demo;
mod discovery;
mod egress;
mod egress_pool;
mod entra;
mod faults;
mod graph_contract;
mod idempotent;
mod ids;
mod ingress;
mod limits;
mod listen;
mod names;
mod obo;
mod obo_guard;
mod obo_secrets;
mod observability;
mod panics;
mod properties;
mod retries;
mod shutdown;
mod simulator;
mod soak;
mod status_table;
mod throttle;
