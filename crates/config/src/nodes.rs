//! Deadlines of every connection to a PgSQL node (`[nodes]` of the config file, shared by the
//! shell and the agent): a node that accepts TCP and never answers must cost a bounded wait, and
//! the error must name the setting that bounds it. Nothing here connects; `pgbackman_db::tls`
//! enforces [`Limits`], `pgbackman-dump` hands the child programs the same values.

use std::fmt;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use crate::{ConfigError, Env};

/// Defaults: connect (TCP, TLS, startup and authentication) 10 s, as libpq's usual
/// `connect_timeout`; a statement of our own (admin and introspection queries, never pg_dump's)
/// 30 s; keepalives after 30 s idle, every 10 s, 3 probes (a dead peer found in about a minute).
pub const DEFAULT_CONNECT_SECONDS: u64 = 10;
pub const DEFAULT_STATEMENT_SECONDS: u64 = 30;
pub const DEFAULT_KEEPALIVES_IDLE: u64 = 30;
pub const DEFAULT_KEEPALIVES_INTERVAL: u64 = 10;
pub const DEFAULT_KEEPALIVES_COUNT: u32 = 3;
/// A dump that sends no data for this long is stopped (a node that stalls mid-dump with its TCP
/// connection alive: keepalives are answered by the kernel, so only silence shows it).
pub const DEFAULT_STALL_SECONDS: u64 = 300;

/// `[nodes]`: every key optional.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodesSection {
    /// Seconds to establish a connection (TCP, TLS, startup, authentication). Beats
    /// PGCONNECT_TIMEOUT.
    pub connect_timeout: Option<u64>,
    /// Seconds for each admin or introspection query (never pg_dump / pg_restore).
    pub statement_timeout: Option<u64>,
    /// TCP keepalives (also handed to pg_dump, pg_dumpall, pg_restore and psql).
    pub keepalives_idle: Option<u64>,
    pub keepalives_interval: Option<u64>,
    pub keepalives_count: Option<u32>,
    /// Seconds a pg_dump / pg_dumpall may go without sending any data (or a line of its
    /// progress) before it is stopped; 0 disables the watchdog.
    pub stall_timeout: Option<u64>,
}

/// A time limit and the setting a user changes to move it (named in the error that hits it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limit {
    pub after: Duration,
    /// E.g. `[nodes] connect_timeout`, or `PGCONNECT_TIMEOUT`.
    pub setting: String,
    /// Where the value comes from: `in /etc/pgbackman/pgbackman.toml`, `(default)`, ...
    pub origin: String,
}

impl fmt::Display for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} s, set by {} {}",
            self.after.as_secs(),
            self.setting,
            self.origin
        )
    }
}

/// The deadlines `pgbackman_db::tls` enforces on a connection: the whole connection
/// establishment, and each statement our own code runs. None: unbounded (the catalog's own
/// deadlines are set elsewhere).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Limits {
    pub connect: Option<Limit>,
    pub statement: Option<Limit>,
}

/// The resolved `[nodes]` settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeTimeouts {
    pub connect: Limit,
    pub statement: Limit,
    pub keepalives_idle: Duration,
    pub keepalives_interval: Duration,
    pub keepalives_count: u32,
    /// The dump's progress watchdog (None: disabled by `stall_timeout = 0`).
    pub stall: Option<Limit>,
}

impl Default for NodeTimeouts {
    /// The built-in defaults, without the environment.
    fn default() -> Self {
        NodeTimeouts::resolve(&NodesSection::default(), None, &|_| None)
            .expect("the defaults are valid")
    }
}

