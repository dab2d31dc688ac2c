//! PgBackMan 1.x's `pgbackman.conf` (INI, read with Python's RawConfigParser): read when no TOML
//! file exists, so a PgBackMan site's shell finds its catalog, and converted to TOML by
//! `pgbackman config convert`. Only parses: the caller prints the note that says how to convert.

use std::path::{Path, PathBuf};

use crate::file::{CatalogSection, FileConfig, ShellSection};
use crate::{ConfigError, Env};

/// PgBackMan's lookup order: `$HOME/.pgbackman/pgbackman.conf`, then `/etc/pgbackman/pgbackman.conf`.
pub fn legacy_candidates(env: Env) -> Vec<PathBuf> {
    env("HOME")
        .filter(|h| !h.is_empty())
        .map(|h| PathBuf::from(h).join(".pgbackman/pgbackman.conf"))
        .into_iter()
        .chain([PathBuf::from("/etc/pgbackman/pgbackman.conf")])
        .collect()
}

/// What a PgBackMan 1.x file says, as far as pgbackman uses it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LegacyConfig {
    pub path: PathBuf,
    /// `[backup_server] backup_server`; None when empty (PgBackMan then used the FQDN).
    pub backup_server: Option<String>,
    /// host, hostaddr, port, dbname, user of `[pgbackman_database]` with PgBackMan's defaults,
    /// in order; the password apart.
    pub conninfo: Vec<(String, String)>,
    /// `[pgbackman_database] password`, which pgbackman wants in a pgpass file.
    pub password: Option<String>,
    /// Every other key that is set: (section, key, value, what pgbackman does instead).
    pub not_carried: Vec<(String, String, String, &'static str)>,
}

/// Reads the INI text of `path`.
pub fn parse_legacy(path: &Path, text: &str) -> Result<LegacyConfig, ConfigError> {
    let mut ini = configparser::ini::Ini::new();
    // RawConfigParser keeps values whole (a password may hold ';' or '#') and continues
    // indented lines.
    ini.set_inline_comment_symbols(Some(&[]));
    ini.set_multiline(true);
    let map = ini.read(text.to_string()).map_err(|e| ConfigError::Parse {
        path: path.to_path_buf(),
        message: e,
    })?;
    let get = |section: &str, key: &str| {
        map.get(section)
            .and_then(|s| s.get(key))
            .cloned()
            .flatten()
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
    };
    let mut conninfo = Vec::new();
    for (key, default) in [
        ("host", None),
        ("hostaddr", None),
        ("port", Some("5432")),
        ("dbname", Some("pgbackman")),
        ("user", Some("pgbackman_role_rw")),
    ] {
        if let Some(v) = get("pgbackman_database", key).or(default.map(String::from)) {
            conninfo.push((key.to_string(), v));
        }
    }
    let mut not_carried = Vec::new();
    for (section, keys) in &map {
        for (key, value) in keys {
            let Some(value) = value.as_deref().map(str::trim).filter(|v| !v.is_empty()) else {
                continue;
            };
            let what = match (section.as_str(), key.as_str()) {
                ("backup_server", "backup_server")
                | ("pgbackman_database", "host" | "hostaddr" | "port" | "dbname" | "user") => {
                    continue;
                }
                ("pgbackman_database", "password") => {
                    "put it in ~/.pgpass (host:port:dbname:user:password, mode 0600), never in a config file"
                }
                ("pgbackman_database", _) => {
                    "not needed: pgbackman reconnects and upgrades by itself (pgbackman db upgrade)"
                }
                ("pgbackman_alerts", _) => {
                    "the agent mails alerts: [agent.alerts] in pgbackman-agent.toml (smtp_server, smtp_port, smtp_security, smtp_user, smtp_password_file, from_address, template)"
                }
                ("pgbackman_maintenance", _) => "the agent's [agent] maintenance_seconds",
                ("pgbackman_dump", "pause_recovery_process_on_slave") => {
                    "a setting of each standby node in pgbackman, not of the backup server"
                }
                ("pgbackman_dump", _) => {
                    "not needed: the agent stages its files under its backup directory"
                }
                ("logging", _) => {
                    "the agent logs to the journal (PGBACKMAN_LOG=info), the shell to the terminal"
                }
                _ => "unknown to pgbackman",
            };
            let shown = if key == "password" { "********" } else { value };
            not_carried.push((section.clone(), key.clone(), shown.to_string(), what));
        }
    }
    not_carried.sort();
    Ok(LegacyConfig {
        path: path.to_path_buf(),
        backup_server: get("backup_server", "backup_server"),
        conninfo,
        password: get("pgbackman_database", "password"),
        not_carried,
    })
}

/// A conninfo value, quoted when libpq needs it.
fn quote(v: &str) -> String {
    if !v.is_empty()
        && !v
            .chars()
            .any(|c| c.is_whitespace() || c == '\'' || c == '\\')
    {
        return v.to_string();
    }
    format!("'{}'", v.replace('\\', "\\\\").replace('\'', "\\'"))
}

impl LegacyConfig {
    fn conninfo_text(&self, with_password: bool) -> String {
        let mut parts: Vec<String> = self
            .conninfo
            .iter()
            .map(|(k, v)| format!("{k}={}", quote(v)))
            .collect();
        if with_password && let Some(p) = &self.password {
            parts.push(format!("password={}", quote(p)));
        }
        parts.join(" ")
    }

