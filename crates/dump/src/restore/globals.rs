//! The roles part of a pg_dumpall script (before its first `\connect`), statement by statement:
//! which statements would change a role that exists on the target. A CLUSTER or GLOBALS
//! restore never changes an existing role (above all the one it runs as: the dump's
//! `ALTER ROLE postgres … PASSWORD` would lock the restore's own reconnections out), so those
//! statements become comments, line for line (psql's line numbers stay those of the dump).

use std::collections::BTreeSet;

/// Collects the lines of one statement: complete when a `;` ends a line outside quotes.
#[derive(Default)]
pub(crate) struct Statement {
    lines: Vec<Vec<u8>>,
    quote: Option<u8>,
}

impl Statement {
    /// Whether no statement is in progress.
    pub(crate) fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }

    /// Adds a line; true when it completes the statement.
    pub(crate) fn push(&mut self, line: &[u8]) -> bool {
        let mut last = None;
        let mut i = 0;
        while i < line.len() {
            let b = line[i];
            match self.quote {
                Some(q) if b == q => self.quote = None, // a doubled quote re-opens at once
                Some(_) => {}
                None if b == b'\'' || b == b'"' => self.quote = Some(b),
                None if b == b'-' && line.get(i + 1) == Some(&b'-') => break,
                None if !b.is_ascii_whitespace() => last = Some(b),
                None => {}
            }
            i += 1;
        }
        self.lines.push(line.to_vec());
        self.quote.is_none() && last == Some(b';')
    }

    /// The statement's lines, emptied; commented out (`-- ` before each line) when `skip`.
    pub(crate) fn take(&mut self, skip: bool) -> Vec<u8> {
        let mut out = Vec::new();
        for l in self.lines.drain(..) {
            if skip {
                out.extend_from_slice(b"-- ");
            }
            out.extend_from_slice(&l);
        }
        self.quote = None;
        out
    }

    /// The statement as one text (lossy: only its ASCII keywords and quoted names matter).
    pub(crate) fn text(&self) -> String {
        let bytes: Vec<u8> = self.lines.concat();
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

/// What a statement of the roles part does to an existing role.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Runs as written.
    Keep,
    /// `CREATE ROLE` of an existing role (the role is reused).
    SkipCreate(String),
    /// Would change an existing role: attributes, password, settings, comment, label,
    /// a membership between two existing roles, a privilege granted to it.
    Skip,
}

/// Judges one complete statement of the roles part against the roles that exist.
pub(crate) fn judge(stmt: &str, existing: &BTreeSet<String>) -> Verdict {
    let s = stmt.trim();
    let has = |n: &str| existing.contains(n);
    if let Some(rest) = strip_words(s, &["CREATE", "ROLE"]) {
        return match ident(rest) {
            Some((name, _)) if has(&name) => Verdict::SkipCreate(name),
            _ => Verdict::Keep,
        };
    }
    for prefix in [
        &["ALTER", "ROLE"][..],
        &["ALTER", "USER"],
        &["COMMENT", "ON", "ROLE"],
    ] {
        if let Some(rest) = strip_words(s, prefix) {
            return match ident(rest) {
                Some((name, _)) if has(&name) => Verdict::Skip,
                _ => Verdict::Keep,
            };
        }
    }
    if let Some(rest) = strip_words(s, &["SECURITY", "LABEL"])
        && let Some(pos) = rest.find(" ON ROLE ")
    {
        return match ident(&rest[pos + " ON ROLE ".len()..]) {
            Some((name, _)) if has(&name) => Verdict::Skip,
            _ => Verdict::Keep,
        };
    }
    if let Some(rest) = strip_words(s, &["GRANT"]) {
        // A privilege on a parameter granted to an existing role.
        if rest.contains(" ON PARAMETER ") {
            return match rest.rfind(" TO ").and_then(|p| ident(&rest[p + 4..])) {
                Some((name, _)) if has(&name) => Verdict::Skip,
                _ => Verdict::Keep,
            };
        }
        // A membership between two existing roles (`GRANT role TO member …`).
        if let Some((role, after)) = ident(rest)
            && let Some(after) = strip_words(after, &["TO"])
            && let Some((member, _)) = ident(after)
        {
            return if has(&role) && has(&member) {
                Verdict::Skip
            } else {
                Verdict::Keep
            };
        }
    }
    Verdict::Keep
}

