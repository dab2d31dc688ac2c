//! libpq-style resolution of connection strings into `tokio_postgres::Config`: tokio-postgres parses
//! the string but fills no defaults, so the PG* environment, the default socket directory, the OS
//! user and the pgpass file are applied here, as libpq would.

use std::error::Error as _;
use std::str::FromStr;
use std::time::Duration;

use tokio_postgres::Config;
use tokio_postgres::config::{Host, SslMode};

use crate::tls::{self, ConnConfig, TLS_KEYS, TlsParams};
use crate::{ConfigError, Env, host, pgpass};

/// A resolved connection config plus the warnings libpq would have printed (e.g. an insecure
/// pgpass file that was ignored). Callers decide where the warnings go.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub config: ConnConfig,
    pub warnings: Vec<String>,
}

/// Maps a libpq sslmode to tokio-postgres's three modes (see [`tls::SslMode::tokio`]); what a
/// connection really does is decided by `pgbackman_db::tls` from the full [`tls::TlsSettings`].
pub fn ssl_mode(value: &str) -> Option<SslMode> {
    tls::SslMode::parse(value).map(tls::SslMode::tokio)
}

/// [`resolve`] without the warnings (see [`Resolved`] to get them).
pub fn resolve_conninfo(conninfo: &str, env: Env) -> Result<ConnConfig, ConfigError> {
    resolve(conninfo, env).map(|r| r.config)
}

/// [`resolve_conninfo`] with the real process environment.
pub fn resolve_env(conninfo: &str) -> Result<ConnConfig, ConfigError> {
    resolve_conninfo(conninfo, &crate::real_env)
}

/// Parses a key=value or postgresql:// conninfo and fills every default libpq would:
/// host PGHOST else (when no hostaddr either) the default socket dir; hostaddr PGHOSTADDR;
/// port PGPORT else 5432; user PGUSER else the OS user; dbname PGDATABASE else the user;
/// sslmode PGSSLMODE; connect_timeout PGCONNECT_TIMEOUT; application_name PGAPPNAME; options
/// PGOPTIONS; password PGPASSWORD else the pgpass file (PGPASSFILE else ~/.pgpass); TLS settings
/// (sslmode, sslrootcert, sslcert, sslkey) as in [`crate::tls`].
/// Values in the conninfo always win over the environment.
pub fn resolve(conninfo: &str, env: Env) -> Result<Resolved, ConfigError> {
    let (rest, params) = take_tls_params(conninfo);
    let mut cfg = Config::from_str(&rest).map_err(|e| ConfigError::Conninfo {
        reason: e.source().map_or_else(|| e.to_string(), |c| c.to_string()),
    })?;
    let tls = tls::resolve_tls(&params, None, env)?;
    cfg.ssl_mode(tls.mode.tokio());
    let mut warnings = Vec::new();
    fill_defaults(&mut cfg, env, &mut warnings)?;
    let mut config = ConnConfig::new(cfg, tls);
    config.pgpass_ignored = warnings.first().cloned();
    Ok(Resolved { config, warnings })
}

/// [`node_config_with`] with the real environment, without the warnings.
pub fn node_config(
    host: &str,
    port: u16,
    user: &str,
    dbname: &str,
    sslmode: &str,
) -> Result<ConnConfig, ConfigError> {
    node_config_with(host, port, user, dbname, sslmode, &crate::real_env).map(|r| r.config)
}

