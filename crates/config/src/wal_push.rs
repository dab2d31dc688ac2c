//! The wal-push intake (issue 11): the agent's `[agent.wal_push]` listener, the client's file on
//! the node host (`pgbackman-agent wal-push`, default [`WAL_PUSH_CONFIG`]) and the credential
//! file the shell writes (`create_wal_push_credential`). There is no plaintext mode: a listener
//! needs a certificate and a key, a client a CA to check them with.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::ConfigError;

/// Where `pgbackman-agent wal-push` reads its settings unless `--config` says otherwise.
pub const WAL_PUSH_CONFIG: &str = "/etc/pgbackman/wal-push.toml";

/// `[agent.wal_push]`: where the agent takes pushed WAL. Absent: nothing listens.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WalPushSection {
    /// Address to listen on, e.g. `0.0.0.0:7433` (TLS only).
    pub listen: String,
    /// The agent's certificate chain (PEM), presented to wal-push clients.
    pub cert: PathBuf,
    /// Its private key (PEM), readable only by the agent's user.
    pub key: PathBuf,
    /// Pushes taken at once (each holds a segment in memory while it is stored); more wait.
    #[serde(default = "default_max_concurrent")]
    pub max_concurrent: usize,
    /// A client that sends nothing for this long is dropped (also the TLS handshake's and the
    /// request line's deadline).
    #[serde(default = "default_idle_seconds")]
    pub idle_timeout_seconds: u64,
    /// The whole push (handshake to answer) must end within this.
    #[serde(default = "default_push_seconds")]
    pub push_timeout_seconds: u64,
}

fn default_max_concurrent() -> usize {
    2
}
fn default_idle_seconds() -> u64 {
    10
}
fn default_push_seconds() -> u64 {
    120
}

/// Checks the section (the files are read by the agent, not here).
pub fn check(s: &WalPushSection, path: &Path) -> Result<(), ConfigError> {
    let bad = |key: &'static str, value: String, hint: &'static str| ConfigError::Value {
        path: path.to_path_buf(),
        key,
        value,
        hint,
    };
    if s.listen.trim().is_empty() {
        return Err(bad(
            "[agent.wal_push] listen",
            s.listen.clone(),
            "give an address such as 0.0.0.0:7433, or remove the section to listen nowhere",
        ));
    }
    if s.max_concurrent == 0 || s.max_concurrent > 64 {
        return Err(bad(
            "[agent.wal_push] max_concurrent",
            s.max_concurrent.to_string(),
            "use 1 to 64 (each push in progress holds up to one segment in memory)",
        ));
    }
    if !(1..=300).contains(&s.idle_timeout_seconds) {
        return Err(bad(
            "[agent.wal_push] idle_timeout_seconds",
            s.idle_timeout_seconds.to_string(),
            "use 1 to 300 seconds",
        ));
    }
    if !(5..=3600).contains(&s.push_timeout_seconds) {
        return Err(bad(
            "[agent.wal_push] push_timeout_seconds",
            s.push_timeout_seconds.to_string(),
            "use 5 to 3600 seconds",
        ));
    }
    Ok(())
}

/// Says who can reach the listener when it is not on loopback: informative for `--check`, since
/// every connection is TLS and authenticated (there is no plaintext mode to warn about).
pub fn wal_push_exposure(addr: &str) -> Option<String> {
    crate::http_listen_exposure(addr).map(|_| {
        format!("[agent.wal_push] listen = \"{addr}\" is reachable from other hosts (TLS and a per-node credential are required; firewall it to the nodes that push)")
    })
}

/// The client's file on the node host.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WalPushClient {
    /// The backup server's agent: `host:port` of its `[agent.wal_push] listen`.
    pub agent: String,
    /// The name the agent's certificate must carry (default: the host of `agent`).
    pub server_name: Option<String>,
    /// CA certificate(s) (PEM) the agent's certificate must chain to.
    pub ca: PathBuf,
    /// The credential file `create_wal_push_credential` wrote (mode 0600).
    pub credential: PathBuf,
    /// Deadline of the TCP connection and TLS handshake.
    #[serde(default = "default_connect_seconds")]
    pub connect_timeout_seconds: u64,
    /// Deadline of the whole push: PostgreSQL retries a failing archive_command, a hanging
    /// one blocks archiving.
    #[serde(default = "default_client_seconds")]
    pub timeout_seconds: u64,
}

fn default_connect_seconds() -> u64 {
    10
}
fn default_client_seconds() -> u64 {
    120
}

