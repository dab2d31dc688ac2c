//! TLS settings of a connection, the libpq way. tokio-postgres keeps three sslmodes and no file
//! names, so libpq's six sslmodes and `sslrootcert` / `sslcert` / `sslkey` (with PGSSLROOTCERT,
//! PGSSLCERT, PGSSLKEY and the `~/.postgresql/` defaults) travel next to the
//! `tokio_postgres::Config` in a [`ConnConfig`]. Whether a default file exists is decided when
//! connecting (by `pgbackman_db::tls`), as libpq does: this crate never touches the files.

use std::fmt;
use std::ops::{Deref, DerefMut};
use std::path::{Path, PathBuf};

use tokio_postgres::Config;

use crate::{ConfigError, Env, host};

/// libpq's sslmode (<https://www.postgresql.org/docs/15/libpq-ssl.html>).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    /// Plain first; TLS only if the server refuses the plain connection.
    Allow,
    /// TLS first; plain if the server does not offer TLS or the TLS attempt fails.
    Prefer,
    /// TLS, certificate checked only when a root certificate file exists.
    Require,
    /// TLS, chain checked against the root certificate, host name not checked.
    VerifyCa,
    /// TLS, chain and host name checked.
    VerifyFull,
}

impl SslMode {
    pub const ALL: [SslMode; 6] = [
        SslMode::Disable,
        SslMode::Allow,
        SslMode::Prefer,
        SslMode::Require,
        SslMode::VerifyCa,
        SslMode::VerifyFull,
    ];

    /// libpq's spelling (case-sensitive, as libpq).
    pub fn parse(value: &str) -> Option<SslMode> {
        SslMode::ALL.into_iter().find(|m| m.as_str() == value)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Allow => "allow",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }

    /// Whether the mode always checks the certificate chain (verify-ca, verify-full).
    pub fn verifies(self) -> bool {
        matches!(self, SslMode::VerifyCa | SslMode::VerifyFull)
    }

    /// The closest tokio-postgres mode (what its own `connect` would do); `pgbackman_db::tls`
    /// drives allow and prefer itself.
    pub fn tokio(self) -> tokio_postgres::config::SslMode {
        use tokio_postgres::config::SslMode as T;
        match self {
            SslMode::Disable => T::Disable,
            SslMode::Allow | SslMode::Prefer => T::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => T::Require,
        }
    }

    fn from_tokio(m: tokio_postgres::config::SslMode) -> SslMode {
        use tokio_postgres::config::SslMode as T;
        match m {
            T::Disable => SslMode::Disable,
            T::Require => SslMode::Require,
            _ => SslMode::Prefer,
        }
    }
}

impl fmt::Display for SslMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where trusted root certificates come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootCert {
    /// A PEM file. `given` is false for the default `~/.postgresql/root.crt` (only messages differ:
    /// libpq applies the same rules to both).
    File { path: PathBuf, given: bool },
    /// `sslrootcert=system`: the system's trust store (PostgreSQL 16+ libpq; only with verify-full).
    System,
}

/// The TLS part of a connection: sslmode plus the certificate files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    pub mode: SslMode,
    /// `sslrootcert` / PGSSLROOTCERT, else `~/.postgresql/root.crt`; None when no home directory.
    pub root_cert: Option<RootCert>,
    /// `sslcert` / PGSSLCERT, else `~/.postgresql/postgresql.crt` (used only if it exists).
    pub cert: Option<PathBuf>,
    /// `sslkey` / PGSSLKEY, else `~/.postgresql/postgresql.key` (needed when the cert exists).
    pub key: Option<PathBuf>,
}

impl TlsSettings {
    /// `mode` with no certificate file at all (no root file: require does not verify).
    pub fn without_files(mode: SslMode) -> TlsSettings {
        TlsSettings {
            mode,
            root_cert: None,
            cert: None,
            key: None,
        }
    }
}

/// A connection config: what tokio-postgres keeps, plus the TLS settings it does not. Derefs to
/// the `tokio_postgres::Config`, but connect only through `pgbackman_db::tls`, which honours
/// [`TlsSettings`] (`tls.mode` is the truth: the inner config's ssl_mode is set per attempt).
#[derive(Debug, Clone)]
pub struct ConnConfig {
    pub pg: Config,
    pub tls: TlsSettings,
    /// Deadlines enforced by `pgbackman_db::tls` (set on node connections by
    /// [`crate::NodeTimeouts::apply`]).
    pub limits: crate::Limits,
    /// Why the password file was ignored (libpq's rule: e.g. group or world access), said
    /// again when the server then asks for a password.
    pub pgpass_ignored: Option<String>,
}

impl ConnConfig {
    pub fn new(pg: Config, tls: TlsSettings) -> ConnConfig {
        ConnConfig {
            pg,
            tls,
            limits: crate::Limits::default(),
            pgpass_ignored: None,
        }
    }
}

