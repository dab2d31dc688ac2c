//! The libpq password file (PGPASSFILE else ~/.pgpass), with libpq's exact matching rules, so that
//! our own connections and the pg_dump children we start find the same password.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use tokio_postgres::Config;
use tokio_postgres::config::Host;

use crate::conninfo::DEFAULT_SOCKET_DIRS;
use crate::{Env, host};

/// The password file libpq would read: PGPASSFILE, else `~/.pgpass` (None without a home).
fn file_path(env: Env) -> Option<PathBuf> {
    env("PGPASSFILE")
        .filter(|f| !f.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            let home = env("HOME").filter(|h| !h.is_empty()).map(PathBuf::from);
            Some(
                home.or_else(|| host::passwd_entry().map(|(_, home)| home))?
                    .join(".pgpass"),
            )
        })
}

/// The password for the first host of `cfg` (tokio-postgres holds one password for all hosts).
pub(crate) fn lookup(cfg: &Config, env: Env, warnings: &mut Vec<String>) -> Option<Vec<u8>> {
    let file = file_path(env)?;
    // libpq keys a socket in the default directory as "localhost", any other socket by its path,
    // and a hostaddr-only connection by the address.
    let hostname = match cfg.get_hosts().first() {
        Some(Host::Tcp(h)) => h.clone(),
        Some(Host::Unix(p)) if DEFAULT_SOCKET_DIRS.iter().any(|d| Path::new(d) == p) => {
            "localhost".into()
        }
        Some(Host::Unix(p)) => p.display().to_string(),
        None => cfg.get_hostaddrs().first()?.to_string(),
    };
    let port = cfg.get_ports().first().copied().unwrap_or(5432).to_string();
    let text = match read(&file) {
        Ok(t) => t?,
        Err(w) => {
            warnings.push(w);
            return None;
        }
    };
    find(
        &text,
        &hostname,
        &port,
        cfg.get_dbname().unwrap_or(""),
        cfg.get_user().unwrap_or(""),
    )
}

/// What `pgbackman-agent --check` says about the password file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PgpassStatus {
    /// No file (libpq then sends no password: fine with certificates, trust or peer).
    Missing(Option<PathBuf>),
    /// Present and private: libpq uses it.
    Used(PathBuf),
    /// Present but ignored, as libpq ignores it; the reason says why and what to do.
    Ignored(PathBuf, String),
}

/// The state of the password file `env` designates (PGPASSFILE else `~/.pgpass`).
pub fn pgpass_status(env: Env) -> PgpassStatus {
    let Some(file) = file_path(env) else {
        return PgpassStatus::Missing(None);
    };
    match read(&file) {
        Ok(Some(_)) => PgpassStatus::Used(file),
        Ok(None) => PgpassStatus::Missing(Some(file)),
        Err(why) => PgpassStatus::Ignored(file, why),
    }
}

/// The file's contents; Ok(None) when it does not exist (libpq ignores that silently); Err with
/// the warning libpq prints when it exists but must be ignored.
fn read(file: &Path) -> Result<Option<Vec<u8>>, String> {
    let Ok(meta) = std::fs::metadata(file) else {
        return Ok(None);
    };
    let shown = file.display();
    if !meta.is_file() {
        return Err(format!(
            "password file {shown} is ignored: it is not a plain file"
        ));
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(format!(
            "password file {shown} is ignored: its mode {mode:04o} gives group or world access, \
             and libpq (like pgbackman and pg_dump) reads it only when it is u=rw (0600) or less; \
             fix it with: chmod 0600 {shown}"
        ));
    }
    std::fs::read(file)
        .map(Some)
        .map_err(|e| format!("password file {shown} is ignored: cannot read it: {e}"))
}