/// The config for connecting to a PgSQL node from its catalog columns. The password comes only from
/// the pgpass file (PGPASSFILE else ~/.pgpass), never from the catalog nor PGPASSWORD (which would
/// send one password to every node); PGHOST, PGPORT, PGUSER… are ignored, since they would redirect
/// every node. An empty sslmode means libpq's default, prefer. The certificate files come from
/// PGSSLROOTCERT, PGSSLCERT, PGSSLKEY else `~/.postgresql/`, as for the pg_dump children.
pub fn node_config_with(
    host: &str,
    port: u16,
    user: &str,
    dbname: &str,
    sslmode: &str,
    env: Env,
) -> Result<Resolved, ConfigError> {
    for (what, v) in [
        ("host name (fqdn)", host),
        ("admin user", user),
        ("admin database", dbname),
    ] {
        if v.trim().is_empty() {
            return Err(ConfigError::Invalid(format!(
                "PgSQL node {host:?}: its {what} is empty; set it with update_pgsql_node"
            )));
        }
    }
    if port == 0 {
        return Err(ConfigError::Invalid(format!(
            "PgSQL node {host}: port 0 is invalid; set it with update_pgsql_node"
        )));
    }
    let node_env = |k: &str| {
        matches!(
            k,
            "PGCONNECT_TIMEOUT"
                | "PGAPPNAME"
                | "PGPASSFILE"
                | "HOME"
                | "USER"
                | "LOGNAME"
                | "PGSSLROOTCERT"
                | "PGSSLCERT"
                | "PGSSLKEY"
        )
        .then(|| env(k))?
    };
    let origin =
        || format!("the catalog entry of PgSQL node {host} (fix it with update_pgsql_node)");
    let mode = (!sslmode.is_empty()).then(|| (origin(), sslmode.to_string()));
    let tls = tls::resolve_tls(
        &TlsParams::default(),
        mode.as_ref().map(|(o, m)| (o.as_str(), m.clone())),
        &node_env,
    )?;
    let mut cfg = Config::new();
    cfg.host(host)
        .port(port)
        .user(user)
        .dbname(dbname)
        .ssl_mode(tls.mode.tokio());
    let mut warnings = Vec::new();
    fill_defaults(&mut cfg, &node_env, &mut warnings)?;
    let mut config = ConnConfig::new(cfg, tls);
    // fill_defaults' only warnings are about the password file.
    config.pgpass_ignored = warnings.first().cloned();
    // Every node connection has deadlines; callers with a config file apply its [nodes] over these.
    crate::NodeTimeouts::resolve(&crate::NodesSection::default(), None, &node_env)?
        .apply(&mut config);
    Ok(Resolved { config, warnings })
}

fn fill_defaults(
    cfg: &mut Config,
    env: Env,
    warnings: &mut Vec<String>,
) -> Result<(), ConfigError> {
    let var = |k: &str| env(k).filter(|v| !v.is_empty()); // libpq treats an empty variable as unset
    let bad = |key: &'static str, value: &str, hint: &str| ConfigError::Env {
        key,
        value: value.into(),
        hint: hint.into(),
    };

    if cfg.get_hosts().is_empty()
        && let Some(h) = var("PGHOST")
    {
        h.split(',').for_each(|h| _ = cfg.host(h));
    }
    if cfg.get_hostaddrs().is_empty()
        && let Some(a) = var("PGHOSTADDR")
    {
        for s in a.split(',') {
            cfg.hostaddr(
                s.trim()
                    .parse()
                    .map_err(|_| bad("PGHOSTADDR", &a, "expected numeric IP addresses"))?,
            );
        }
    }
    if cfg.get_hosts().is_empty() && cfg.get_hostaddrs().is_empty() {
        cfg.host(default_socket_dir());
    }
    let (nh, na) = (cfg.get_hosts().len(), cfg.get_hostaddrs().len());
    if nh > 0 && na > 0 && nh != na {
        return Err(ConfigError::Invalid(format!(
            "{nh} host(s) but {na} hostaddr(s): give one hostaddr per host (check host/hostaddr in the connection string and PGHOST/PGHOSTADDR)"
        )));
    }
    if cfg.get_ports().is_empty() {
        match var("PGPORT") {
            Some(p) => {
                for s in p.split(',') {
                    let port = if s.is_empty() {
                        Ok(5432)
                    } else {
                        s.trim().parse::<u16>()
                    };
                    cfg.port(
                        port.map_err(|_| bad("PGPORT", &p, "expected a port number (1-65535)"))?,
                    );
                }
            }
            None => _ = cfg.port(5432),
        }
    }
    if cfg.get_user().is_none() {
        let user = var("PGUSER").or_else(|| os_user(env)).ok_or_else(|| {
            ConfigError::Invalid(
                "cannot determine the OS user name: set PGUSER or user= in the connection string"
                    .into(),
            )
        })?;
        cfg.user(user);
    }
    if cfg.get_dbname().is_none() {
        let db = var("PGDATABASE")
            .or_else(|| cfg.get_user().map(str::to_string))
            .unwrap_or_default();
        cfg.dbname(db);
    }
    if cfg.get_connect_timeout().is_none()
        && let Some(t) = var("PGCONNECT_TIMEOUT")
    {
        let secs = t
            .trim()
            .parse::<i64>()
            .map_err(|_| bad("PGCONNECT_TIMEOUT", &t, "expected whole seconds"))?;
        if secs > 0 {
            cfg.connect_timeout(Duration::from_secs(secs.unsigned_abs())); // 0 or less: wait forever
        }
    }
    if cfg.get_application_name().is_none()
        && let Some(a) = var("PGAPPNAME")
    {
        cfg.application_name(a);
    }
    if cfg.get_options().is_none()
        && let Some(o) = var("PGOPTIONS")
    {
        cfg.options(o);
    }
    // libpq consults the password sources only while the password is missing or empty.
    if cfg.get_password().is_none_or(<[u8]>::is_empty) {
        if let Some(p) = var("PGPASSWORD") {
            cfg.password(p);
        } else if let Some(p) = pgpass::lookup(cfg, env, warnings) {
            cfg.password(p);
        }
    }
    Ok(())
}

