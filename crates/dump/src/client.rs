//! Which client tools to run: their major version, and the choice among configured majors.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::error::DumpError;

/// Runs `<bin_dir>/<program> --version` (argv only) and returns its first output line, e.g.
/// `pg_dump (PostgreSQL) 15.18 (Debian 15.18-1.pgdg120+1)`.
pub fn tool_version(bin_dir: &Path, program: &str) -> Result<String, DumpError> {
    let path = bin_dir.join(program);
    let err = |reason: String| DumpError::ClientVersion {
        program: path.clone(),
        reason,
    };
    let out = Command::new(&path)
        .arg("--version")
        .stdin(Stdio::null())
        .env_remove("PGPASSWORD")
        .output()
        .map_err(|e| err(e.to_string()))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        return Err(err(format!("{} ({})", out.status, stderr.trim())));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().next().unwrap_or("").trim().to_string();
    parse_major(&line).ok_or_else(|| err(format!("unexpected output {line:?}")))?;
    Ok(line)
}

/// The major version in a `--version` line: `pg_dump (PostgreSQL) 15.18 (…)` → 15,
/// `pg_dump (PostgreSQL) 9.6.24` → 9 (9.x majors are all reported as 9), `17devel` → 17.
pub fn parse_major(line: &str) -> Option<u32> {
    let after = line.split_once(')').map_or(line, |(_, rest)| rest).trim();
    let version = after.split_whitespace().next()?;
    let digits: String = version.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// Major version of the `pg_dump` in `bin_dir` (runs `pg_dump --version`).
pub fn client_major(bin_dir: &Path) -> Result<u32, DumpError> {
    let line = tool_version(bin_dir, "pg_dump")?;
    parse_major(&line).ok_or_else(|| DumpError::ClientVersion {
        program: bin_dir.join("pg_dump"),
        reason: format!("unexpected output {line:?}"),
    })
}

/// Major of a server from `server_version_num` (`150004` → 15, `90624` → 9).
pub fn server_major(server_version_num: i32) -> u32 {
    u32::try_from(server_version_num / 10000).unwrap_or(0)
}

/// Chooses the client tools for a server of `server_major` among `bin_dirs` (major → bin dir):
/// `requested` when given (it must be configured and not older than the server), else the
/// smallest configured major that is not older than the server. pg_dump can dump older servers
/// but not newer ones, and the closest major gives the dump closest to the source.
pub fn pick_client(
    bin_dirs: &BTreeMap<u32, PathBuf>,
    server_major: u32,
    requested: Option<u32>,
) -> Result<(u32, PathBuf), DumpError> {
    let available: Vec<u32> = bin_dirs.keys().copied().collect();
    match requested {
        Some(r) if r < server_major => Err(DumpError::RequestedTooOld {
            requested: r,
            server_major,
            available,
        }),
        Some(r) => bin_dirs
            .get(&r)
            .map(|d| (r, d.clone()))
            .ok_or(DumpError::RequestedMissing {
                requested: r,
                server_major,
                available,
            }),
        None => bin_dirs
            .range(server_major..)
            .next()
            .map(|(m, d)| (*m, d.clone()))
            .ok_or(DumpError::NoSuitableClient {
                server_major,
                available,
            }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn majors_from_version_lines() {
        assert_eq!(
            parse_major("pg_dump (PostgreSQL) 15.18 (Debian 15.18-1.pgdg120+1)"),
            Some(15)
        );
        assert_eq!(parse_major("pg_dumpall (PostgreSQL) 9.6.24"), Some(9));
        assert_eq!(parse_major("pg_dump (PostgreSQL) 17devel"), Some(17));
        assert_eq!(parse_major("pg_dump (PostgreSQL) 18beta1"), Some(18));
        assert_eq!(parse_major("something else"), None);
        assert_eq!(server_major(150004), 15);
        assert_eq!(server_major(100023), 10);
        assert_eq!(server_major(90624), 9);
    }
}
