//! What the gateway does with callers before any call reaches Graph: its listeners (TCP, TLS, a
//! Unix socket), the connection and stream budgets, message size and time limits, and what it
//! tells tools about itself (health, reflection).

mod connections;
mod discovery;
mod limits;
mod listen;