/// The first line `hostname:port:database:username:password` matching; `*` matches anything,
/// `\` escapes `:` and `\`; lines starting with `#` are comments. An empty password counts as none.
fn find(text: &[u8], host: &str, port: &str, db: &str, user: &str) -> Option<Vec<u8>> {
    for line in text.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() || line[0] == b'#' {
            continue;
        }
        let rest = [host, port, db, user]
            .iter()
            .try_fold(line, |rest, tok| field(rest, tok.as_bytes()));
        if let Some(rest) = rest {
            let password = unescape(rest);
            return (!password.is_empty()).then_some(password);
        }
    }
    None
}

/// libpq's pwdfMatchesString: the rest of the line after a field matching `tok`, or None.
fn field<'a>(mut s: &'a [u8], mut tok: &[u8]) -> Option<&'a [u8]> {
    if let Some(rest) = s.strip_prefix(b"*:") {
        return Some(rest);
    }
    while let Some((&c0, rest)) = s.split_first() {
        let (c, rest, escaped) = match (c0, rest.split_first()) {
            (b'\\', Some((&c1, r))) => (c1, r, true),
            (b'\\', None) => return None,
            _ => (c0, rest, false),
        };
        if c == b':' && !escaped && tok.is_empty() {
            return Some(rest);
        }
        let (&t, trest) = tok.split_first()?;
        if c != t {
            return None;
        }
        (s, tok) = (rest, trest);
    }
    None
}