/// The socket directory libpq builds use: Debian/RedHat packages /var/run/postgresql, upstream /tmp.
pub(crate) const DEFAULT_SOCKET_DIRS: [&str; 3] =
    ["/var/run/postgresql", "/run/postgresql", "/tmp"];

fn default_socket_dir() -> &'static str {
    [DEFAULT_SOCKET_DIRS[0], DEFAULT_SOCKET_DIRS[2]]
        .into_iter()
        .find(|d| std::path::Path::new(d).is_dir())
        .unwrap_or("/tmp")
}

pub(crate) fn os_user(env: Env) -> Option<String> {
    env("USER")
        .filter(|u| !u.is_empty())
        .or_else(|| env("LOGNAME").filter(|u| !u.is_empty()))
        .or_else(|| host::passwd_entry().map(|(name, _)| name))
}

/// Quotes a conninfo value when tokio-postgres / libpq would need it.
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

/// A key=value rendering for display and logs: the password is never shown, only `password=********`
/// when one is set. Keeps defaults out (sslmode=prefer, the default root certificate file) so the
/// common case stays short.
pub fn redacted(conn: &ConnConfig) -> String {
    let cfg = &conn.pg;
    let join = |it: Vec<String>| it.join(",");
    let mut out: Vec<(&str, String)> = Vec::new();
    let hosts = cfg.get_hosts().iter().map(|h| match h {
        Host::Tcp(h) => h.clone(),
        Host::Unix(p) => p.display().to_string(),
    });
    let hosts = join(hosts.collect());
    if !hosts.is_empty() {
        out.push(("host", hosts));
    }
    if !cfg.get_hostaddrs().is_empty() {
        out.push((
            "hostaddr",
            join(cfg.get_hostaddrs().iter().map(|a| a.to_string()).collect()),
        ));
    }
    if !cfg.get_ports().is_empty() {
        out.push((
            "port",
            join(cfg.get_ports().iter().map(|p| p.to_string()).collect()),
        ));
    }
    if let Some(u) = cfg.get_user() {
        out.push(("user", u.into()));
    }
    if let Some(d) = cfg.get_dbname() {
        out.push(("dbname", d.into()));
    }
    if cfg.get_password().is_some() {
        out.push(("password", "********".into()));
    }
    out.extend(tls::rendered(&conn.tls));
    if let Some(t) = cfg.get_connect_timeout() {
        out.push(("connect_timeout", t.as_secs().to_string()));
    }
    if let Some(a) = cfg.get_application_name() {
        out.push(("application_name", a.into()));
    }
    if let Some(o) = cfg.get_options() {
        out.push(("options", o.into()));
    }
    let quoted = out.into_iter().map(|(k, v)| {
        if k == "password" {
            format!("{k}={v}")
        } else {
            format!("{k}={}", quote(&v))
        }
    });
    quoted.collect::<Vec<_>>().join(" ")
}

