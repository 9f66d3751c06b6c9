//! `CancelError`: every way a Cancel call can fail. [`crate::status`] turns it into the status the
//! caller sees.

use crate::{auth::AuthError, graph::GraphError, request::InvalidField};

/// Why a Cancel call did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum CancelError {
    /// The `authorization` metadata is missing or malformed; Graph was not called.
    #[error(transparent)]
    Unauthenticated(#[from] AuthError),
    /// A request field is invalid; Graph was not called.
    #[error(transparent)]
    InvalidArgument(#[from] InvalidField),
    /// The call's deadline ran out, before Graph was called or while waiting for it.
    #[error("the call's deadline ran out {}", if *.graph_called { "before Graph answered" } else { "before Graph was called" })]
    DeadlineExceeded {
        /// Whether a request to Graph had been started.
        graph_called: bool,
    },
    /// Graph refused the call, or could not be reached.
    #[error(transparent)]
    Graph(#[from] GraphError),
    /// The gateway is shutting down and its grace period ended before Graph answered.
    #[error("the gateway shut down before Graph answered")]
    ShuttingDown,
}
