//! What a caller is answered: the token and IDs checked at the boundary, the call forwarded as
//! Graph documents it, each Graph answer mapped to its gRPC code and rich details, bounded, and the
//! job read that makes Cancel idempotent.

mod auth;
mod bounded;
mod forwarding;
mod graph_contract;
mod idempotent;
mod ids;
mod properties;
mod table;