impl NodeTimeouts {
    /// `[nodes]` of `file` (a path only for the messages), else PGCONNECT_TIMEOUT for the
    /// connect timeout (as libpq; 0 or less counts as unset: a node connection always has a
    /// deadline), else the defaults.
    pub fn resolve(
        section: &NodesSection,
        file: Option<&Path>,
        env: Env,
    ) -> Result<NodeTimeouts, ConfigError> {
        let in_file = |key: &str| {
            let origin = match file {
                Some(p) => format!("in {}", p.display()),
                None => "in the config file".into(),
            };
            (format!("[nodes] {key}"), origin)
        };
        let bad = |key: &'static str, value: String| ConfigError::Value {
            path: file.map(Path::to_path_buf).unwrap_or_default(),
            key,
            value,
            hint: "use whole seconds, 1 or more",
        };
        let connect = match section.connect_timeout {
            Some(0) => return Err(bad("[nodes] connect_timeout", "0".into())),
            Some(s) => limit(s, in_file("connect_timeout")),
            None => match env("PGCONNECT_TIMEOUT")
                .and_then(|v| v.trim().parse::<i64>().ok())
                .filter(|s| *s > 0)
            {
                Some(s) => limit(
                    s.unsigned_abs(),
                    (
                        "PGCONNECT_TIMEOUT".into(),
                        "in the environment ([nodes] connect_timeout overrides it)".into(),
                    ),
                ),
                None => limit(
                    DEFAULT_CONNECT_SECONDS,
                    (
                        "[nodes] connect_timeout".into(),
                        "(the default; or PGCONNECT_TIMEOUT)".into(),
                    ),
                ),
            },
        };
        let statement = match section.statement_timeout {
            Some(0) => return Err(bad("[nodes] statement_timeout", "0".into())),
            Some(s) => limit(s, in_file("statement_timeout")),
            None => limit(
                DEFAULT_STATEMENT_SECONDS,
                ("[nodes] statement_timeout".into(), "(the default)".into()),
            ),
        };
        let secs = |v: Option<u64>, key: &'static str, default: u64| match v {
            Some(0) => Err(bad(key, "0".into())),
            Some(s) => Ok(Duration::from_secs(s)),
            None => Ok(Duration::from_secs(default)),
        };
        Ok(NodeTimeouts {
            connect,
            statement,
            keepalives_idle: secs(
                section.keepalives_idle,
                "[nodes] keepalives_idle",
                DEFAULT_KEEPALIVES_IDLE,
            )?,
            keepalives_interval: secs(
                section.keepalives_interval,
                "[nodes] keepalives_interval",
                DEFAULT_KEEPALIVES_INTERVAL,
            )?,
            keepalives_count: match section.keepalives_count {
                Some(0) => return Err(bad("[nodes] keepalives_count", "0".into())),
                Some(n) => n,
                None => DEFAULT_KEEPALIVES_COUNT,
            },
            stall: match section.stall_timeout {
                Some(0) => None,
                Some(s) => Some(limit(s, in_file("stall_timeout"))),
                None => Some(limit(
                    DEFAULT_STALL_SECONDS,
                    ("[nodes] stall_timeout".into(), "(the default)".into()),
                )),
            },
        })
    }

    /// Puts these deadlines on a node connection: the whole connection establishment and each
    /// statement (enforced by `pgbackman_db::tls`), the socket connect and TCP keepalives
    /// (enforced by tokio-postgres).
    pub fn apply(&self, cfg: &mut crate::ConnConfig) {
        cfg.pg
            .connect_timeout(self.connect.after)
            .keepalives(true)
            .keepalives_idle(self.keepalives_idle)
            .keepalives_interval(self.keepalives_interval)
            .keepalives_retries(self.keepalives_count);
        cfg.limits = Limits {
            connect: Some(self.connect.clone()),
            statement: Some(self.statement.clone()),
        };
    }

    /// [`NodeTimeouts::apply`], by value.
    pub fn applied(&self, mut cfg: crate::ConnConfig) -> crate::ConnConfig {
        self.apply(&mut cfg);
        cfg
    }

    /// libpq conninfo keys for the client programs (pg_dump, pg_restore, psql): the connect
    /// timeout and the keepalives. No statement timeout: a dump or a restore may take hours.
    pub fn conninfo_params(&self) -> Vec<(&'static str, String)> {
        vec![
            ("connect_timeout", self.connect.after.as_secs().to_string()),
            ("keepalives", "1".into()),
            (
                "keepalives_idle",
                self.keepalives_idle.as_secs().to_string(),
            ),
            (
                "keepalives_interval",
                self.keepalives_interval.as_secs().to_string(),
            ),
            ("keepalives_count", self.keepalives_count.to_string()),
        ]
    }
}

fn limit(secs: u64, (setting, origin): (String, String)) -> Limit {
    Limit {
        after: Duration::from_secs(secs),
        setting,
        origin,
    }
}