/// The password field: up to an unescaped `:`, with `\x` meaning `x` (a trailing `\` stays).
fn unescape(s: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut it = s.iter().copied().peekable();
    while let Some(c) = it.next() {
        match c {
            b':' => break,
            b'\\' if it.peek().is_some() => out.extend(it.next()),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::resolve;
    use std::collections::HashMap;

    pub(crate) fn chmod(p: &Path, mode: u32) {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    fn f(text: &str, host: &str, port: &str, db: &str, user: &str) -> Option<String> {
        find(text.as_bytes(), host, port, db, user).map(|p| String::from_utf8(p).unwrap())
    }

    #[test]
    fn matching_rules() {
        let text = "# comment line\n\
                    db1:5432:pgbackman:pgbackman:first\n\
                    db1:5432:pgbackman:pgbackman:second\n\
                    *:5433:*:*:anyhost\r\n\
                    db2:*:*:bob:wild\n\
                    we\\:ird:5432:d\\\\b:u:es\\:c\\\\aped\\\n\
                    \n\
                    localhost:5432:*:postgres:sock\n\
                    *:*:*:empty:\n";
        assert_eq!(
            f(text, "db1", "5432", "pgbackman", "pgbackman").as_deref(),
            Some("first")
        );
        assert_eq!(f(text, "any", "5433", "x", "y").as_deref(), Some("anyhost"));
        assert_eq!(f(text, "db2", "1", "x", "bob").as_deref(), Some("wild"));
        assert_eq!(
            f(text, "we:ird", "5432", "d\\b", "u").as_deref(),
            Some("es:c\\aped\\")
        );
        assert_eq!(f(text, "db1", "5432", "other", "pgbackman"), None);
        assert_eq!(f(text, "db", "5432", "pgbackman", "pgbackman"), None); // a prefix is no match
        assert_eq!(f(text, "# comment line", "5432", "x", "y"), None);
        assert_eq!(f(text, "h", "1", "d", "empty"), None);
        // '*' is a wildcard only as a whole field.
        assert_eq!(f("d*:1:d:u:p\n", "db", "1", "d", "u"), None);
        assert_eq!(f("d*:1:d:u:p\n", "d*", "1", "d", "u").as_deref(), Some("p"));
    }

    fn env_with(file: &Path, extra: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let mut m: HashMap<String, String> = extra
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        m.insert("PGPASSFILE".into(), file.display().to_string());
        m.entry("USER".into()).or_insert_with(|| "postgres".into());
        move |k| m.get(k).cloned()
    }

    #[test]
    fn resolution_uses_the_file_like_libpq() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("pgpass");
        std::fs::write(&p, "localhost:5432:*:postgres:sockpw\n/srv/run:5432:*:postgres:pathpw\ndb1:*:*:*:tcppw\n10.0.0.9:5432:*:*:addrpw\n").unwrap();
        chmod(&p, 0o600);
        let pw = |conninfo: &str, extra: &[(&str, &str)]| {
            let r = resolve(conninfo, &env_with(&p, extra)).unwrap();
            assert!(r.warnings.is_empty(), "{:?}", r.warnings);
            r.config
                .get_password()
                .map(|p| String::from_utf8(p.to_vec()).unwrap())
        };
        assert_eq!(pw("host=/tmp", &[]).as_deref(), Some("sockpw"));
        assert_eq!(
            pw("host=/var/run/postgresql", &[]).as_deref(),
            Some("sockpw")
        );
        assert_eq!(pw("", &[]).as_deref(), Some("sockpw")); // the default socket dir
        assert_eq!(pw("host=/srv/run", &[]).as_deref(), Some("pathpw")); // other dirs match by path
        assert_eq!(pw("host=db1 port=7", &[]).as_deref(), Some("tcppw"));
        assert_eq!(pw("hostaddr=10.0.0.9", &[]).as_deref(), Some("addrpw"));
        assert_eq!(
            pw("host=db1", &[("PGPASSWORD", "envpw")]).as_deref(),
            Some("envpw")
        );
        assert_eq!(pw("host=db1 password=given", &[]).as_deref(), Some("given"));
        assert_eq!(pw("host=db2", &[]), None);
        // ~/.pgpass when PGPASSFILE is unset.
        std::fs::copy(&p, dir.path().join(".pgpass")).unwrap();
        let home = dir.path().to_str().unwrap();
        let env = |k: &str| match k {
            "HOME" => Some(home.to_string()),
            "USER" => Some("postgres".to_string()),
            _ => None,
        };
        assert_eq!(
            resolve("host=db1", &env).unwrap().config.get_password(),
            Some(&b"tcppw"[..])
        );
    }

    #[test]
    fn insecure_or_odd_files_are_ignored_with_a_warning() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("pgpass");
        std::fs::write(&p, "*:*:*:*:secret\n").unwrap();
        for mode in [0o644, 0o640, 0o604, 0o610] {
            chmod(&p, mode);
            let r = resolve("host=db1", &env_with(&p, &[])).unwrap();
            assert_eq!(r.config.get_password(), None);
            assert_eq!(r.warnings.len(), 1);
            let shown = p.display();
            assert_eq!(
                r.warnings[0],
                format!(
                    "password file {shown} is ignored: its mode {mode:04o} gives group or world \
                     access, and libpq (like pgbackman and pg_dump) reads it only when it is u=rw \
                     (0600) or less; fix it with: chmod 0600 {shown}"
                )
            );
            assert!(!r.warnings[0].contains("secret"));
            // Kept with the connection, for the error when the server asks for a password.
            assert_eq!(r.config.pgpass_ignored.as_ref(), Some(&r.warnings[0]));
            assert_eq!(
                pgpass_status(&env_with(&p, &[])),
                PgpassStatus::Ignored(p.clone(), r.warnings[0].clone())
            );
        }
        chmod(&p, 0o400);
        assert_eq!(
            pgpass_status(&env_with(&p, &[])),
            PgpassStatus::Used(p.clone())
        );
        assert_eq!(
            resolve("host=db1", &env_with(&p, &[]))
                .unwrap()
                .config
                .get_password(),
            Some(&b"secret"[..])
        );
        let r = resolve("host=db1", &env_with(dir.path(), &[])).unwrap();
        assert!(r.config.get_password().is_none() && r.warnings[0].contains("not a plain file"));
        let r = resolve("host=db1", &env_with(&dir.path().join("missing"), &[])).unwrap();
        assert!(r.config.get_password().is_none() && r.warnings.is_empty());
    }
}
