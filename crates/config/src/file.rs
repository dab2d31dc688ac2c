//! The TOML config file shared by the shell and the agent, and where the catalog conninfo comes from.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::{ConfigError, Env, conninfo};

/// The whole config file. Missing sections take their defaults; unknown keys are errors (a typo must
/// not silently fall back to a default).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    #[serde(default)]
    pub catalog: CatalogSection,
    #[serde(default)]
    pub shell: ShellSection,
    /// Deadlines of the connections to PgSQL nodes (see [`crate::NodeTimeouts`]).
    #[serde(default)]
    pub nodes: crate::NodesSection,
    /// Opaque for now: the agent defines and validates its own section.
    #[serde(default)]
    pub agent: Option<toml::Table>,
    /// The file this was read from; None when no file was found (all defaults).
    #[serde(skip)]
    pub path: Option<PathBuf>,
    /// `path` is a PgBackMan 1.x INI file (`crate::legacy`), read because no TOML file exists.
    #[serde(skip)]
    pub legacy: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CatalogSection {
    /// libpq key=value string or postgresql:// URI.
    pub conninfo: Option<String>,
    /// Seconds; [`catalog_conninfo`] adds it to a conninfo that has no connect_timeout of its own.
    pub connect_timeout: Option<u64>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShellSection {
    /// This host's identity as a backup server; callers default it to [`crate::host_fqdn`].
    pub backup_server: Option<String>,
    /// table | csv | json (checked when loading).
    pub output_format: Option<String>,
    /// May start with `~/`; expanded by the caller.
    pub history_file: Option<String>,
    /// The shell's display zone (an IANA name, or local); checked by the shell.
    pub timezone: Option<String>,
}

/// The default search path: the user's file ($XDG_CONFIG_HOME, else $HOME/.config), then /etc.
pub fn default_candidates(env: Env) -> Vec<PathBuf> {
    let user_dir = env("XDG_CONFIG_HOME")
        .filter(|d| d.starts_with('/')) // the XDG spec says relative values are ignored
        .map(PathBuf::from)
        .or_else(|| {
            env("HOME")
                .filter(|h| !h.is_empty())
                .map(|h| PathBuf::from(h).join(".config"))
        });
    user_dir
        .map(|d| d.join("pgbackman/pgbackman.toml"))
        .into_iter()
        .chain([PathBuf::from("/etc/pgbackman/pgbackman.toml")])
        .collect()
}

/// Where the agent installs its own file (the Debian package and etc/pgbackman-agent.toml).
pub const AGENT_CONFIG: &str = "/etc/pgbackman/pgbackman-agent.toml";

/// The agent's search path: its own [`AGENT_CONFIG`], then the shell's files (which earlier
/// agents read, so that an installation relying on them keeps working).
pub fn agent_candidates(env: Env) -> Vec<PathBuf> {
    std::iter::once(PathBuf::from(AGENT_CONFIG))
        .chain(default_candidates(env))
        .collect()
}

/// The agent's [`load`]: `--config FILE` if given, else the first existing file of
/// [`agent_candidates`].
pub fn load_agent(explicit: Option<&Path>) -> Result<FileConfig, ConfigError> {
    load_from(&agent_candidates(&crate::real_env), explicit)
}

/// Loads `--config FILE` if given, else the first existing file of [`default_candidates`], else
/// PgBackMan 1.x's `pgbackman.conf` ([`crate::legacy_candidates`]; `FileConfig::legacy` says so).
pub fn load(explicit: Option<&Path>) -> Result<FileConfig, ConfigError> {
    load_with_legacy(
        &default_candidates(&crate::real_env),
        &crate::legacy_candidates(&crate::real_env),
        explicit,
    )
}

/// [`load`] with injected search paths. A user's own file wins over a system-wide one whatever
/// its format: `~/.pgbackman/pgbackman.conf` beats `/etc/pgbackman/pgbackman.toml` (which the
/// package installs, all commented out), so a PgBackMan user keeps their settings after
/// installing the package.
pub fn load_with_legacy(
    candidates: &[PathBuf],
    legacy: &[PathBuf],
    explicit: Option<&Path>,
) -> Result<FileConfig, ConfigError> {
    if explicit.is_some() {
        return load_from(candidates, explicit);
    }
    let system = |p: &&PathBuf| p.starts_with("/etc");
    let (sys_toml, user_toml): (Vec<PathBuf>, Vec<PathBuf>) =
        candidates.iter().cloned().partition(|p| system(&p));
    let (sys_old, user_old): (Vec<PathBuf>, Vec<PathBuf>) =
        legacy.iter().cloned().partition(|p| system(&p));
    for (toml, old) in [(user_toml, user_old), (sys_toml, sys_old)] {
        let cfg = load_from(&toml, None)?;
        if cfg.path.is_some() {
            return Ok(cfg);
        }
        if let Some(old) = crate::find_legacy(&old)? {
            return Ok(old.file_config());
        }
    }
    load_from(&[], None)
}

/// [`load`] with an injected search path. An explicit file must exist; a candidate that does not
/// exist is skipped, but one that exists and cannot be read is an error (never silently ignored).
pub fn load_from(
    candidates: &[PathBuf],
    explicit: Option<&Path>,
) -> Result<FileConfig, ConfigError> {
    let read = |path: &Path| std::fs::read_to_string(path);
    let (path, text) = match explicit {
        Some(p) => match read(p) {
            Ok(t) => (p.to_path_buf(), t),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(ConfigError::Missing {
                    path: p.to_path_buf(),
                });
            }
            Err(err) => {
                return Err(ConfigError::Read {
                    path: p.to_path_buf(),
                    err,
                });
            }
        },
        None => {
            let mut found = None;
            for p in candidates {
                match read(p) {
                    Ok(t) => {
                        found = Some((p.clone(), t));
                        break;
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(err) => {
                        return Err(ConfigError::Read {
                            path: p.clone(),
                            err,
                        });
                    }
                }
            }
            match found {
                Some(f) => f,
                None => return Ok(FileConfig::default()),
            }
        }
    };
    parse(&path, &text)
}

fn parse(path: &Path, text: &str) -> Result<FileConfig, ConfigError> {
    let mut cfg: FileConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
        path: path.to_path_buf(),
        // Line/column plus toml's message, but not toml's source snippet: the offending line may
        // be a conninfo holding a password.
        message: match e.span() {
            Some(span) => {
                let before = &text[..span.start.min(text.len())];
                let line = before.matches('\n').count() + 1;
                let col = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
                format!("line {line}, column {col}: {}", e.message().trim_end())
            }
            None => e.message().trim_end().to_string(),
        },
    })?;
    if let Some(f) = &cfg.shell.output_format
        && !matches!(f.as_str(), "table" | "csv" | "json")
    {
        return Err(ConfigError::Value {
            path: path.to_path_buf(),
            key: "[shell] output_format",
            value: f.clone(),
            hint: "use table, csv or json",
        });
    }
    // A bad [nodes] value is refused when the file is read, not at the first node connection.
    crate::NodeTimeouts::resolve(&cfg.nodes, Some(path), &|_| None)?;
    cfg.path = Some(path.to_path_buf());
    Ok(cfg)
}