impl crate::FileConfig {
    /// The `[nodes]` deadlines of this file, with PGCONNECT_TIMEOUT from the real environment.
    pub fn node_timeouts(&self) -> Result<NodeTimeouts, ConfigError> {
        NodeTimeouts::resolve(&self.nodes, self.path.as_deref(), &crate::real_env)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn precedence_file_then_env_then_default() {
        let none = |_: &str| None;
        let env = |k: &str| (k == "PGCONNECT_TIMEOUT").then(|| "4".to_string());
        let zero = |k: &str| (k == "PGCONNECT_TIMEOUT").then(|| "0".to_string());
        let d = NodeTimeouts::resolve(&NodesSection::default(), None, &none).unwrap();
        assert_eq!(d.connect.after, Duration::from_secs(10));
        assert_eq!(d.connect.setting, "[nodes] connect_timeout");
        assert_eq!(d.statement.after, Duration::from_secs(30));
        let e = NodeTimeouts::resolve(&NodesSection::default(), None, &env).unwrap();
        assert_eq!(e.connect.after, Duration::from_secs(4));
        assert_eq!(e.connect.setting, "PGCONNECT_TIMEOUT");
        // libpq's "0 = wait forever" is not honoured for nodes: the default applies.
        let z = NodeTimeouts::resolve(&NodesSection::default(), None, &zero).unwrap();
        assert_eq!(z.connect.after, Duration::from_secs(10));
        let s = NodesSection {
            connect_timeout: Some(3),
            statement_timeout: Some(7),
            keepalives_count: Some(5),
            ..NodesSection::default()
        };
        let f = NodeTimeouts::resolve(&s, Some(Path::new("/etc/p.toml")), &env).unwrap();
        assert_eq!(f.connect.after, Duration::from_secs(3));
        assert_eq!(
            f.connect.to_string(),
            "3 s, set by [nodes] connect_timeout in /etc/p.toml"
        );
        assert_eq!(f.statement.after, Duration::from_secs(7));
        assert!(
            f.conninfo_params()
                .contains(&("keepalives_count", "5".to_string()))
        );
        assert_eq!(d.stall.as_ref().unwrap().after, Duration::from_secs(300));
        let off = NodesSection {
            stall_timeout: Some(0),
            ..NodesSection::default()
        };
        assert_eq!(
            NodeTimeouts::resolve(&off, None, &none).unwrap().stall,
            None
        );
        let s = NodesSection {
            stall_timeout: Some(45),
            ..NodesSection::default()
        };
        let f = NodeTimeouts::resolve(&s, Some(Path::new("/etc/p.toml")), &none).unwrap();
        assert_eq!(
            f.stall.unwrap().to_string(),
            "45 s, set by [nodes] stall_timeout in /etc/p.toml"
        );
        let bad = NodesSection {
            statement_timeout: Some(0),
            ..NodesSection::default()
        };
        let err = NodeTimeouts::resolve(&bad, Some(Path::new("/p.toml")), &none).unwrap_err();
        assert!(
            err.to_string().contains("[nodes] statement_timeout"),
            "{err}"
        );
    }

    #[test]
    fn the_example_configs_set_them() {
        for f in ["pgbackman.toml", "pgbackman-agent.toml"] {
            let p = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../../etc")
                .join(f);
            let c = crate::load_from(&[], Some(&p)).unwrap();
            let t = c.node_timeouts().unwrap();
            assert_eq!(t.connect.after, Duration::from_secs(10), "{f}");
            assert_eq!(t.statement.after, Duration::from_secs(30), "{f}");
            assert!(t.connect.origin.ends_with(f), "{f}: {}", t.connect);
        }
        // A bad value is refused when the file is read, naming the key.
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("x.toml");
        std::fs::write(&p, "[nodes]\nconnect_timeout = 0\n").unwrap();
        let e = crate::load_from(&[], Some(&p)).unwrap_err().to_string();
        assert!(
            e.contains("[nodes] connect_timeout") && e.contains("x.toml"),
            "{e}"
        );
    }

    #[test]
    fn applied_to_a_connection() {
        let mut c = crate::ConnConfig::from(tokio_postgres::Config::new());
        let t = NodeTimeouts::default();
        t.apply(&mut c);
        assert_eq!(c.get_connect_timeout(), Some(&Duration::from_secs(10)));
        assert_eq!(c.get_keepalives_idle(), Duration::from_secs(30));
        assert_eq!(c.limits.statement.as_ref(), Some(&t.statement));
    }
}