fn uri_split(s: &str) -> Option<(&str, Option<&str>)> {
    ["postgresql://", "postgres://"]
        .iter()
        .find(|p| s.starts_with(*p))?;
    Some(match s.split_once('?') {
        Some((base, q)) => (base, Some(q)),
        None => (s, None),
    })
}

/// key=value pairs exactly as tokio-postgres tokenizes them; None where it would fail to parse.
fn kv_pairs(s: &str) -> Option<Vec<(String, String)>> {
    let mut it = s.chars().peekable();
    let mut pairs = Vec::new();
    loop {
        while it.next_if(|c| c.is_whitespace()).is_some() {}
        let mut key = String::new();
        while let Some(c) = it.next_if(|c| !c.is_whitespace() && *c != '=') {
            key.push(c);
        }
        if key.is_empty() {
            return Some(pairs); // like tokio-postgres, which stops at the first non-keyword
        }
        while it.next_if(|c| c.is_whitespace()).is_some() {}
        it.next_if_eq(&'=')?;
        while it.next_if(|c| c.is_whitespace()).is_some() {}
        let quoted = it.next_if_eq(&'\'').is_some();
        let mut value = String::new();
        loop {
            match it.peek() {
                None if quoted => return None,
                None => break,
                Some('\'') if quoted => {
                    it.next();
                    break;
                }
                Some(c) if c.is_whitespace() && !quoted => break,
                Some(_) => {
                    let c = it.next()?;
                    match c {
                        '\\' => value.extend(it.next()),
                        c => value.push(c),
                    }
                }
            }
        }
        if value.is_empty() && !quoted {
            return None;
        }
        pairs.push((key, value));
    }
}

