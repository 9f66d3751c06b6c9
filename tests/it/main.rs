//! The one integration test binary: the real gateway against fake Graph servers on loopback.

// A test fails by panicking, and its unwraps say where; Cargo.toml's [lints] keeps them out of
// the gateway's own code.
#![allow(clippy::unwrap_used)]

mod support;

mod architecture;
mod docs;
mod egress;
mod ingress;
mod lifecycle;
mod names;
mod observability;
mod simulator;
mod soak;
mod status_mapping;
mod throttle;
mod token_exchange;
