//! Checks the shell makes before it calls the catalog, with the same core validators for every
//! way a value gets in: a node's default configuration is checked as strictly as a
//! definition's own values (the defaults become definitions), host names and domains as host
//! names, and what can never work (a pg_dump older than the node) is refused with what to do
//! instead. The catalog checks again (`sql/10_helpers.sql`).

use anyhow::{Result, anyhow, bail};
use pgbackman_core::cron::{CronField, validate_cron_field};
use pgbackman_core::hostname::{HostKind, check_host};
use pgbackman_core::model;
use pgbackman_core::text::quote;

/// A host name (`kind` says which rules apply); the error names the argument and what to give.
pub fn host(kind: HostKind, value: &str) -> Result<()> {
    check_host(kind, value).map_err(|e| anyhow!("{e}"))
}

/// The domain argument: an explicit `""` means "no domain" (Some("")), a missing one the
/// configured default (None).
pub fn domain_arg(given: Option<&str>, asked: Option<String>) -> Result<Option<String>> {
    let d = match given {
        Some(g) => Some(g.trim().to_string()),
        None => asked.map(|a| a.trim().to_string()),
    };
    if let Some(d) = &d {
        host(HostKind::Domain, d)?;
    }
    Ok(d)
}

/// One `parameter=value` of a node's or a server's configuration (or their defaults), checked
/// as the values of a definition are: extra pg_dump parameters, cron fields, encryption, domain.
pub fn config_pair(parameter: &str, value: &str) -> Result<()> {
    let cron = |field: CronField| {
        validate_cron_field(field, value).map_err(|e| anyhow!("{parameter}: {e}"))
    };
    match parameter {
        "extra_backup_parameters" => {
            model::check_extra_dump_parameters(value).map_err(|e| {
                anyhow!("{parameter}: {e}\nHINT: every backup definition of the node starts from this value; give pg_dump options only (write a value as --name=value), without connection, output, format or jobs options")
            })?;
        }
        "backup_day_month_cron" => cron(CronField::DayOfMonth)?,
        "backup_month_cron" => cron(CronField::Month)?,
        "backup_weekday_cron" => cron(CronField::DayOfWeek)?,
        "encryption" => {
            encryption(value)?;
        }
        "domain" => host(HostKind::Domain, value.trim())?,
        _ => {}
    }
    Ok(())
}

/// The encryption of a definition: `false`, `true` (its backup server's `encryption_key`) or
/// an encryption key's name (`register_encryption_key`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Encryption {
    Plain,
    ServerKey,
    Key(String),
}

/// Reads an `encryption` value; the catalog checks that a key name is registered.
pub fn encryption(value: &str) -> Result<Encryption> {
    let v = value.trim();
    match v.to_ascii_lowercase().as_str() {
        "true" | "t" | "yes" | "y" | "on" | "1" => Ok(Encryption::ServerKey),
        "false" | "f" | "no" | "n" | "off" | "0" | "" => Ok(Encryption::Plain),
        _ if v
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
            && v.starts_with(|c: char| c.is_ascii_alphabetic()) =>
        {
            Ok(Encryption::Key(v.to_string()))
        }
        _ => bail!(
            "encryption {} is neither true, false nor an encryption key name\nHINT: give false, true (the backup server's encryption_key) or a name from show_encryption_keys",
            quote(value)
        ),
    }
}

/// An age recipient (`age1…`, X25519), parsed by the age library: the shell refuses a
/// malformed key (or a pasted identity) before the catalog sees it.
pub fn recipient(value: &str) -> Result<String> {
    let v = value.trim();
    if v.starts_with("AGE-SECRET-KEY-") {
        // Never echo an identity.
        bail!(
            "this is an age identity (a private key), not a recipient\nHINT: give the public key (age1…, printed by age-keygen -y FILE); keep the identity where restores run"
        );
    }
    v.parse::<age::x25519::Recipient>().map_err(|e| {
        anyhow!(
            "recipient {} is not an age X25519 public key ({e})\nHINT: give the age1… \"Public key\" that age-keygen prints, e.g. age-keygen -y key.txt",
            quote(v)
        )
    })?;
    Ok(v.to_string())
}

