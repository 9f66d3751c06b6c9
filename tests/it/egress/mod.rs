//! What the gateway does on its way to Graph: the transport (TLS, ALPN, the proxy tunnel), the
//! pool of connections, Graph breaking HTTP, retries and the call's deadline.

mod deadlines;
mod faults;
mod pool;
mod retries;
mod transport;