/// Where the catalog connection string came from (shown by show_pgbackman_config).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CatalogSource {
    Flag,
    Env,
    File(PathBuf),
}

impl fmt::Display for CatalogSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CatalogSource::Flag => f.write_str("--catalog"),
            CatalogSource::Env => f.write_str("PGBACKMAN_CATALOG"),
            CatalogSource::File(p) => write!(f, "{} [catalog] conninfo", p.display()),
        }
    }
}

/// The catalog conninfo: `--catalog`, else `PGBACKMAN_CATALOG` (empty counts as unset), else the
/// file. `[catalog] connect_timeout` is appended when the chosen conninfo has none, so it beats
/// PGCONNECT_TIMEOUT but never an explicit `connect_timeout=` in the conninfo.
pub fn catalog_conninfo(
    flag: Option<&str>,
    env: Option<String>,
    file: &FileConfig,
) -> Result<(String, CatalogSource), ConfigError> {
    let (conninfo, source) = if let Some(f) = flag {
        (f.to_string(), CatalogSource::Flag)
    } else if let Some(e) = env.filter(|e| !e.is_empty()) {
        (e, CatalogSource::Env)
    } else if let Some(c) = &file.catalog.conninfo {
        (
            c.clone(),
            CatalogSource::File(file.path.clone().unwrap_or_default()),
        )
    } else {
        return Err(ConfigError::NoCatalog);
    };
    let conninfo = match file.catalog.connect_timeout {
        Some(t) => conninfo::with_default_param(&conninfo, "connect_timeout", &t.to_string()),
        None => conninfo,
    };
    Ok((conninfo, source))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn write(dir: &Path, name: &str, body: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, body).unwrap();
        p
    }

    #[test]
    fn lookup_order() {
        let d = tempfile::tempdir().unwrap();
        let user = write(d.path(), "user.toml", "[shell]\noutput_format = \"csv\"\n");
        let etc = write(d.path(), "etc.toml", "[shell]\noutput_format = \"json\"\n");
        let explicit = write(d.path(), "x.toml", "[catalog]\nconninfo = \"host=x\"\n");
        let missing = d.path().join("nope.toml");

        let c = load_from(&[user.clone(), etc.clone()], None).unwrap();
        assert_eq!(
            (c.shell.output_format.as_deref(), c.path.as_ref()),
            (Some("csv"), Some(&user))
        );
        let c = load_from(&[missing.clone(), etc.clone()], None).unwrap();
        assert_eq!(c.path.as_ref(), Some(&etc));
        let c = load_from(std::slice::from_ref(&user), Some(&explicit)).unwrap();
        assert_eq!(c.catalog.conninfo.as_deref(), Some("host=x"));
        assert_eq!(c.path.as_ref(), Some(&explicit));
        // Nothing found: all defaults, no path.
        assert_eq!(
            load_from(std::slice::from_ref(&missing), None).unwrap(),
            FileConfig::default()
        );
        // An explicit file must exist.
        let e = load_from(&[user], Some(&missing)).unwrap_err();
        assert!(matches!(e, ConfigError::Missing { .. }));
        assert!(
            e.to_string().contains("nope.toml") && e.to_string().contains("--config"),
            "{e}"
        );
        // A candidate that exists but cannot be read (a directory here) is reported, not skipped.
        let e = load_from(&[d.path().to_path_buf(), etc], None).unwrap_err();
        assert!(matches!(e, ConfigError::Read { .. }), "{e}");
    }

    #[test]
    fn default_candidates_follow_xdg_then_home() {
        let env =
            |m: HashMap<&'static str, &'static str>| move |k: &str| m.get(k).map(|v| v.to_string());
        let c = default_candidates(&env(HashMap::from([
            ("HOME", "/h"),
            ("XDG_CONFIG_HOME", "/x"),
        ])));
        assert_eq!(
            c,
            [
                PathBuf::from("/x/pgbackman/pgbackman.toml"),
                "/etc/pgbackman/pgbackman.toml".into()
            ]
        );
        let c = default_candidates(&env(HashMap::from([
            ("HOME", "/h"),
            ("XDG_CONFIG_HOME", "rel"),
        ])));
        assert_eq!(c[0], PathBuf::from("/h/.config/pgbackman/pgbackman.toml"));
        assert_eq!(
            default_candidates(&env(HashMap::new())),
            [PathBuf::from("/etc/pgbackman/pgbackman.toml")]
        );
    }

    #[test]
    fn the_agent_reads_its_own_file_first_then_the_shells() {
        let env = |k: &str| (k == "HOME").then(|| "/h".to_string());
        assert_eq!(
            agent_candidates(&env),
            [
                PathBuf::from("/etc/pgbackman/pgbackman-agent.toml"),
                "/h/.config/pgbackman/pgbackman.toml".into(),
                "/etc/pgbackman/pgbackman.toml".into()
            ]
        );
    }

    #[test]
    fn full_file_and_agent_section() {
        let d = tempfile::tempdir().unwrap();
        let p = write(
            d.path(),
            "c.toml",
            r#"
[catalog]
conninfo = "host=db1 port=5432 dbname=pgbackman user=pgbackman"
connect_timeout = 10
[shell]
backup_server = "bs1.example.org"
output_format = "table"
history_file = "~/.local/share/pgbackman/history"
[agent]
anything = { goes = 1 }
"#,
        );
        let c = load_from(&[], Some(&p)).unwrap();
        assert_eq!(c.catalog.connect_timeout, Some(10));
        assert_eq!(c.shell.backup_server.as_deref(), Some("bs1.example.org"));
        assert_eq!(
            c.shell.history_file.as_deref(),
            Some("~/.local/share/pgbackman/history")
        );
        assert!(c.agent.unwrap().contains_key("anything"));
    }

    #[test]
    fn errors_name_file_key_and_position() {
        let d = tempfile::tempdir().unwrap();
        let e = |body: &str| {
            load_from(&[], Some(&write(d.path(), "bad.toml", body)))
                .unwrap_err()
                .to_string()
        };

        let m = e("[catalog]\nconninfo = \"x\"\n\nbogus = 1\n");
        assert!(
            m.contains("bad.toml") && m.contains("bogus") && m.contains("line 4"),
            "{m}"
        );
        let m = e("[catalgo]\n");
        assert!(m.contains("catalgo") && m.contains("line 1"), "{m}");
        let m = e("[shell]\nhistroy_file = \"x\"\n");
        assert!(m.contains("histroy_file"), "{m}");
        let m = e("[shell]\noutput_format = \"xml\"\n");
        assert!(
            m.contains("output_format") && m.contains("xml") && m.contains("table, csv or json"),
            "{m}"
        );
        // A syntax error shows line and column but never echoes the line (it may hold a password).
        let m = e("[catalog]\nconninfo = \"host=x password=s3cret\n");
        assert!(
            m.contains("bad.toml") && m.contains("line 2, column"),
            "{m}"
        );
        assert!(!m.contains("s3cret"), "{m}");
    }

    #[test]
    fn catalog_source_precedence() {
        let file = FileConfig {
            catalog: CatalogSection {
                conninfo: Some("host=file".into()),
                connect_timeout: None,
            },
            path: Some("/etc/pgbackman/pgbackman.toml".into()),
            ..Default::default()
        };
        let env = || Some("host=env".to_string());
        assert_eq!(
            catalog_conninfo(Some("host=flag"), env(), &file).unwrap(),
            ("host=flag".into(), CatalogSource::Flag)
        );
        assert_eq!(
            catalog_conninfo(None, env(), &file).unwrap(),
            ("host=env".into(), CatalogSource::Env)
        );
        let (c, s) = catalog_conninfo(None, Some(String::new()), &file).unwrap();
        assert_eq!(
            (c.as_str(), s),
            (
                "host=file",
                CatalogSource::File("/etc/pgbackman/pgbackman.toml".into())
            )
        );
        let e = catalog_conninfo(None, None, &FileConfig::default()).unwrap_err();
        assert!(
            e.to_string().contains("pgbackman quickstart")
                && e.to_string().contains("PGBACKMAN_CATALOG")
        );
    }

    #[test]
    fn file_connect_timeout_is_a_default_only() {
        let mut file = FileConfig::default();
        file.catalog.connect_timeout = Some(7);
        let c = |s: &str| catalog_conninfo(Some(s), None, &file).unwrap().0;
        assert_eq!(c("host=a"), "host=a connect_timeout=7");
        assert_eq!(c("host=a connect_timeout=3"), "host=a connect_timeout=3");
        assert_eq!(
            c("postgresql://h/db"),
            "postgresql://h/db?connect_timeout=7"
        );
        assert_eq!(
            c("postgresql://h/db?sslmode=disable"),
            "postgresql://h/db?sslmode=disable&connect_timeout=7"
        );
        assert_eq!(
            c("postgresql://h/db?connect_timeout=2"),
            "postgresql://h/db?connect_timeout=2"
        );
    }
}
