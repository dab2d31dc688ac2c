//! Host names, domains and node addresses as the catalog accepts them.
//!
//! A backup server's host name and every domain are RFC 1123 host names: dot-separated labels
//! of ASCII letters, digits and hyphens (no leading or trailing hyphen), 63 characters per
//! label, 253 in all. A PgSQL node may also be an IPv4 or IPv6 address or an absolute unix
//! socket directory, as libpq's `host` takes them. Anything else (quotes, `;`, `$(…)`, `..`,
//! `%`, `*`, control characters, look-alike Unicode) is refused: these names end up in
//! connection strings, paths, mails and terminals. `sql/10_helpers.sql` (`api.check_host_name`)
//! applies the same rules in the catalog.

use std::net::IpAddr;

use crate::text::quote;

/// Longest host name (RFC 1035: 253 characters without the trailing dot).
pub const MAX_HOST_NAME: usize = 253;
/// Longest label of a host name.
pub const MAX_LABEL: usize = 63;
/// Longest socket directory: the socket path (`<dir>/.s.PGSQL.<port>`) must fit the 107 bytes
/// of a unix socket address.
pub const MAX_SOCKET_DIR: usize = 90;

/// What a host name, domain or node address is checked as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostKind {
    /// A backup server's host name.
    ServerHost,
    /// A PgSQL node's host: a host name, an IP address or a socket directory.
    NodeHost,
    /// A domain appended to a host name ("" means none).
    Domain,
}

impl HostKind {
    fn what(self) -> &'static str {
        match self {
            HostKind::ServerHost | HostKind::NodeHost => "hostname",
            HostKind::Domain => "domain",
        }
    }

    fn hint(self) -> &'static str {
        match self {
            HostKind::ServerHost => {
                "give a host name of letters, digits and hyphens, e.g. backup01, and the domain separately"
            }
            HostKind::NodeHost => {
                "give a host name of letters, digits and hyphens (e.g. pg01), an IP address (10.0.0.7, ::1) or an absolute socket directory (/var/run/postgresql)"
            }
            HostKind::Domain => {
                "give a domain of dot-separated labels of letters, digits and hyphens, e.g. example.org, or \"\" for none"
            }
        }
    }
}

/// A host name, domain or node address that is not valid: what, the value (bounded) and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} {value} is not valid: {reason}\nHINT: {hint}")]
pub struct HostError {
    /// `hostname` or `domain`.
    pub what: &'static str,
    /// The value, quoted and bounded ([`crate::text::quote`]).
    pub value: String,
    /// What is wrong.
    pub reason: String,
    /// What to give instead.
    pub hint: &'static str,
}

/// Checks `value` (already trimmed by the caller) as `kind`.
pub fn check_host(kind: HostKind, value: &str) -> Result<(), HostError> {
    let err = |reason: String| HostError {
        what: kind.what(),
        value: quote(value),
        reason,
        hint: kind.hint(),
    };
    match kind {
        HostKind::Domain if value.is_empty() => Ok(()),
        HostKind::NodeHost if value.starts_with('/') => check_socket_dir(value).map_err(err),
        HostKind::NodeHost if value.contains(':') || is_dotted_numbers(value) => value
            .parse::<IpAddr>()
            .map(|_| ())
            .map_err(|_| err("it is not an IPv4 or IPv6 address".into())),
        _ => check_rfc1123(value).map_err(err),
    }
}

/// All labels numeric: meant as an IPv4 address (`300.1.1.1` is a bad address, not a name).
fn is_dotted_numbers(v: &str) -> bool {
    !v.is_empty()
        && v.split('.')
            .all(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_digit()))
}

fn check_rfc1123(v: &str) -> Result<(), String> {
    if v.is_empty() {
        return Err("it is empty".into());
    }
    if v.len() > MAX_HOST_NAME {
        return Err(format!(
            "it is {} characters long, the limit is {MAX_HOST_NAME}",
            v.chars().count()
        ));
    }
    if let Some(c) = v
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '.'))
    {
        return Err(format!(
            "character {} is not allowed (letters, digits, hyphens and dots only)",
            char_name(c)
        ));
    }
    for label in v.split('.') {
        if label.is_empty() {
            return Err(
                "it has an empty label (two dots in a row, or a leading or trailing dot)".into(),
            );
        }
        if label.len() > MAX_LABEL {
            return Err(format!("a label is longer than {MAX_LABEL} characters"));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(format!("label \"{label}\" starts or ends with a hyphen"));
        }
    }
    Ok(())
}