    /// The configuration the shell runs with (the password kept, so the old setup works
    /// until it is converted; every rendering of a conninfo hides it).
    pub fn file_config(&self) -> FileConfig {
        FileConfig {
            catalog: CatalogSection {
                conninfo: Some(self.conninfo_text(true)),
                connect_timeout: None,
            },
            shell: ShellSection {
                backup_server: self.backup_server.clone(),
                ..Default::default()
            },
            path: Some(self.path.clone()),
            legacy: true,
            ..Default::default()
        }
    }

    /// The TOML equivalent, with what is not carried as comments (never the password).
    pub fn to_toml(&self) -> String {
        let s = |v: &str| toml::Value::String(v.to_string()).to_string();
        let mut out = format!(
            "# pgbackman shell configuration, converted from the PgBackMan 1.x file {}\n\
             # by `pgbackman config convert`. Save it as ~/.config/pgbackman/pgbackman.toml\n\
             # (or /etc/pgbackman/pgbackman.toml); the old file is then no longer read.\n\n\
             [catalog]\nconninfo = {}\n",
            self.path.display(),
            s(&self.conninfo_text(false))
        );
        if let Some(b) = &self.backup_server {
            out.push_str(&format!("\n[shell]\nbackup_server = {}\n", s(b)));
        }
        if !self.not_carried.is_empty() {
            out.push_str("\n# Not carried over:\n");
            for (section, key, value, what) in &self.not_carried {
                out.push_str(&format!("# [{section}] {key} = {value}: {what}\n"));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OLD: &str = "[backup_server]\n\
        backup_server = bs1.example.org\n\n\
        [pgbackman_database]\n\
        host = db1.example.org\n\
        hostaddr =\n\
        port = 5433\n\
        dbname = pgbackman\n\
        user = pgbackman_role_rw\n\
        password = s3cr#t;x\n\
        pg_connect_retry_interval = 10\n\
        database_source_dir = /usr/share/pgbackman\n\n\
        [pgbackman_alerts]\n\
        smtp_alerts = ON\n\
        smtp_server = mail.example.org\n\n\
        [logging]\n\
        log_level = INFO\n";

    #[test]
    fn an_old_file_gives_the_catalog_and_the_server_and_names_the_rest() {
        let c = parse_legacy(Path::new("/home/u/.pgbackman/pgbackman.conf"), OLD).unwrap();
        assert_eq!(c.backup_server.as_deref(), Some("bs1.example.org"));
        assert_eq!(c.password.as_deref(), Some("s3cr#t;x"));
        let f = c.file_config();
        assert!(f.legacy);
        assert_eq!(
            f.catalog.conninfo.as_deref(),
            Some(
                "host=db1.example.org port=5433 dbname=pgbackman user=pgbackman_role_rw password=s3cr#t;x"
            )
        );
        let t = c.to_toml();
        assert!(!t.contains("s3cr"), "{t}");
        assert!(t.contains("conninfo = \"host=db1.example.org port=5433 dbname=pgbackman user=pgbackman_role_rw\""), "{t}");
        assert!(
            t.contains("[pgbackman_database] password = ********: put it in ~/.pgpass"),
            "{t}"
        );
        assert!(
            t.contains("[pgbackman_alerts] smtp_server = mail.example.org: the agent mails alerts"),
            "{t}"
        );
        // What it prints is a config the shell reads.
        let back: FileConfig = toml::from_str(&t).unwrap();
        assert_eq!(back.shell.backup_server.as_deref(), Some("bs1.example.org"));
    }

    #[test]
    fn defaults_are_pgbackmans_and_a_broken_file_names_its_line() {
        let c = parse_legacy(Path::new("/x"), "[pgbackman_database]\nhost = db1\n").unwrap();
        assert_eq!(
            c.conninfo_text(true),
            "host=db1 port=5432 dbname=pgbackman user=pgbackman_role_rw"
        );
        assert_eq!(c.backup_server, None);
        let e = parse_legacy(Path::new("/x"), "[a]\n= v\n").unwrap_err();
        assert!(e.to_string().contains("line"), "{e}");
    }

    #[test]
    fn the_home_file_comes_first() {
        let env = |k: &str| (k == "HOME").then(|| "/home/u".to_string());
        assert_eq!(
            legacy_candidates(&env),
            vec![
                PathBuf::from("/home/u/.pgbackman/pgbackman.conf"),
                PathBuf::from("/etc/pgbackman/pgbackman.conf")
            ]
        );
    }
}

#[cfg(test)]
mod load_tests {
    use crate::load_with_legacy;

    #[test]
    fn the_old_file_is_read_only_when_no_toml_file_exists() {
        let d = tempfile::tempdir().unwrap();
        let toml = d.path().join("pgbackman.toml");
        let ini = d.path().join("pgbackman.conf");
        std::fs::write(&ini, "[pgbackman_database]\nhost = old-db\n").unwrap();
        let c = load_with_legacy(
            std::slice::from_ref(&toml),
            std::slice::from_ref(&ini),
            None,
        )
        .unwrap();
        assert!(c.legacy);
        assert_eq!(c.path.as_deref(), Some(ini.as_path()));
        assert!(c.catalog.conninfo.unwrap().starts_with("host=old-db "));
        std::fs::write(&toml, "[catalog]\nconninfo = \"host=new-db\"\n").unwrap();
        let c = load_with_legacy(&[toml], &[ini], None).unwrap();
        assert!(!c.legacy);
        assert_eq!(c.catalog.conninfo.as_deref(), Some("host=new-db"));
    }
}