impl Deref for ConnConfig {
    type Target = Config;
    fn deref(&self) -> &Config {
        &self.pg
    }
}

impl DerefMut for ConnConfig {
    fn deref_mut(&mut self) -> &mut Config {
        &mut self.pg
    }
}

/// A bare tokio-postgres config (tests, tools): its three-valued sslmode and no certificate file.
impl From<Config> for ConnConfig {
    fn from(pg: Config) -> ConnConfig {
        let mode = SslMode::from_tokio(pg.get_ssl_mode());
        ConnConfig::new(pg, TlsSettings::without_files(mode))
    }
}

/// The TLS keys of a conninfo, as written (before the environment and defaults).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct TlsParams {
    pub sslmode: Option<String>,
    pub sslrootcert: Option<String>,
    pub sslcert: Option<String>,
    pub sslkey: Option<String>,
}

/// The conninfo keys tokio-postgres does not know (it rejects them) or cannot keep apart.
pub(crate) const TLS_KEYS: [&str; 4] = ["sslmode", "sslrootcert", "sslcert", "sslkey"];

impl TlsParams {
    pub(crate) fn set(&mut self, key: &str, value: String) {
        match key {
            "sslmode" => self.sslmode = Some(value),
            "sslrootcert" => self.sslrootcert = Some(value),
            "sslcert" => self.sslcert = Some(value),
            "sslkey" => self.sslkey = Some(value),
            _ => {}
        }
    }
}

/// Resolves TLS settings like libpq: each value from the conninfo (`params`), else its PGSSL*
/// variable, else the default (`sslmode` prefer, or verify-full with `sslrootcert=system`; files
/// under `~/.postgresql/`). `sslmode_origin` names where an explicit sslmode came from, for
/// errors. Empty values count as unset, as in libpq.
pub(crate) fn resolve_tls(
    params: &TlsParams,
    default_mode: Option<(&str, String)>,
    env: Env,
) -> Result<TlsSettings, ConfigError> {
    let var = |k: &str| env(k).filter(|v| !v.is_empty());
    let given =
        |p: &Option<String>, k: &str| p.clone().filter(|v| !v.is_empty()).or_else(|| var(k));
    let home = || {
        var("HOME")
            .map(PathBuf::from)
            .or_else(|| host::passwd_entry().map(|(_, h)| h))
            .map(|h| h.join(".postgresql"))
    };
    let root_cert = match given(&params.sslrootcert, "PGSSLROOTCERT") {
        Some(s) if s == "system" => Some(RootCert::System),
        Some(s) => Some(RootCert::File {
            path: PathBuf::from(s),
            given: true,
        }),
        None => home().map(|d| RootCert::File {
            path: d.join("root.crt"),
            given: false,
        }),
    };
    let explicit = match &params.sslmode {
        Some(v) => Some(("the connection string".to_string(), v.clone())),
        None => default_mode
            .map(|(o, v)| (o.to_string(), v))
            .or_else(|| var("PGSSLMODE").map(|v| ("PGSSLMODE".into(), v))),
    };
    let mode = match &explicit {
        Some((origin, v)) => SslMode::parse(v).ok_or_else(|| ConfigError::SslMode {
            value: v.clone(),
            origin: origin.clone(),
        })?,
        // libpq 16+: the system store only makes sense with a host name check, so it is the default.
        None if root_cert == Some(RootCert::System) => SslMode::VerifyFull,
        None => SslMode::Prefer,
    };
    if root_cert == Some(RootCert::System) && mode != SslMode::VerifyFull {
        let origin = explicit.map(|(o, _)| o).unwrap_or_default();
        return Err(ConfigError::Invalid(format!(
            "weak sslmode \"{mode}\" (from {origin}) may not be used with sslrootcert=system: \
             use sslmode=verify-full, or give sslrootcert the file of your CA"
        )));
    }
    let cert = given(&params.sslcert, "PGSSLCERT")
        .map(PathBuf::from)
        .or_else(|| home().map(|d| d.join("postgresql.crt")));
    let key = given(&params.sslkey, "PGSSLKEY")
        .map(PathBuf::from)
        .or_else(|| home().map(|d| d.join("postgresql.key")));
    Ok(TlsSettings {
        mode,
        root_cert,
        cert,
        key,
    })
}

/// `key=value` pairs of the TLS settings worth showing (not the defaults), for [`crate::redacted`].
pub(crate) fn rendered(tls: &TlsSettings) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    if tls.mode != SslMode::Prefer {
        out.push(("sslmode", tls.mode.to_string()));
    }
    match &tls.root_cert {
        Some(RootCert::System) => out.push(("sslrootcert", "system".into())),
        Some(RootCert::File { path, given: true }) => out.push(("sslrootcert", show(path))),
        _ => {}
    }
    out
}