impl WalPushClient {
    /// Reads the client's file (`--config`, else [`WAL_PUSH_CONFIG`]).
    pub fn load(explicit: Option<&Path>) -> Result<WalPushClient, ConfigError> {
        let path = explicit.unwrap_or(Path::new(WAL_PUSH_CONFIG));
        let text = std::fs::read_to_string(path).map_err(|err| {
            if err.kind() == std::io::ErrorKind::NotFound {
                ConfigError::Parse {
                    path: path.to_path_buf(),
                    message: "no such file; write agent, ca and credential there (README: WAL push), or pass --config FILE".into(),
                }
            } else {
                ConfigError::Read {
                    path: path.to_path_buf(),
                    err,
                }
            }
        })?;
        Self::parse(path, &text)
    }

    pub fn parse(path: &Path, text: &str) -> Result<WalPushClient, ConfigError> {
        let c: WalPushClient = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.message().to_string(),
        })?;
        if !c.agent.contains(':') {
            return Err(ConfigError::Value {
                path: path.to_path_buf(),
                key: "agent",
                value: c.agent,
                hint: "write host:port of the backup server's [agent.wal_push] listen, e.g. bs01.example.org:7433",
            });
        }
        if c.connect_timeout_seconds == 0 || c.timeout_seconds < c.connect_timeout_seconds {
            return Err(ConfigError::Value {
                path: path.to_path_buf(),
                key: "timeout_seconds",
                value: c.timeout_seconds.to_string(),
                hint: "connect_timeout_seconds must be 1 or more and timeout_seconds at least as long",
            });
        }
        Ok(c)
    }

    /// The host part of `agent` (the default certificate name).
    pub fn server_name(&self) -> String {
        self.server_name.clone().unwrap_or_else(|| {
            self.agent
                .rsplit_once(':')
                .map_or(self.agent.as_str(), |(h, _)| h)
                .trim_matches(['[', ']'])
                .to_string()
        })
    }
}

/// A node's wal-push credential: which node it speaks for and its token. `Debug` hides the
/// token.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PushCredential {
    pub node_id: i64,
    pub token: String,
}

impl std::fmt::Debug for PushCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "PushCredential {{ node_id: {}, token: <hidden> }}",
            self.node_id
        )
    }
}

impl PushCredential {
    /// The file's text, with a comment saying what it is for.
    pub fn render(&self, node: &str, server: &str) -> String {
        format!(
            "# pgbackman wal-push credential of PgSQL node {node} (NodeID {}) for backup server {server}.\n\
             # Install it on the node host readable only by the user PostgreSQL runs as (mode 0600),\n\
             # named by `credential` in /etc/pgbackman/wal-push.toml. Never share it.\n\
             node_id = {}\ntoken = \"{}\"\n",
            self.node_id, self.node_id, self.token
        )
    }

    pub fn parse(path: &Path, text: &str) -> Result<PushCredential, ConfigError> {
        let c: PushCredential = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            // toml's message may quote the line, which holds the token: say only where.
            message: format!(
                "not a wal-push credential file ({}); write it again with create_wal_push_credential",
                e.span()
                    .map_or("unreadable".to_string(), |s| format!("at byte {}", s.start))
            ),
        })?;
        if c.token.len() != 64 || !c.token.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(ConfigError::Parse {
                path: path.to_path_buf(),
                message: "the token is not 64 hexadecimal digits; write the file again with create_wal_push_credential".into(),
            });
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_credential_round_trips_and_never_shows_its_token() {
        let c = PushCredential {
            node_id: 3,
            token: "ab".repeat(32),
        };
        let text = c.render("pg1", "bs1");
        assert_eq!(PushCredential::parse(Path::new("x"), &text).unwrap(), c);
        assert!(!format!("{c:?}").contains("abab"));
        let e = PushCredential::parse(Path::new("x"), "node_id = 3\ntoken = \"abababab\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("64 hexadecimal") && !e.contains("abababab"),
            "{e}"
        );
        let e = PushCredential::parse(Path::new("x"), "node_id = 3\ntoken = \"ab\nz")
            .unwrap_err()
            .to_string();
        assert!(!e.contains("\"ab"), "{e}");
    }

    #[test]
    fn the_client_file_needs_a_port_and_sane_deadlines() {
        let ok =
            "agent = \"bs1.example.org:7433\"\nca = \"/etc/ca.pem\"\ncredential = \"/etc/c\"\n";
        let c = WalPushClient::parse(Path::new("f"), ok).unwrap();
        assert_eq!(c.server_name(), "bs1.example.org");
        assert_eq!((c.connect_timeout_seconds, c.timeout_seconds), (10, 120));
        assert!(
            WalPushClient::parse(Path::new("f"), &ok.replace(":7433", ""))
                .unwrap_err()
                .to_string()
                .contains("host:port")
        );
        assert!(
            WalPushClient::parse(Path::new("f"), &format!("{ok}timeout_seconds = 1\n"))
                .unwrap_err()
                .to_string()
                .contains("timeout_seconds")
        );
    }
}
