//! Where the gRPC API listens: a TCP address, or a Unix domain socket that a sidecar shares with
//! its app through an `emptyDir`.

use std::{
    fmt, io,
    net::SocketAddr,
    os::unix::fs::{FileTypeExt, PermissionsExt},
    path::{Path, PathBuf},
    pin::Pin,
};

use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::{TcpListener, UnixListener},
};

/// The permissions of the socket file: read and write for the owner and the group, so that an
/// app container sharing the directory with the same group (Kubernetes `fsGroup`) can connect,
/// and nobody else.
pub const SOCKET_MODE: u32 = 0o660;

/// An address to listen on: `127.0.0.1:50051`, or `unix:/path/to/socket` (also `unix:///path`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddr {
    /// A TCP address.
    Tcp(SocketAddr),
    /// The path of a Unix domain socket.
    Unix(PathBuf),
}

/// Why a listen address was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ListenAddrError {
    /// Neither `host:port` nor `unix:/absolute/path`.
    #[error(
        "expected an address such as 127.0.0.1:50051 or a socket such as unix:/run/printjob-gateway.sock"
    )]
    Invalid,
}

/// A bound listener for the gRPC API.
#[derive(Debug)]
pub enum ApiListener {
    /// A TCP listener.
    Tcp(TcpListener),
    /// A Unix domain socket listener, and its path, removed when the listener is dropped.
    Unix(UnixListener, SocketFile),
}

/// A socket file that is removed when the gateway stops listening.
#[derive(Debug)]
pub struct SocketFile(PathBuf);

/// A connection accepted on either kind of listener.
pub(crate) trait Connection: AsyncRead + AsyncWrite + Unpin + Send + 'static {}

impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Connection for T {}

/// An accepted connection, boxed so that TCP, Unix and TLS connections share one code path.
pub(crate) type BoxedConnection = Pin<Box<dyn Connection>>;

// === impl ListenAddr ===

impl std::str::FromStr for ListenAddr {
    type Err = ListenAddrError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if let Some(path) = text.strip_prefix("unix:") {
            let path = path.strip_prefix("//").unwrap_or(path);
            return if path.starts_with('/') && path.len() > 1 {
                Ok(Self::Unix(PathBuf::from(path)))
            } else {
                Err(ListenAddrError::Invalid)
            };
        }
        text.parse()
            .map(Self::Tcp)
            .map_err(|_| ListenAddrError::Invalid)
    }
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Tcp(addr) => write!(f, "{addr}"),
            Self::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

// === impl ApiListener ===

impl ApiListener {
    /// Binds `addr`. A Unix socket file left behind by a process that is gone is replaced; one
    /// that a live process still listens on is not.
    pub async fn bind(addr: &ListenAddr) -> io::Result<Self> {
        match addr {
            ListenAddr::Tcp(addr) => Ok(Self::Tcp(TcpListener::bind(addr).await?)),
            ListenAddr::Unix(path) => {
                remove_stale_socket(path).await?;
                let listener = UnixListener::bind(path)?;
                let file = SocketFile(path.clone());
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(SOCKET_MODE))?;
                Ok(Self::Unix(listener, file))
            }
        }
    }

    /// The bound address: with a TCP port 0, the port the system chose.
    pub fn local_addr(&self) -> io::Result<ListenAddr> {
        match self {
            Self::Tcp(listener) => listener.local_addr().map(ListenAddr::Tcp),
            Self::Unix(_, file) => Ok(ListenAddr::Unix(file.0.clone())),
        }
    }

    /// Accepts the next connection.
    pub(crate) async fn accept(&self) -> io::Result<BoxedConnection> {
        match self {
            Self::Tcp(listener) => {
                let (stream, _) = listener.accept().await?;
                // Calls are small request/response pairs: sending them at once matters more
                // than coalescing packets.
                let _ = stream.set_nodelay(true);
                Ok(Box::pin(stream))
            }
            Self::Unix(listener, _) => Ok(Box::pin(listener.accept().await?.0)),
        }
    }
}

impl From<TcpListener> for ApiListener {
    fn from(listener: TcpListener) -> Self {
        Self::Tcp(listener)
    }
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Removes a socket file at `path` when no process accepts connections on it any more.
async fn remove_stale_socket(path: &Path) -> io::Result<()> {
    let Ok(metadata) = std::fs::symlink_metadata(path) else {
        return Ok(());
    };
    if !metadata.file_type().is_socket() {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!("{} exists and is not a socket", path.display()),
        ));
    }
    match tokio::net::UnixStream::connect(path).await {
        Ok(_) => Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            format!("another process is listening on {}", path.display()),
        )),
        Err(_) => std::fs::remove_file(path),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_tcp_or_unix_sockets() {
        let cases: &[(&str, Result<ListenAddr, ListenAddrError>)] = &[
            (
                "127.0.0.1:50051",
                Ok(ListenAddr::Tcp("127.0.0.1:50051".parse().unwrap())),
            ),
            ("[::1]:1", Ok(ListenAddr::Tcp("[::1]:1".parse().unwrap()))),
            (
                "unix:/sockets/gw.sock",
                Ok(ListenAddr::Unix("/sockets/gw.sock".into())),
            ),
            (
                "unix:///sockets/gw.sock",
                Ok(ListenAddr::Unix("/sockets/gw.sock".into())),
            ),
            ("unix:relative.sock", Err(ListenAddrError::Invalid)),
            ("unix:", Err(ListenAddrError::Invalid)),
            ("unix:/", Err(ListenAddrError::Invalid)),
            ("localhost:50051", Err(ListenAddrError::Invalid)),
            ("50051", Err(ListenAddrError::Invalid)),
        ];
        for (text, expected) in cases {
            assert_eq!(&text.parse::<ListenAddr>(), expected, "{text}");
        }
        assert_eq!(
            ListenAddr::Unix("/a.sock".into()).to_string(),
            "unix:/a.sock"
        );
    }
}