/// `s` after the words `words` (case-insensitive, separated by whitespace), if it starts so.
fn strip_words<'a>(s: &'a str, words: &[&str]) -> Option<&'a str> {
    let mut rest = s;
    for w in words {
        rest = rest.trim_start();
        let head = rest.get(..w.len())?;
        if !head.eq_ignore_ascii_case(w) {
            return None;
        }
        rest = &rest[w.len()..];
        if !rest.starts_with(|c: char| c.is_whitespace()) {
            return None;
        }
    }
    Some(rest.trim_start())
}

/// A role name as pg_dump writes it (`"quoted"` with doubled quotes, or a bare lower-case
/// identifier), and what follows it.
fn ident(s: &str) -> Option<(String, &str)> {
    let s = s.trim_start();
    if let Some(q) = s.strip_prefix('"') {
        let mut name = String::new();
        let mut chars = q.char_indices();
        while let Some((i, c)) = chars.next() {
            if c == '"' {
                if q[i + 1..].starts_with('"') {
                    name.push('"');
                    chars.next();
                } else {
                    return Some((name, &q[i + 1..]));
                }
            } else {
                name.push(c);
            }
        }
        None
    } else {
        let end = s
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '$'))
            .unwrap_or(s.len());
        (end > 0).then(|| (s[..end].to_ascii_lowercase(), &s[end..]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn existing() -> BTreeSet<String> {
        ["postgres", "Old \"one\"", "keep"]
            .iter()
            .map(|s| s.to_string())
            .collect()
    }

    #[test]
    fn verdicts() {
        let e = existing();
        let j = |s: &str| judge(s, &e);
        assert_eq!(
            j("CREATE ROLE postgres;"),
            Verdict::SkipCreate("postgres".into())
        );
        assert_eq!(j("CREATE ROLE app;"), Verdict::Keep);
        assert_eq!(
            j("ALTER ROLE postgres WITH SUPERUSER LOGIN PASSWORD 'SCRAM-SHA-256$x';"),
            Verdict::Skip
        );
        assert_eq!(j("ALTER ROLE app WITH LOGIN;"), Verdict::Keep);
        assert_eq!(
            j("ALTER ROLE \"Old \"\"one\"\"\" SET work_mem TO '5MB';"),
            Verdict::Skip
        );
        assert_eq!(j("COMMENT ON ROLE keep IS 'a\nb';"), Verdict::Skip);
        assert_eq!(
            j("SECURITY LABEL FOR dummy ON ROLE keep IS 'x';"),
            Verdict::Skip
        );
        assert_eq!(
            j("GRANT keep TO postgres GRANTED BY postgres;"),
            Verdict::Skip
        );
        assert_eq!(
            j("GRANT app TO postgres GRANTED BY postgres;"),
            Verdict::Keep
        );
        assert_eq!(j("GRANT keep TO app;"), Verdict::Keep);
        assert_eq!(j("GRANT SET ON PARAMETER work_mem TO keep;"), Verdict::Skip);
        assert_eq!(j("GRANT SET ON PARAMETER work_mem TO app;"), Verdict::Keep);
        assert_eq!(j("SET client_encoding = 'UTF8';"), Verdict::Keep);
    }

    #[test]
    fn statements_span_lines_inside_quotes() {
        let mut s = Statement::default();
        assert!(!s.push(b"COMMENT ON ROLE keep IS 'it''s;\n"));
        assert!(s.push(b"two lines';\n"));
        assert_eq!(judge(&s.text(), &existing()), Verdict::Skip);
        assert_eq!(
            s.take(true),
            b"-- COMMENT ON ROLE keep IS 'it''s;\n-- two lines';\n"
        );
        assert!(s.is_empty());
        assert!(s.push(b"CREATE ROLE \"a;b\"; -- note\n"));
        assert_eq!(s.take(false), b"CREATE ROLE \"a;b\"; -- note\n");
    }
}