/// `--client-major`: a major such as 16, or `none` to clear it (Some(0) for the catalog).
pub fn client_major(value: Option<&str>) -> Result<Option<i32>> {
    let Some(v) = value.map(str::trim) else {
        return Ok(None);
    };
    if v.eq_ignore_ascii_case("none") {
        return Ok(Some(0));
    }
    v.parse::<i32>()
        .ok()
        .filter(|m| (9..100).contains(m))
        .map(Some)
        .ok_or_else(|| {
            anyhow!(
                "--client-major {} is not a PostgreSQL major such as 16\nHINT: give a major (at least the node's), or none to let the agent choose",
                quote(v)
            )
        })
}

/// Refuses a pg_dump major older than the node's: every run would fail.
pub fn client_major_for_node(
    major: i32,
    node_fqdn: &str,
    server_version: &str,
    server_version_num: i32,
) -> Result<()> {
    let node_major = server_version_num / 10000;
    if major != 0 && major < node_major {
        bail!(
            "--client-major {major} is older than PgSQL node {node_fqdn} (PostgreSQL {server_version}, major {node_major}): pg_dump must be at least as new as the server\nHINT: give --client-major {node_major} or newer, or none to let the agent choose"
        );
    }
    Ok(())
}

/// A list of names as the shell reads it back: `'app "owner",auditor'` for the comma list
/// `app "owner"`, `auditor` (shell quoting only where needed).
pub fn shell_list(names: &[String]) -> String {
    let joined = names.join(",");
    let plain = |c: char| c.is_ascii_alphanumeric() || "_,.-@%+=:/".contains(c);
    if !joined.is_empty() && joined.chars().all(plain) {
        return joined;
    }
    shlex::try_quote(&joined).map_or_else(|_| quote(&joined), |q| q.into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_defaults_are_checked_like_definitions() {
        assert!(config_pair("extra_backup_parameters", "--host=x").is_err());
        assert!(config_pair("extra_backup_parameters", "-f /tmp/x").is_err());
        assert!(config_pair("extra_backup_parameters", "--no-owner --no-acl").is_ok());
        assert!(config_pair("backup_month_cron", "13").is_err());
        assert!(config_pair("backup_weekday_cron", "8").is_err());
        assert!(config_pair("backup_day_month_cron", "32").is_err());
        assert!(config_pair("backup_weekday_cron", "mon-fri").is_ok());
        assert!(config_pair("encryption", "true").is_ok());
        assert!(config_pair("encryption", "false").is_ok());
        assert!(config_pair("encryption", "site-2026").is_ok());
        assert!(config_pair("encryption", "a b").is_err());
        assert!(config_pair("domain", "a;b").is_err());
        assert!(config_pair("retention_period", "7 days").is_ok());
    }

    #[test]
    fn recipients_are_parsed() {
        let id = age::x25519::Identity::generate();
        let r = id.to_public().to_string();
        assert_eq!(recipient(&format!(" {r} ")).unwrap(), r);
        let mut bad = r.clone();
        bad.pop();
        bad.push(if r.ends_with('q') { 'p' } else { 'q' });
        assert!(recipient(&bad).is_err(), "checksum");
        use age::secrecy::ExposeSecret;
        let secret = id.to_string();
        let e = recipient(secret.expose_secret()).unwrap_err().to_string();
        assert!(e.contains("identity") && !e.contains("AGE-SECRET"), "{e}");
    }

    #[test]
    fn client_major_none_clears() {
        assert_eq!(client_major(Some("none")).unwrap(), Some(0));
        assert_eq!(client_major(Some("16")).unwrap(), Some(16));
        assert_eq!(client_major(None).unwrap(), None);
        assert!(client_major(Some("x")).is_err());
        let e = client_major_for_node(14, "pg01", "15.4", 150004).unwrap_err();
        assert!(e.to_string().contains("major 15"), "{e}");
        assert!(client_major_for_node(15, "pg01", "15.4", 150004).is_ok());
        assert!(client_major_for_node(0, "pg01", "15.4", 150004).is_ok());
    }

    #[test]
    fn role_lists_are_pastable() {
        let l = shell_list(&["app \"owner\"".into(), "auditor".into()]);
        assert_eq!(l, "'app \"owner\",auditor'");
        assert_eq!(shlex::split(&l).unwrap(), vec!["app \"owner\",auditor"]);
        assert_eq!(shell_list(&["a".into(), "b".into()]), "a,b");
    }
}
