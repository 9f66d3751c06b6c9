//! Which token goes to Graph: the caller's own (pass-through, the default) or the Graph token the
//! on-behalf-of exchange gave for it. The call path asks [`GraphCredentials`] for "the token to
//! send to Graph" and does not know which it got.

use std::borrow::Cow;

use tokio::time::Instant;

use crate::{
    auth::BearerToken,
    backoff::RetryPolicy,
    entra::{self, ExchangeMetrics, OnBehalfOf, SetupError, TokenExchange},
    error::CancelError,
    graph,
    request::ClientRequestId,
};

/// Where the token sent to Graph comes from. Cheap to clone.
#[derive(Debug, Clone)]
pub enum GraphCredentials {
    /// The caller's token, unchanged.
    PassThrough,
    /// A Graph token exchanged for the caller's token, on behalf of its user.
    OnBehalfOf(OnBehalfOf),
}

// === impl GraphCredentials ===

impl GraphCredentials {
    /// The credentials the settings ask for; with the on-behalf-of exchange, its settings are
    /// checked and its client credential loaded now, so that a wrong one fails at start-up.
    pub async fn new(
        settings: &entra::Settings,
        graph: &graph::Settings,
        retry: RetryPolicy,
        metrics: &ExchangeMetrics,
    ) -> Result<Self, SetupError> {
        Ok(match settings.exchange {
            TokenExchange::None => Self::PassThrough,
            TokenExchange::Obo => {
                let connect = graph.connect_settings();
                let exchange = OnBehalfOf::new(
                    settings,
                    &connect,
                    graph.base_url.host(),
                    retry,
                    metrics.clone(),
                );
                Self::OnBehalfOf(exchange.await?)
            }
        })
    }

    /// The token to send to Graph for a call whose caller sent `caller`, obtained by `deadline`;
    /// an exchange sends the call's `client_request_id` to Entra ID.
    pub async fn graph_token<'a>(
        &self,
        caller: &'a BearerToken,
        deadline: Instant,
        client_request_id: &ClientRequestId,
    ) -> Result<Cow<'a, BearerToken>, CancelError> {
        match self {
            Self::PassThrough => Ok(Cow::Borrowed(caller)),
            // Boxed, so that the state of an exchange is not part of every pass-through call.
            Self::OnBehalfOf(exchange) => {
                Box::pin(exchange.graph_token(caller, deadline, client_request_id))
                    .await
                    .map(Cow::Owned)
                    .map_err(CancelError::TokenExchange)
            }
        }
    }

    /// Tells the credentials that Graph refused the token sent for `caller` (HTTP 401), so that
    /// an exchanged token is not used again.
    pub async fn refused_by_graph(&self, caller: &BearerToken) {
        if let Self::OnBehalfOf(exchange) = self {
            exchange.forget(caller).await;
        }
    }
}
