//! Configuration of the pgbackman shell and agent: the TOML file, where the catalog connection string
//! comes from, and libpq-style resolution of connection strings (PG* environment, pgpass).
//!
//! This crate only parses and resolves; it never connects to anything. Environment lookups are
//! injected (`&dyn Fn(&str) -> Option<String>`) so that every default can be tested; the `*_env`
//! and argument-less variants use the real process environment.

mod agent;
mod agent_alerts;
mod conninfo;
mod file;
mod host;
mod http_listen;
mod legacy;
mod nodes;
mod pgpass;
pub mod tls;
mod wal_push;

use std::path::PathBuf;

pub use agent::{AgentSection, EncryptionSection};
pub use agent_alerts::{AlertsSection, SmtpSecurity};
pub use conninfo::{
    Resolved, node_config, node_config_with, redacted, resolve, resolve_conninfo, resolve_env,
    ssl_mode,
};
pub use file::{
    AGENT_CONFIG, CatalogSection, CatalogSource, FileConfig, ShellSection, agent_candidates,
    catalog_conninfo, default_candidates, load, load_agent, load_from, load_with_legacy,
};
pub use host::host_fqdn;
pub use http_listen::http_listen_exposure;
pub use legacy::{LegacyConfig, legacy_candidates, parse_legacy};
pub use nodes::{Limit, Limits, NodeTimeouts, NodesSection};
pub use pgpass::{PgpassStatus, pgpass_status};
pub use tls::{ConnConfig, RootCert, TlsSettings};
pub use wal_push::{
    PushCredential, WAL_PUSH_CONFIG, WalPushClient, WalPushSection, wal_push_exposure,
};

/// An injected environment lookup: `std::env::var(key).ok()` in production, a map in tests.
pub type Env<'a> = &'a dyn Fn(&str) -> Option<String>;

/// The first existing PgBackMan 1.x file of `candidates`, parsed (a file that exists and cannot
/// be read is an error, as for the TOML files).
pub fn find_legacy(candidates: &[PathBuf]) -> Result<Option<LegacyConfig>, ConfigError> {
    for p in candidates {
        match std::fs::read_to_string(p) {
            Ok(t) => return parse_legacy(p, &t).map(Some),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(err) => {
                return Err(ConfigError::Read {
                    path: p.clone(),
                    err,
                });
            }
        }
    }
    Ok(None)
}

/// The real process environment, as an [`Env`].
pub fn real_env(key: &str) -> Option<String> {
    std::env::var(key).ok()
}

/// Every error names the file, key or variable at fault and says what to do about it.
/// None of them ever contains a password or a whole connection string (which may hold one).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {} (given with --config) does not exist: check the path, or omit --config to use ~/.config/pgbackman/pgbackman.toml or /etc/pgbackman/pgbackman.toml", path.display())]
    Missing { path: PathBuf },
    #[error("cannot read config file {}: {err}; check that it is a file readable by this user", path.display())]
    Read { path: PathBuf, err: std::io::Error },
    #[error("config file {}: {message}; edit the file to fix it", path.display())]
    Parse { path: PathBuf, message: String },
    #[error("config file {}: {key} = {value:?} is invalid: {hint}", path.display())]
    Value {
        path: PathBuf,
        key: &'static str,
        value: String,
        hint: &'static str,
    },
    #[error(
        "no catalog configured: pass --catalog CONNINFO, set PGBACKMAN_CATALOG, or write [catalog] conninfo in ~/.config/pgbackman/pgbackman.toml (or run `pgbackman quickstart`)"
    )]
    NoCatalog,
    #[error(
        "invalid connection string: {reason}; write libpq key=value pairs (host=db1 port=5432 dbname=pgbackman user=pgbackman) or a postgresql://user@host:port/dbname URI"
    )]
    Conninfo { reason: String },
    #[error("environment variable {key}={value:?} is invalid: {hint}; fix or unset it")]
    Env {
        key: &'static str,
        value: String,
        hint: String,
    },
    #[error(
        "invalid sslmode {value:?} in {origin}: use disable, allow, prefer, require, verify-ca or verify-full"
    )]
    SslMode { value: String, origin: String },
    #[error("{0}")]
    Invalid(String),
}
