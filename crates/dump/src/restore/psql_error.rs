//! Why a psql step failed, in words: psql's first `psql:<script>:<line>: ERROR: …` line and the
//! statement at that line of the script, instead of "psql exited with status 3". Password
//! hashes are blanked in both, since they end up in the catalog.

use std::io::{BufRead, BufReader, Read};
use std::path::Path;

use crate::run::Stop;

/// The script psql ran.
pub(crate) enum Script<'a> {
    /// A plain file (roles.sql, database.sql); encrypted when identities are given.
    File(&'a Path, Option<&'a crate::crypt::Identities>),
    /// A zstd file fed to psql's stdin line for line (the pg_dumpall dump); encrypted when
    /// identities are given.
    Zstd(&'a Path, Option<&'a crate::crypt::Identities>),
}

/// Longest statement quoted in a message.
const MAX_STATEMENT: usize = 300;

/// `stop` with the cause in its message when it is a psql failure with an error line.
pub(crate) fn explain(stop: Stop, what: &str, script: Script<'_>) -> Stop {
    let Stop::Failed {
        step,
        exit_status,
        message,
        stderr_tail,
    } = stop
    else {
        return stop;
    };
    let stderr_tail = redact(&stderr_tail);
    let message = match first_error(&stderr_tail) {
        Some((line, error)) => {
            let statement = statement_at(&script, line)
                .map(|s| format!("; statement: {s}"))
                .unwrap_or_default();
            format!("psql stopped at line {line} of {what}: {error}{statement} ({message})")
        }
        None => message,
    };
    Stop::Failed {
        step,
        exit_status,
        message,
        stderr_tail,
    }
}

/// The line number and text of psql's first error report (`psql:<script>:<line>: <text>`).
pub(crate) fn first_error(stderr: &str) -> Option<(u64, String)> {
    stderr.lines().find_map(|l| {
        let rest = l.strip_prefix("psql:")?;
        // The script's name may hold colons: the line number is the first `:<digits>: `.
        let mut from = 0;
        while let Some(p) = rest[from..].find(':') {
            let at = from + p + 1;
            let digits: String = rest[at..]
                .chars()
                .take_while(char::is_ascii_digit)
                .collect();
            if !digits.is_empty() && rest[at + digits.len()..].starts_with(": ") {
                let text = rest[at + digits.len() + 2..].trim().to_string();
                return Some((digits.parse().ok()?, text));
            }
            from = at;
        }
        None
    })
}

/// Line `n` (1-based) of the script, trimmed, password blanked, bounded.
fn statement_at(script: &Script<'_>, n: u64) -> Option<String> {
    let reader: Box<dyn Read> = match script {
        Script::File(p, ids) => crate::crypt::open_file(p, ids.is_some(), *ids).ok()?,
        Script::Zstd(p, ids) => Box::new(
            zstd::stream::read::Decoder::new(crate::crypt::open_file(p, ids.is_some(), *ids).ok()?)
                .ok()?,
        ),
    };
    let mut r = BufReader::new(reader);
    let mut buf = Vec::new();
    for _ in 0..n {
        buf.clear();
        if r.read_until(b'\n', &mut buf).ok()? == 0 {
            return None;
        }
    }
    let text = redact(String::from_utf8_lossy(&buf).trim());
    Some(match text.char_indices().nth(MAX_STATEMENT) {
        Some((i, _)) => format!("{}…", &text[..i]),
        None => text,
    })
}

/// `text` with the quoted value after every `PASSWORD` blanked.
pub(crate) fn redact(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(p) = rest.to_ascii_uppercase().find("PASSWORD '") {
        let start = p + "PASSWORD '".len();
        out.push_str(&rest[..start]);
        out.push('…');
        match rest[start..].find('\'') {
            Some(end) => rest = &rest[start + end..],
            None => {
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_line_and_statement() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("a:b.sql");
        std::fs::write(
            &f,
            "SET x;\nALTER ROLE postgres WITH LOGIN PASSWORD 'SCRAM-SHA-256$secret';\n",
        )
        .unwrap();
        let stderr = "NOTICE:  hello\npsql:/tmp/a:b.sql:2: ERROR:  permission denied\n";
        assert_eq!(
            first_error(stderr),
            Some((2, "ERROR:  permission denied".into()))
        );
        let stop = Stop::Failed {
            step: "roles".into(),
            exit_status: Some(3),
            message: "psql exited with status 3".into(),
            stderr_tail: format!("{stderr}LINE 1: ALTER ROLE x PASSWORD 'SCRAM-SHA-256$secret'"),
        };
        let Stop::Failed {
            message,
            stderr_tail,
            ..
        } = explain(stop, "roles.sql", Script::File(&f, None))
        else {
            panic!()
        };
        assert_eq!(
            message,
            "psql stopped at line 2 of roles.sql: ERROR:  permission denied; statement: ALTER ROLE postgres WITH LOGIN PASSWORD '…'; (psql exited with status 3)"
        );
        assert!(!stderr_tail.contains("secret"), "{stderr_tail}");
        assert_eq!(first_error("psql: error: connection refused"), None);
    }
}
