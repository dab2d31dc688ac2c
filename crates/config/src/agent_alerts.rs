//! `[agent.alerts]`: how the agent mails alerts. Without the section alerts are not mailed:
//! they stay QUEUED in the catalog, visible with `show_alerts`.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::ConfigError;

/// Transport security of the SMTP connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SmtpSecurity {
    /// Plain connection upgraded with STARTTLS, which is required (port 587 by default).
    #[default]
    Starttls,
    /// TLS from the first byte, "SMTPS" (port 465 by default).
    Tls,
    /// No encryption (port 25 by default): for a relay on this host only.
    None,
}

impl SmtpSecurity {
    pub fn default_port(self) -> u16 {
        match self {
            SmtpSecurity::Starttls => 587,
            SmtpSecurity::Tls => 465,
            SmtpSecurity::None => 25,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertsSection {
    /// SMTP server host name (or address).
    pub smtp_server: String,
    /// Default: 587 (starttls), 465 (tls), 25 (none).
    pub smtp_port: Option<u16>,
    #[serde(default)]
    pub smtp_security: SmtpSecurity,
    /// Login user; the password is read from `smtp_password_file` (mode 0600), never from here.
    pub smtp_user: Option<String>,
    pub smtp_password_file: Option<PathBuf>,
    /// PEM file of a CA to trust besides the system's (a private relay's certificate).
    pub smtp_ca_file: Option<PathBuf>,
    /// Sender address, e.g. "pgbackman <pgbackman@backup01.example.org>".
    pub from_address: String,
    /// Template file (first line `Subject: ...`, `{{variable}}` placeholders); default: built in.
    pub template: Option<PathBuf>,
    /// Look for alerts to mail this often.
    #[serde(default = "default_check_seconds")]
    pub check_seconds: u64,
    /// Attempts before an alert is left FAILED (visible in show_alerts, retry_alerts re-queues it).
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// Delay before the first retry; it doubles at each attempt up to `max_retry_seconds`.
    #[serde(default = "default_retry_seconds")]
    pub retry_seconds: u64,
    #[serde(default = "default_max_retry_seconds")]
    pub max_retry_seconds: u64,
    /// Queued alerts older than this are not mailed (EXPIRED); 0 = mail them whatever their age.
    #[serde(default = "default_max_age_hours")]
    pub max_age_hours: u64,
    /// Timeout of one SMTP exchange.
    #[serde(default = "default_timeout_seconds")]
    pub timeout_seconds: u64,
    /// Alerts of another backup server due for this long are mailed by this agent too (their
    /// own agent is down or mails nothing).
    #[serde(default = "default_handover_seconds")]
    pub handover_seconds: u64,
}

fn default_check_seconds() -> u64 {
    30
}
fn default_max_attempts() -> u32 {
    10
}
fn default_retry_seconds() -> u64 {
    60
}
fn default_max_retry_seconds() -> u64 {
    3600
}
fn default_max_age_hours() -> u64 {
    168
}
fn default_timeout_seconds() -> u64 {
    30
}
fn default_handover_seconds() -> u64 {
    600
}

impl AlertsSection {
    pub fn port(&self) -> u16 {
        self.smtp_port
            .unwrap_or_else(|| self.smtp_security.default_port())
    }
}

fn is_loopback(host: &str) -> bool {
    let h = host.trim_start_matches('[').trim_end_matches(']');
    h.eq_ignore_ascii_case("localhost")
        || h.parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

pub(crate) fn check(a: &AlertsSection, path: &Path) -> Result<(), ConfigError> {
    let bad = |key: &'static str, value: String, hint: &'static str| ConfigError::Value {
        path: path.to_path_buf(),
        key,
        value,
        hint,
    };
    if a.smtp_server.trim().is_empty() {
        return Err(bad(
            "[agent.alerts] smtp_server",
            a.smtp_server.clone(),
            "name the SMTP server, e.g. smtp.example.org (remove the section to not mail alerts)",
        ));
    }
    if !a.from_address.contains('@') {
        return Err(bad(
            "[agent.alerts] from_address",
            a.from_address.clone(),
            "use an address such as pgbackman@backup01.example.org",
        ));
    }
    if a.smtp_user.is_some() != a.smtp_password_file.is_some() {
        return Err(bad(
            "[agent.alerts] smtp_user / smtp_password_file",
            a.smtp_user.clone().unwrap_or_default(),
            "give both (login with the password in that file, mode 0600) or neither",
        ));
    }
    if a.smtp_user.is_some()
        && a.smtp_security == SmtpSecurity::None
        && !is_loopback(&a.smtp_server)
    {
        return Err(bad(
            "[agent.alerts] smtp_security",
            "none".into(),
            "a password is never sent unencrypted over the network: use starttls or tls",
        ));
    }
    if a.max_attempts == 0 {
        return Err(bad(
            "[agent.alerts] max_attempts",
            "0".into(),
            "use 1 or more",
        ));
    }
    if a.check_seconds == 0 || a.retry_seconds == 0 || a.timeout_seconds == 0 {
        return Err(bad(
            "[agent.alerts] check_seconds / retry_seconds / timeout_seconds",
            "0".into(),
            "use 1 second or more",
        ));
    }
    if a.smtp_port == Some(0) {
        return Err(bad(
            "[agent.alerts] smtp_port",
            "0".into(),
            "use a port from 1 to 65535",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::FileConfig;

    fn parse(s: &str) -> Result<crate::AgentSection, crate::ConfigError> {
        let table: toml::Table = toml::from_str(s).unwrap();
        FileConfig {
            agent: Some(table),
            ..FileConfig::default()
        }
        .agent_section()
    }

    #[test]
    fn absent_means_no_mail_and_defaults_fill_the_rest() {
        assert_eq!(parse("").unwrap().alerts, None);
        let a = parse("[alerts]\nsmtp_server = \"smtp.example.org\"\nfrom_address = \"pgbackman@example.org\"")
            .unwrap()
            .alerts
            .unwrap();
        assert_eq!(a.smtp_security, super::SmtpSecurity::Starttls);
        assert_eq!(a.port(), 587);
        assert_eq!(a.max_attempts, 10);
        let a = parse("[alerts]\nsmtp_server = \"smtp.example.org\"\nfrom_address = \"p@example.org\"\nsmtp_security = \"tls\"")
            .unwrap()
            .alerts
            .unwrap();
        assert_eq!(a.port(), 465);
    }

    #[test]
    fn the_example_configuration_parses() {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../etc/pgbackman-agent.toml");
        let a = crate::load(Some(&path)).unwrap().agent_section().unwrap();
        let alerts = a.alerts.unwrap();
        assert_eq!(alerts.port(), 587);
        assert_eq!(a.overdue_check_seconds, 300);
    }

    #[test]
    fn errors_name_the_key() {
        let base =
            "[alerts]\nsmtp_server = \"smtp.example.org\"\nfrom_address = \"p@example.org\"\n";
        for (extra, needle) in [
            ("smtp_security = \"ssl\"", "expected one of `starttls`"),
            ("smtp_user = \"u\"", "smtp_password_file"),
            ("max_attempts = 0", "max_attempts"),
            ("smpt_port = 25", "smpt_port"),
            (
                "smtp_security = \"none\"\nsmtp_user = \"u\"\nsmtp_password_file = \"/p\"",
                "unencrypted",
            ),
        ] {
            let e = parse(&format!("{base}{extra}")).unwrap_err().to_string();
            assert!(e.contains(needle), "{extra}: {e}");
        }
        // Plain SMTP with a login is fine to a relay on this host.
        let local = "[alerts]\nsmtp_server = \"127.0.0.1\"\nfrom_address = \"p@example.org\"\nsmtp_security = \"none\"\nsmtp_user = \"u\"\nsmtp_password_file = \"/p\"";
        assert!(parse(local).is_ok());
        assert!(
            parse("[alerts]\nsmtp_server = \"x\"\nfrom_address = \"nobody\"")
                .unwrap_err()
                .to_string()
                .contains("from_address")
        );
    }
}