fn check_socket_dir(v: &str) -> Result<(), String> {
    if v.chars().count() > MAX_SOCKET_DIR {
        return Err(format!(
            "a socket directory is at most {MAX_SOCKET_DIR} characters long"
        ));
    }
    if let Some(c) = v
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "/._-+@~".contains(*c)))
    {
        return Err(format!(
            "character {} is not allowed in a socket directory",
            char_name(c)
        ));
    }
    if v.split('/').any(|part| part == "..") {
        return Err("a socket directory cannot contain \"..\"".into());
    }
    Ok(())
}

/// A character as a message shows it: printable in quotes, else its code point.
fn char_name(c: char) -> String {
    if c.is_ascii_graphic() {
        format!("'{c}'")
    } else {
        format!("U+{:04X}", c as u32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use HostKind::*;

    #[test]
    fn good_names() {
        for v in [
            "backup01",
            "Backup01",
            "a",
            "pg-01",
            "db1.example.org",
            "x1.y2.z3",
            "127",
        ] {
            check_host(ServerHost, v).unwrap_or_else(|e| panic!("{v}: {e}"));
        }
        for v in ["example.org", "", "dc2.example.net"] {
            check_host(Domain, v).unwrap_or_else(|e| panic!("{v}: {e}"));
        }
        for v in [
            "pg01",
            "127.0.0.2",
            "10.0.0.7",
            "::1",
            "fe80::1",
            "2001:db8::42",
            "/var/run/postgresql",
            "/tmp",
            "/tmp/pgbackman-test.x_1",
        ] {
            check_host(NodeHost, v).unwrap_or_else(|e| panic!("{v}: {e}"));
        }
    }

    #[test]
    fn hostile_names_are_refused() {
        let long = "a".repeat(100_000);
        for v in [
            "",
            "bad host",
            "a\"b",
            "a'b",
            "a;b",
            "$(id)",
            "`id`",
            "../../etc/passwd",
            "a/b",
            "100%",
            "*",
            "a*.example.org",
            "pg\u{202e}10",
            "pg\u{200b}01",
            "pg01\x1b[2J",
            "bell\x07",
            "-leading",
            "trailing-",
            "a..b",
            ".a",
            "a.",
            "under_score",
            "ünïcødé",
            long.as_str(),
            &"a".repeat(64),
        ] {
            assert!(check_host(ServerHost, v).is_err(), "accepted {v:?}");
            assert!(check_host(NodeHost, v).is_err(), "node accepted {v:?}");
            if !v.is_empty() {
                assert!(check_host(Domain, v).is_err(), "domain accepted {v:?}");
            }
        }
        for v in [
            "300.1.1.1",
            "1.2.3",
            "::g",
            "1:2",
            "/tmp/../etc",
            "/tmp/a b",
            "/tmp/$(id)",
            "/tmp/\u{202e}",
        ] {
            assert!(check_host(NodeHost, v).is_err(), "node accepted {v:?}");
        }
        // IP addresses and socket directories are for nodes only.
        assert!(check_host(ServerHost, "::1").is_err());
        assert!(check_host(ServerHost, "/tmp").is_err());
        assert!(check_host(Domain, "/tmp").is_err());
    }

    #[test]
    fn errors_are_bounded_and_say_what_to_do() {
        let long = "a".repeat(100_000);
        let e = check_host(ServerHost, &long).unwrap_err().to_string();
        assert!(e.len() < 400, "{e}");
        assert!(e.contains("100000 bytes"), "{e}");
        let e = check_host(NodeHost, "pg\u{202e}01")
            .unwrap_err()
            .to_string();
        assert!(e.contains("U+202E"), "{e}");
        assert!(e.contains("\\u{202e}"), "{e}");
        assert!(e.contains("HINT: "), "{e}");
        let e = check_host(Domain, "a;b").unwrap_err().to_string();
        assert!(
            e.starts_with("domain \"a;b\" is not valid: character ';'"),
            "{e}"
        );
    }
}
