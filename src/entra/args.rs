//! The token exchange's flags: whether callers' tokens are exchanged on behalf of their users, and
//! the app registration that does it.

use std::{path::PathBuf, time::Duration};

use clap::{Args, error::ErrorKind};

use super::{
    CredentialSource, DEFAULT_EXCHANGE_RATE, EntraAuthority, PUBLIC_AUTHORITY, Settings,
    TokenExchange,
};

/// Which token goes to Graph, and the app registration of the on-behalf-of exchange.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Token exchange")]
pub struct TokenExchangeArgs {
    /// Which token goes to Graph: none (the caller's own token, unchanged: callers send a Graph
    /// token) or obo (the on-behalf-of exchange: callers send a token for their own API, and the
    /// gateway exchanges it at Entra ID for a Graph token, with the app registration below).
    #[arg(long, env = "PRINTJOB_GATEWAY_TOKEN_EXCHANGE", value_enum, default_value_t = TokenExchange::None)]
    pub token_exchange: TokenExchange,

    /// Entra ID's authority for the on-behalf-of exchange; another host for national clouds,
    /// such as https://login.microsoftonline.us. Must be https, except for loopback hosts.
    #[arg(
        long,
        env = "AZURE_AUTHORITY_HOST",
        default_value = PUBLIC_AUTHORITY,
        value_name = "URL"
    )]
    pub entra_authority: EntraAuthority,

    /// Tenant (directory) ID or domain of the app registration, for the on-behalf-of exchange.
    #[arg(long, env = "AZURE_TENANT_ID")]
    pub tenant_id: Option<String>,

    /// Application (client) ID of the app registration that callers' tokens are issued for, for
    /// the on-behalf-of exchange.
    #[arg(long, env = "AZURE_CLIENT_ID")]
    pub client_id: Option<String>,

    /// File holding the app's client secret (a trailing newline is ignored). One of the three
    /// client credentials of the on-behalf-of exchange.
    #[arg(long, env = "PRINTJOB_GATEWAY_CLIENT_SECRET_FILE", value_name = "FILE")]
    pub client_secret_file: Option<PathBuf>,

    /// PEM file with the app's certificate chain and its RSA private key, which signs a
    /// client_assertion (JWT with an x5t#S256 header) for each exchange. One of the three client
    /// credentials of the on-behalf-of exchange.
    #[arg(
        long,
        env = "PRINTJOB_GATEWAY_CLIENT_CERTIFICATE_FILE",
        value_name = "FILE"
    )]
    pub client_certificate_file: Option<PathBuf>,

    /// File holding a federated token (Azure workload identity: a Kubernetes service-account
    /// token) sent as the client_assertion; read again at each exchange, since it rotates. One
    /// of the three client credentials of the on-behalf-of exchange.
    #[arg(long, env = "AZURE_FEDERATED_TOKEN_FILE", value_name = "FILE")]
    pub federated_token_file: Option<PathBuf>,

    /// Scope the on-behalf-of exchange asks for [default: https://<host of --graph-url>/.default,
    /// so that national clouds get their own Graph].
    #[arg(long, env = "PRINTJOB_GATEWAY_GRAPH_SCOPE")]
    pub graph_scope: Option<String>,

    /// On-behalf-of exchanges per second, on average, with bursts of five seconds' worth; past
    /// it, calls that need a new exchange fail fast with RESOURCE_EXHAUSTED
    /// (TOKEN_EXCHANGE_RATE_LIMITED) and a RetryInfo. Cached tokens are not counted.
    #[arg(long, env = "PRINTJOB_GATEWAY_TOKEN_EXCHANGE_RATE", default_value_t = DEFAULT_EXCHANGE_RATE, value_parser = clap::value_parser!(u32).range(1..=100_000), value_name = "PER_SECOND")]
    pub token_exchange_rate: u32,
}

// === impl TokenExchangeArgs ===

impl TokenExchangeArgs {
    /// With `--token-exchange obo`: the tenant, the client and exactly one client credential.
    /// The error is raw; `config` formats it with the command line's usage.
    pub fn check_on_behalf_of(&self) -> Result<(), clap::Error> {
        let missing = |what: &str| {
            clap::Error::raw(
                ErrorKind::MissingRequiredArgument,
                format!("--token-exchange obo needs {what}"),
            )
        };
        if self.tenant_id.as_deref().is_none_or(str::is_empty) {
            return Err(missing("--tenant-id (AZURE_TENANT_ID)"));
        }
        if self.client_id.as_deref().is_none_or(str::is_empty) {
            return Err(missing("--client-id (AZURE_CLIENT_ID)"));
        }
        let credentials = [
            ("--client-secret-file", &self.client_secret_file),
            ("--client-certificate-file", &self.client_certificate_file),
            (
                "--federated-token-file (AZURE_FEDERATED_TOKEN_FILE)",
                &self.federated_token_file,
            ),
        ];
        let given: Vec<&str> = credentials
            .iter()
            .filter(|(_, file)| file.is_some())
            .map(|(flag, _)| *flag)
            .collect();
        match given.len() {
            0 => Err(missing(
                "one client credential: --client-secret-file, --client-certificate-file or --federated-token-file (AZURE_FEDERATED_TOKEN_FILE)",
            )),
            1 => Ok(()),
            _ => Err(clap::Error::raw(
                ErrorKind::ArgumentConflict,
                format!(
                    "--token-exchange obo takes exactly one client credential, not {}",
                    given.join(" and ")
                ),
            )),
        }
    }

    /// The token exchange settings, from the flags; an exchange runs for at most
    /// `exchange_timeout` (`--max-timeout`), whoever waits for it.
    pub fn settings(&self, exchange_timeout: Duration) -> Settings {
        let credential = match (
            &self.client_secret_file,
            &self.client_certificate_file,
            &self.federated_token_file,
        ) {
            (Some(file), _, _) => Some(CredentialSource::SecretFile(file.clone())),
            (_, Some(file), _) => Some(CredentialSource::CertificateFile(file.clone())),
            (_, _, Some(file)) => Some(CredentialSource::FederatedTokenFile(file.clone())),
            _ => None,
        };
        Settings {
            exchange: self.token_exchange,
            authority: self.entra_authority.clone(),
            tenant_id: self.tenant_id.clone(),
            client_id: self.client_id.clone(),
            credential,
            graph_scope: self.graph_scope.clone(),
            exchange_timeout,
            rate: self.token_exchange_rate,
        }
    }
}
