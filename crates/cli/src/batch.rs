//! Commands from a file or a pipe (`pgbackman -f FILE`, `... | pgbackman`): PgBackMan's
//! `pgbackman-bulk-update`. One command per line, as with `-C` (nothing asked or confirmed);
//! blank lines and `# comments` are skipped; an error names its line and the next line runs
//! (or, with `--stop-on-error`, nothing more runs). A line that is not UTF-8 is an error of that
//! line, not the end of the input. The exit status is non-zero if any line failed.

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result};

use crate::session::Session;

/// What one physical line holds.
#[derive(Debug, PartialEq, Eq)]
pub enum Line {
    /// Blank or a comment.
    Skip,
    /// A command to run.
    Command(String),
    /// Leave (quit, exit, \q).
    Quit,
    /// Not UTF-8: the byte offset of the first bad byte.
    NotUtf8(usize),
}

/// Classifies one line read as bytes (its line ending already removed or not).
pub fn classify(raw: &[u8]) -> Line {
    let raw = raw.strip_suffix(b"\n").unwrap_or(raw);
    let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
    let text = match std::str::from_utf8(raw) {
        Ok(t) => t.trim(),
        Err(e) => return Line::NotUtf8(e.valid_up_to()),
    };
    match text {
        "" => Line::Skip,
        t if t.starts_with('#') => Line::Skip,
        t if crate::shortcuts::expand(t) == crate::shortcuts::Line::Quit => Line::Quit,
        t => Line::Command(t.to_string()),
    }
}

/// Runs every line of `path` (`-`: standard input).
pub async fn run(s: &mut Session, path: &Path, stop_on_error: bool) -> Result<ExitCode> {
    let (name, input): (String, Box<dyn Read>) = if path == Path::new("-") {
        ("standard input".into(), Box::new(std::io::stdin()))
    } else {
        let f = std::fs::File::open(path)
            .with_context(|| format!("cannot open command file {}", path.display()))?;
        (path.display().to_string(), Box::new(f))
    };
    let mut input = BufReader::new(input);
    let mut failed: Vec<usize> = Vec::new();
    let mut attempted = 0usize;
    let mut buf = Vec::new();
    let mut n = 0usize;
    loop {
        buf.clear();
        let read = input
            .read_until(b'\n', &mut buf)
            .with_context(|| format!("reading {name} after line {n}"))?;
        if read == 0 {
            break;
        }
        n += 1;
        let at = format!("line {n}");
        let ok = match classify(&buf) {
            Line::Skip => continue,
            Line::Quit => break,
            Line::NotUtf8(offset) => {
                attempted += 1;
                crate::print_error(
                    Some(&at),
                    &format!(
                        "not valid UTF-8 (byte {} of the line); the line was not run\nHINT: convert {name} to UTF-8, e.g. with iconv -f LATIN1 -t UTF-8",
                        offset + 1
                    ),
                );
                false
            }
            Line::Command(line) => {
                attempted += 1;
                s.history.push(line.clone());
                crate::execute_line_at(s, &line, Some(&at)).await
            }
        };
        if !ok {
            failed.push(n);
            if stop_on_error {
                crate::print_error(
                    None,
                    &format!(
                        "stopped at line {n} of {name} (--stop-on-error); the lines after it were not run"
                    ),
                );
                return Ok(ExitCode::FAILURE);
            }
        }
    }
    if failed.is_empty() {
        return Ok(ExitCode::SUCCESS);
    }
    let lines: Vec<String> = failed.iter().map(usize::to_string).collect();
    crate::print_error(
        None,
        &format!(
            "{} of {} line(s) of {name} failed: line(s) {}",
            failed.len(),
            attempted,
            lines.join(", ")
        ),
    );
    Ok(ExitCode::FAILURE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines() {
        assert_eq!(classify(b"\n"), Line::Skip);
        assert_eq!(classify(b"   # a comment\n"), Line::Skip);
        assert_eq!(classify(b"quit\r\n"), Line::Quit);
        assert_eq!(
            classify(b" show_backup_servers \r\n"),
            Line::Command("show_backup_servers".into())
        );
        assert_eq!(classify(b"ab\xff\xfe\n"), Line::NotUtf8(2));
    }
}
