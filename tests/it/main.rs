//! The one integration test binary: the real gateway against fake Graph servers on loopback.

mod support;

mod architecture;
mod auth;
mod binary;
mod cancel;
mod deadlines;
mod discovery;
mod egress;
mod egress_pool;
mod entra;
mod faults;
mod idempotent;
mod ids;
mod ingress;
mod limits;
mod listen;
mod obo;
mod obo_secrets;
mod observability;
mod properties;
mod retries;
mod shutdown;
mod simulator;
mod soak;
mod status_table;
