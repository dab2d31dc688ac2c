//! The SMTP side of alerts: lettre over tokio and rustls (STARTTLS required, TLS from the
//! first byte, or plain for a relay on this host), optional login, and messages with Date and a
//! stable Message-ID, so that a mail sent twice (sent, but the catalog was unreachable to record
//! it) is one message to any mail reader that de-duplicates.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use lettre::message::header::ContentType;
use lettre::message::{Mailbox, Message};
use lettre::transport::smtp::AsyncSmtpTransport;
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::transport::smtp::extension::ClientId;
use lettre::{AsyncTransport, Tokio1Executor};
use pgbackman_config::{AlertsSection, SmtpSecurity};

pub struct Mailer {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    /// Right-hand side of Message-IDs.
    id_domain: String,
    /// "smtp.example.org:587 (starttls)", for logs and --check.
    pub target: String,
}

/// Reads the SMTP password: a file of this user only (like ~/.pgpass), first line, trimmed.
fn read_password(path: &Path) -> Result<String> {
    let meta = std::fs::metadata(path).with_context(|| {
        format!(
            "[agent.alerts] smtp_password_file {}: cannot read it",
            path.display()
        )
    })?;
    if meta.permissions().mode() & 0o077 != 0 {
        bail!(
            "[agent.alerts] smtp_password_file {} is readable by others\nHINT: chmod 0600 {}",
            path.display(),
            path.display()
        );
    }
    let text = std::fs::read_to_string(path).with_context(|| {
        format!(
            "[agent.alerts] smtp_password_file {}: cannot read it",
            path.display()
        )
    })?;
    Ok(text.lines().next().unwrap_or("").trim_end().to_string())
}

impl Mailer {
    /// Builds the transport; reads the password and CA files now, so that a mistake stops the
    /// agent at start instead of failing every mail. `hello` is this host's name for EHLO.
    pub fn new(cfg: &AlertsSection, hello: &str) -> Result<Mailer> {
        let from: Mailbox = cfg.from_address.parse().with_context(|| {
            format!(
                "[agent.alerts] from_address \"{}\" is not a mail address (e.g. \"pgbackman <pgbackman@backup01.example.org>\")",
                cfg.from_address
            )
        })?;
        let server = cfg.smtp_server.trim().to_string();
        let tls = || -> Result<TlsParameters> {
            let mut b = TlsParameters::builder(server.clone());
            if let Some(ca) = &cfg.smtp_ca_file {
                let pem = std::fs::read(ca).with_context(|| {
                    format!(
                        "[agent.alerts] smtp_ca_file {}: cannot read it",
                        ca.display()
                    )
                })?;
                let cert = Certificate::from_pem(&pem).map_err(|e| {
                    anyhow::anyhow!(
                        "[agent.alerts] smtp_ca_file {}: not a PEM certificate: {e}",
                        ca.display()
                    )
                })?;
                b = b.add_root_certificate(cert);
            }
            b.build_rustls()
                .map_err(|e| anyhow::anyhow!("TLS settings for {server}: {e}"))
        };
        let tls = match cfg.smtp_security {
            SmtpSecurity::Starttls => Tls::Required(tls()?),
            SmtpSecurity::Tls => Tls::Wrapper(tls()?),
            SmtpSecurity::None => Tls::None,
        };
        let mut b = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(server.clone())
            .port(cfg.port())
            .tls(tls)
            .hello_name(ClientId::Domain(hello.to_string()))
            .timeout(Some(Duration::from_secs(cfg.timeout_seconds)));
        if let (Some(user), Some(pw)) = (&cfg.smtp_user, &cfg.smtp_password_file) {
            b = b
                .credentials(Credentials::new(user.clone(), read_password(pw)?))
                .authentication(vec![Mechanism::Plain, Mechanism::Login]);
        }
        let id_domain = from
            .email
            .domain()
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || ".-".contains(*c))
            .collect::<String>();
        let security = match cfg.smtp_security {
            SmtpSecurity::Starttls => "starttls",
            SmtpSecurity::Tls => "tls",
            SmtpSecurity::None => "plain",
        };
        Ok(Mailer {
            transport: b.build(),
            from,
            id_domain: if id_domain.is_empty() {
                "pgbackman.invalid".into()
            } else {
                id_domain
            },
            target: format!("{server}:{} ({security})", cfg.port()),
        })
    }

    /// The Message-ID of an alert: the same for every attempt at mailing it.
    pub fn message_id(&self, alert_id: i64, registered: chrono::DateTime<chrono::Utc>) -> String {
        format!(
            "<pgbackman.alert.{alert_id}.{}@{}>",
            registered.timestamp(),
            self.id_domain
        )
    }

    /// Sends one plain-text mail.
    pub async fn send(
        &self,
        to: &[Mailbox],
        subject: &str,
        body: String,
        message_id: &str,
    ) -> Result<()> {
        let mut b = Message::builder()
            .from(self.from.clone())
            .subject(subject)
            .date_now()
            .message_id(Some(message_id.to_string()))
            .user_agent(format!("pgbackman-agent {}", env!("CARGO_PKG_VERSION")))
            .header(ContentType::TEXT_PLAIN);
        for m in to {
            b = b.to(m.clone());
        }
        let msg = b.body(body).context("building the mail")?;
        // lettre's message already names the cause; its source chain would repeat it.
        self.transport
            .send(msg)
            .await
            .map(|_| ())
            .map_err(|e| anyhow::anyhow!("SMTP {}: {e}", self.target))
    }

    /// Connects, greets, negotiates TLS and logs in, without sending anything (for --check).
    pub async fn test(&self) -> Result<(), lettre::transport::smtp::Error> {
        self.transport.test_connection().await.map(|_| ())
    }
}

/// The mailboxes of a recipient list ("a@x, b@y" or one address); the invalid ones apart.
pub fn recipients(list: &str) -> (Vec<Mailbox>, Vec<String>) {
    let mut ok = Vec::new();
    let mut bad = Vec::new();
    for part in list
        .split([',', ';'])
        .map(str::trim)
        .filter(|p| !p.is_empty())
    {
        match part.parse::<Mailbox>() {
            Ok(m) => ok.push(m),
            Err(_) => bad.push(part.to_string()),
        }
    }
    (ok, bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recipient_lists() {
        let (ok, bad) = recipients("dba@example.org, Ops <ops@example.org>;;nonsense");
        assert_eq!(ok.len(), 2);
        assert_eq!(bad, vec!["nonsense".to_string()]);
        assert_eq!(recipients("").0.len(), 0);
    }
}