fn show(p: &Path) -> String {
    p.display().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| m.get(k).cloned()
    }

    fn params(kv: &[(&str, &str)]) -> TlsParams {
        let mut p = TlsParams::default();
        for (k, v) in kv {
            p.set(k, v.to_string());
        }
        p
    }

    #[test]
    fn defaults_are_under_home() {
        let t = resolve_tls(&params(&[]), None, &env(&[("HOME", "/h")])).unwrap();
        assert_eq!(t.mode, SslMode::Prefer);
        assert_eq!(
            t.root_cert,
            Some(RootCert::File {
                path: "/h/.postgresql/root.crt".into(),
                given: false
            })
        );
        assert_eq!(
            t.cert.as_deref(),
            Some(Path::new("/h/.postgresql/postgresql.crt"))
        );
        assert_eq!(
            t.key.as_deref(),
            Some(Path::new("/h/.postgresql/postgresql.key"))
        );
    }

    #[test]
    fn conninfo_beats_environment_beats_default() {
        let vars = [
            ("HOME", "/h"),
            ("PGSSLMODE", "require"),
            ("PGSSLROOTCERT", "/env/ca.crt"),
            ("PGSSLCERT", "/env/c.crt"),
            ("PGSSLKEY", "/env/c.key"),
        ];
        let t = resolve_tls(&params(&[]), None, &env(&vars)).unwrap();
        assert_eq!(t.mode, SslMode::Require);
        assert_eq!(
            t.root_cert,
            Some(RootCert::File {
                path: "/env/ca.crt".into(),
                given: true
            })
        );
        assert_eq!(t.cert.as_deref(), Some(Path::new("/env/c.crt")));
        assert_eq!(t.key.as_deref(), Some(Path::new("/env/c.key")));
        let t = resolve_tls(
            &params(&[
                ("sslmode", "verify-ca"),
                ("sslrootcert", "/c/ca"),
                ("sslcert", "/c/crt"),
                ("sslkey", "/c/key"),
            ]),
            None,
            &env(&vars),
        )
        .unwrap();
        assert_eq!(t.mode, SslMode::VerifyCa);
        assert_eq!(
            t.root_cert,
            Some(RootCert::File {
                path: "/c/ca".into(),
                given: true
            })
        );
        assert_eq!(
            (t.cert.as_deref(), t.key.as_deref()),
            (Some(Path::new("/c/crt")), Some(Path::new("/c/key")))
        );
        // Empty means unset, as in libpq.
        let t = resolve_tls(&params(&[("sslrootcert", "")]), None, &env(&vars)).unwrap();
        assert_eq!(
            t.root_cert,
            Some(RootCert::File {
                path: "/env/ca.crt".into(),
                given: true
            })
        );
        // A node's sslmode (from the catalog) beats PGSSLMODE.
        let t = resolve_tls(
            &params(&[]),
            Some(("the catalog", "disable".into())),
            &env(&vars),
        )
        .unwrap();
        assert_eq!(t.mode, SslMode::Disable);
    }

    #[test]
    fn system_store_means_verify_full() {
        let t = resolve_tls(&params(&[("sslrootcert", "system")]), None, &env(&[])).unwrap();
        assert_eq!(
            (t.mode, t.root_cert),
            (SslMode::VerifyFull, Some(RootCert::System))
        );
        for weak in ["require", "verify-ca", "prefer", "disable"] {
            let e = resolve_tls(
                &params(&[("sslrootcert", "system"), ("sslmode", weak)]),
                None,
                &env(&[]),
            )
            .unwrap_err()
            .to_string();
            assert!(e.contains(weak) && e.contains("verify-full"), "{e}");
        }
    }

    #[test]
    fn the_example_conninfos_verify_the_catalog() {
        for f in ["pgbackman.toml", "pgbackman-agent.toml"] {
            let path = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../../etc")
                .join(f);
            let file = crate::load_from(&[], Some(&path)).unwrap();
            let (conninfo, _) = crate::catalog_conninfo(None, None, &file).unwrap();
            let c = crate::resolve_conninfo(&conninfo, &env(&[("USER", "u")])).unwrap();
            assert_eq!(c.tls.mode, SslMode::VerifyFull, "{f}");
            assert!(
                matches!(&c.tls.root_cert, Some(RootCert::File { given: true, .. })),
                "{f}"
            );
        }
    }

    #[test]
    fn modes_parse_exactly() {
        for m in SslMode::ALL {
            assert_eq!(SslMode::parse(m.as_str()), Some(m));
        }
        assert_eq!(SslMode::parse("REQUIRE"), None);
        let e = resolve_tls(&params(&[("sslmode", "always")]), None, &env(&[]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("always") && e.contains("verify-full"), "{e}");
    }
}