fn kv_render(pairs: &[(String, String)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={}", quote(v)))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Takes the TLS keys out of a conninfo, to be applied after parsing: tokio-postgres rejects
/// sslrootcert, sslcert, sslkey and the sslmodes allow, verify-ca and verify-full, and its parsed
/// Config cannot tell `sslmode=prefer` from "unset" (which decides whether PGSSLMODE applies).
/// The last occurrence of a key wins, as in libpq. Strings without them are returned untouched.
fn take_tls_params(conninfo: &str) -> (String, TlsParams) {
    let mut params = TlsParams::default();
    if let Some((base, query)) = uri_split(conninfo) {
        let Some(query) = query else {
            return (conninfo.into(), params);
        };
        let mut rest = Vec::new();
        for p in query.split('&') {
            match p.split_once('=') {
                Some((k, v)) if TLS_KEYS.contains(&k) => params.set(k, percent_decode(v)),
                _ => rest.push(p),
            }
        }
        if params == TlsParams::default() {
            return (conninfo.into(), params);
        }
        return match rest.is_empty() {
            true => (base.into(), params),
            false => (format!("{base}?{}", rest.join("&")), params),
        };
    }
    match kv_pairs(conninfo) {
        Some(pairs) if pairs.iter().any(|(k, _)| TLS_KEYS.contains(&k.as_str())) => {
            let (tls, rest): (Vec<_>, Vec<_>) = pairs
                .into_iter()
                .partition(|(k, _)| TLS_KEYS.contains(&k.as_str()));
            for (k, v) in tls {
                params.set(&k, v);
            }
            (kv_render(&rest), params)
        }
        _ => (conninfo.into(), params),
    }
}

/// `%XX` escapes of a URI query value (a path with spaces, say); invalid escapes stay as written.
fn percent_decode(v: &str) -> String {
    let b = v.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match (
            b[i],
            b.get(i + 1).copied().and_then(hex),
            b.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (c, _, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Adds `key=value` to a conninfo (either format) unless it already sets `key`.
pub(crate) fn with_default_param(conninfo: &str, key: &str, value: &str) -> String {
    if let Some((_, query)) = uri_split(conninfo) {
        let mut params = query.unwrap_or("").split('&');
        if params.any(|p| p.split_once('=').is_some_and(|(k, _)| k == key)) {
            return conninfo.into();
        }
        let sep = match query {
            None => "?",
            Some(q) if q.is_empty() || q.ends_with('&') => "",
            Some(_) => "&",
        };
        return format!("{conninfo}{sep}{key}={value}");
    }
    match kv_pairs(conninfo) {
        Some(pairs) if pairs.iter().any(|(k, _)| k == key) => conninfo.into(),
        // Re-rendered rather than appended: a trailing backslash would escape the separating space.
        Some(mut pairs) => {
            pairs.push((key.into(), value.into()));
            kv_render(&pairs)
        }
        None => conninfo.into(), // unparsable: left for resolve to report
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::net::IpAddr;
    use std::path::PathBuf;

    /// An environment with only the given variables, and no pgpass file unless PGPASSFILE is given.
    fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let mut m: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        m.entry("USER".into()).or_insert_with(|| "osuser".into());
        m.entry("PGPASSFILE".into())
            .or_insert_with(|| "/nonexistent/pgpass".into());
        move |k| m.get(k).cloned()
    }

    fn res(conninfo: &str, vars: &[(&str, &str)]) -> ConnConfig {
        resolve_conninfo(conninfo, &env(vars)).unwrap()
    }

    fn tcp(cfg: &Config) -> Vec<String> {
        cfg.get_hosts()
            .iter()
            .map(|h| match h {
                Host::Tcp(h) => h.clone(),
                Host::Unix(p) => format!("unix:{}", p.display()),
            })
            .collect()
    }

    #[test]
    fn key_value_and_uri() {
        let c = res(
            "host=db1 port=6543 dbname=pgbackman user=pgbackman connect_timeout=4 application_name='my app'",
            &[],
        );
        assert_eq!(tcp(&c), ["db1"]);
        assert_eq!(
            (c.get_ports(), c.get_user(), c.get_dbname()),
            (&[6543][..], Some("pgbackman"), Some("pgbackman"))
        );
        assert_eq!(c.get_connect_timeout(), Some(&Duration::from_secs(4)));
        assert_eq!(c.get_application_name(), Some("my app"));

        let c = res(
            "postgresql://u:p%40ss@db2:5433/cat?sslmode=verify-full&application_name=x",
            &[],
        );
        assert_eq!(tcp(&c), ["db2"]);
        assert_eq!(
            (c.get_ports(), c.get_user(), c.get_dbname()),
            (&[5433][..], Some("u"), Some("cat"))
        );
        assert_eq!(c.get_password(), Some(&b"p@ss"[..]));
        assert_eq!(c.get_ssl_mode(), SslMode::Require);
        assert_eq!(c.get_application_name(), Some("x"));

        let c = res("postgres:///db?host=/var/lib/pg", &[]);
        assert_eq!(tcp(&c), ["unix:/var/lib/pg"]);
        assert_eq!(c.get_dbname(), Some("db"));
    }

    #[test]
    fn parse_errors_say_what_to_write_and_hide_the_string() {
        for bad in [
            "host=db1 port=notaport password=s3cret",
            "host",
            "host='x password=s3cret",
            "bogus=1 password=s3cret",
        ] {
            let e = resolve_conninfo(bad, &env(&[])).unwrap_err().to_string();
            assert!(e.contains("key=value") && !e.contains("s3cret"), "{e}");
        }
        let e = resolve_conninfo("host=x sslmode=sometimes", &env(&[]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("sometimes") && e.contains("verify-full"), "{e}");
    }

    #[test]
    fn sslmode_mapping_and_precedence() {
        let m = |s| ssl_mode(s).unwrap();
        assert_eq!(
            [
                "disable",
                "allow",
                "prefer",
                "require",
                "verify-ca",
                "verify-full"
            ]
            .map(m),
            [
                SslMode::Disable,
                SslMode::Prefer,
                SslMode::Prefer,
                SslMode::Require,
                SslMode::Require,
                SslMode::Require
            ]
        );
        assert_eq!(
            res("host=x", &[("PGSSLMODE", "disable")]).get_ssl_mode(),
            SslMode::Disable
        );
        // An explicit prefer beats PGSSLMODE even though it is tokio-postgres's default.
        assert_eq!(
            res("host=x sslmode=prefer", &[("PGSSLMODE", "require")]).get_ssl_mode(),
            SslMode::Prefer
        );
        assert_eq!(
            res("host=x sslmode=allow sslmode=verify-ca", &[]).get_ssl_mode(),
            SslMode::Require
        );
        assert_eq!(
            res("postgresql://x?sslmode=disable", &[]).get_ssl_mode(),
            SslMode::Disable
        );
        let e = resolve_conninfo("host=x", &env(&[("PGSSLMODE", "nope")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("PGSSLMODE") && e.contains("nope"), "{e}");
    }

    #[test]
    fn tls_keys_are_taken_out_and_resolved() {
        use crate::tls::{RootCert, SslMode as Libpq};
        let c = res(
            "host=db sslmode=verify-full sslrootcert='/etc/my ca.crt' sslcert=/c.crt sslkey=/c.key user=u",
            &[("HOME", "/h")],
        );
        assert_eq!(tcp(&c), ["db"]);
        assert_eq!(c.get_user(), Some("u"));
        assert_eq!(c.tls.mode, Libpq::VerifyFull);
        assert_eq!(c.get_ssl_mode(), SslMode::Require);
        assert_eq!(
            c.tls.root_cert,
            Some(RootCert::File {
                path: "/etc/my ca.crt".into(),
                given: true
            })
        );
        assert_eq!(
            (c.tls.cert.as_deref(), c.tls.key.as_deref()),
            (
                Some(std::path::Path::new("/c.crt")),
                Some(std::path::Path::new("/c.key"))
            )
        );
        assert_eq!(
            redacted(&c),
            "host=db port=5432 user=u dbname=u sslmode=verify-full sslrootcert='/etc/my ca.crt'"
        );
        // URI, with a percent-encoded path; the default root file is not shown.
        let c = res(
            "postgresql://u@db/cat?sslrootcert=%2Fca%20dir%2Froot.crt&sslmode=verify-ca&application_name=x",
            &[],
        );
        assert_eq!(c.tls.mode, Libpq::VerifyCa);
        assert_eq!(c.get_application_name(), Some("x"));
        assert_eq!(
            c.tls.root_cert,
            Some(RootCert::File {
                path: "/ca dir/root.crt".into(),
                given: true
            })
        );
        let c = res("host=db sslmode=allow", &[("HOME", "/h")]);
        assert_eq!(c.tls.mode, Libpq::Allow);
        assert_eq!(
            redacted(&c),
            "host=db port=5432 user=osuser dbname=osuser sslmode=allow"
        );
        // The environment, the libpq way.
        let c = res(
            "host=db",
            &[("PGSSLROOTCERT", "system"), ("PGSSLCERT", "/e.crt")],
        );
        assert_eq!(
            (c.tls.mode, c.tls.root_cert.clone()),
            (Libpq::VerifyFull, Some(RootCert::System))
        );
        assert_eq!(c.tls.cert.as_deref(), Some(std::path::Path::new("/e.crt")));
        let e = resolve_conninfo("host=db sslmode=require sslrootcert=system", &env(&[]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("verify-full"), "{e}");
        // A node takes the files from the environment (as its pg_dump does), not PGSSLMODE.
        let r = node_config_with(
            "n",
            5432,
            "u",
            "d",
            "verify-ca",
            &env(&[
                ("PGSSLROOTCERT", "/ca.crt"),
                ("PGSSLMODE", "disable"),
                ("HOME", "/h"),
            ]),
        )
        .unwrap();
        assert_eq!(r.config.tls.mode, Libpq::VerifyCa);
        assert_eq!(
            r.config.tls.root_cert,
            Some(RootCert::File {
                path: "/ca.crt".into(),
                given: true
            })
        );
        assert_eq!(
            r.config.tls.key.as_deref(),
            Some(std::path::Path::new("/h/.postgresql/postgresql.key"))
        );
        let r = node_config_with("n", 5432, "u", "d", "", &env(&[("PGSSLMODE", "disable")]));
        assert_eq!(r.unwrap().config.tls.mode, Libpq::Prefer);
    }

    #[test]
    fn environment_defaults() {
        // Nothing anywhere: default socket dir, 5432, OS user, dbname = user.
        let c = res("", &[]);
        assert_eq!(tcp(&c), [format!("unix:{}", default_socket_dir())]);
        assert_eq!(
            (c.get_ports(), c.get_user(), c.get_dbname()),
            (&[5432][..], Some("osuser"), Some("osuser"))
        );
        assert_eq!(
            (
                c.get_password(),
                c.get_connect_timeout(),
                c.get_application_name()
            ),
            (None, None, None)
        );
        // LOGNAME when USER is empty.
        assert_eq!(
            res("", &[("USER", ""), ("LOGNAME", "lg")]).get_user(),
            Some("lg")
        );

        let vars = [
            ("PGHOST", "h1,h2"),
            ("PGHOSTADDR", "10.0.0.1,10.0.0.2"),
            ("PGPORT", "5433"),
            ("PGUSER", "pu"),
            ("PGDATABASE", "pd"),
            ("PGSSLMODE", "require"),
            ("PGCONNECT_TIMEOUT", "9"),
            ("PGAPPNAME", "pa"),
            ("PGOPTIONS", "-c work_mem=1MB"),
            ("PGPASSWORD", "pw"),
        ];
        let c = res("", &vars);
        assert_eq!(tcp(&c), ["h1", "h2"]);
        assert_eq!(
            c.get_hostaddrs(),
            [
                "10.0.0.1".parse::<IpAddr>().unwrap(),
                "10.0.0.2".parse().unwrap()
            ]
        );
        assert_eq!(
            (c.get_ports(), c.get_user(), c.get_dbname()),
            (&[5433][..], Some("pu"), Some("pd"))
        );
        assert_eq!(
            (c.get_ssl_mode(), c.get_connect_timeout()),
            (SslMode::Require, Some(&Duration::from_secs(9)))
        );
        assert_eq!(
            (c.get_application_name(), c.get_options()),
            (Some("pa"), Some("-c work_mem=1MB"))
        );
        assert_eq!(c.get_password(), Some(&b"pw"[..]));
        // PGUSER alone also names the database.
        assert_eq!(res("", &[("PGUSER", "pu")]).get_dbname(), Some("pu"));
        // The conninfo always wins.
        let c = res(
            "host=c hostaddr=10.1.1.1 port=1 user=cu dbname=cd connect_timeout=2 application_name=ca password=cp",
            &vars,
        );
        assert_eq!(
            (tcp(&c), c.get_hostaddrs()),
            (
                vec!["c".to_string()],
                &["10.1.1.1".parse::<IpAddr>().unwrap()][..]
            )
        );
        assert_eq!(
            (c.get_ports(), c.get_user(), c.get_dbname()),
            (&[1][..], Some("cu"), Some("cd"))
        );
        assert_eq!(
            (c.get_connect_timeout(), c.get_application_name()),
            (Some(&Duration::from_secs(2)), Some("ca"))
        );
        assert_eq!(c.get_password(), Some(&b"cp"[..]));
        // hostaddr alone: no socket dir is added (libpq connects to the address).
        let c = res("hostaddr=127.0.0.1", &[]);
        assert!(c.get_hosts().is_empty());
        // PGCONNECT_TIMEOUT=0 means forever.
        assert_eq!(
            res("", &[("PGCONNECT_TIMEOUT", "0")]).get_connect_timeout(),
            None
        );
    }

    #[test]
    fn environment_errors_name_the_variable() {
        for (k, v) in [
            ("PGPORT", "x"),
            ("PGHOSTADDR", "db1"),
            ("PGCONNECT_TIMEOUT", "soon"),
        ] {
            let e = resolve_conninfo("", &env(&[(k, v)]))
                .unwrap_err()
                .to_string();
            assert!(e.contains(k) && e.contains(v) && e.contains("unset"), "{e}");
        }
        let e = resolve_conninfo("host=a,b", &env(&[("PGHOSTADDR", "10.0.0.1")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("hostaddr"), "{e}");
    }

    #[test]
    fn redaction_never_prints_the_password() {
        let c = res("host=/tmp port=5432 user=postgres dbname=pgbackman", &[]);
        assert_eq!(
            redacted(&c),
            "host=/tmp port=5432 user=postgres dbname=pgbackman"
        );
        for s in [
            "host=db password=s3cret",
            "postgresql://u:s3cret@db/x",
            "host=db",
        ] {
            let r = redacted(&res(s, &[("PGPASSWORD", "s3cret")]));
            assert!(
                !r.contains("s3cret") && r.contains("password=********"),
                "{r}"
            );
        }
        let r = redacted(&res(
            "host=db sslmode=disable application_name='a b' connect_timeout=3",
            &[],
        ));
        assert_eq!(
            r,
            "host=db port=5432 user=osuser dbname=osuser sslmode=disable connect_timeout=3 application_name='a b'"
        );
        // The rendering parses back to the same target.
        let again = res(&r, &[]);
        assert_eq!(redacted(&again), r);
    }

    #[test]
    fn node_config_uses_catalog_columns_and_pgpass_only() {
        let vars = [
            ("PGPASSWORD", "leak"),
            ("PGHOST", "elsewhere"),
            ("PGPORT", "1"),
            ("PGCONNECT_TIMEOUT", "5"),
        ];
        let r = node_config_with(
            "node1.example.org",
            5433,
            "postgres",
            "template1",
            "verify-full",
            &env(&vars),
        )
        .unwrap();
        let c = r.config;
        assert_eq!(tcp(&c), ["node1.example.org"]);
        assert_eq!(
            (c.get_ports(), c.get_user(), c.get_dbname()),
            (&[5433][..], Some("postgres"), Some("template1"))
        );
        assert_eq!(
            (c.get_ssl_mode(), c.get_password()),
            (SslMode::Require, None)
        );
        assert_eq!(c.get_connect_timeout(), Some(&Duration::from_secs(5)));
        assert_eq!(
            node_config_with("n", 5432, "u", "d", "", &env(&[]))
                .unwrap()
                .config
                .get_ssl_mode(),
            SslMode::Prefer
        );

        let e = node_config_with("n", 5432, "u", "d", "always", &env(&[]))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("always") && e.contains("update_pgsql_node"),
            "{e}"
        );
        let e = node_config_with("n", 5432, "", "d", "prefer", &env(&[]))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("admin user") && e.contains("update_pgsql_node"),
            "{e}"
        );

        let dir = tempfile::tempdir().unwrap();
        let pass: PathBuf = dir.path().join("pgpass");
        std::fs::write(&pass, "node1.example.org:5433:*:postgres:nodepw\n").unwrap();
        crate::pgpass::tests::chmod(&pass, 0o600);
        let pf = pass.to_str().unwrap();
        let r = node_config_with(
            "node1.example.org",
            5433,
            "postgres",
            "x",
            "prefer",
            &env(&[("PGPASSFILE", pf)]),
        )
        .unwrap();
        assert_eq!(r.config.get_password(), Some(&b"nodepw"[..]));
    }

    #[test]
    fn kv_tokenizer_matches_tokio_postgres() {
        let ok = [
            "user=1 dbname = '2 3' options=x\\ y application_name=''",
            "  ",
            "",
            "user='it\\'s'",
            "=1",
            "user='x'dbname=y",
        ];
        for s in ok
            .into_iter()
            .chain(["user=1 dbname", "user=", "user='x", "user=\\", "user='x\\"])
        {
            assert_eq!(kv_pairs(s).is_some(), Config::from_str(s).is_ok(), "{s}");
        }
        assert_eq!(
            kv_pairs("a=1 b = '2 3' c=x\\ y d=''").unwrap(),
            [("a", "1"), ("b", "2 3"), ("c", "x y"), ("d", "")]
                .map(|(k, v)| (k.to_string(), v.to_string()))
        );
        assert_eq!(
            with_default_param("host=a\\", "connect_timeout", "7"),
            "host=a connect_timeout=7"
        );
    }
}
