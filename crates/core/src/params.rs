//! Extra pg_dump parameters of a backup definition.
//!
//! The text is split with POSIX shell quoting rules (no expansion of any kind: no shell ever
//! runs) and checked against the options a user may not override: connection settings, the
//! output file, the format and parallel jobs (pgbackman chooses them), and options that make
//! pg_dump print something instead of dumping. Positional arguments are rejected too (pg_dump
//! would take one as the database name).

/// Extra parameters that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParamError {
    /// A quote is opened and never closed.
    #[error("unterminated {quote} quote in extra parameters \"{text}\"")]
    UnterminatedQuote {
        /// `'` or `"`.
        quote: char,
        /// The whole text.
        text: String,
    },
    /// The text ends with a lone backslash.
    #[error("extra parameters \"{0}\" end with a lone backslash")]
    TrailingBackslash(String),
    /// An option the user may not set.
    #[error("pg_dump option \"{option}\" is not allowed in extra parameters: {reason}")]
    Forbidden {
        /// The option as written.
        option: String,
        /// Why it is not allowed.
        reason: &'static str,
    },
    /// An option that needs a value has none.
    #[error("pg_dump option \"{0}\" needs a value")]
    MissingValue(String),
    /// A word that is not an option nor an option's value.
    #[error(
        "\"{0}\" is not a pg_dump option: extra parameters hold options only (write an option's value as --name=value)"
    )]
    Positional(String),
}

/// Splits `s` into words with POSIX shell quoting: whitespace separates words, `'...'` is
/// literal, `"..."` is literal except `\"`, `\\`, `\$` and `` \` ``, a backslash outside quotes
/// escapes the next character. Nothing is expanded.
pub fn split_shell_words(s: &str) -> Result<Vec<String>, ParamError> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => cur.push(c),
                        None => {
                            return Err(ParamError::UnterminatedQuote {
                                quote: '\'',
                                text: s.into(),
                            });
                        }
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(n @ ('"' | '\\' | '$' | '`')) => cur.push(n),
                            Some('\n') => {}
                            Some(n) => {
                                cur.push('\\');
                                cur.push(n);
                            }
                            None => {
                                return Err(ParamError::UnterminatedQuote {
                                    quote: '"',
                                    text: s.into(),
                                });
                            }
                        },
                        Some(c) => cur.push(c),
                        None => {
                            return Err(ParamError::UnterminatedQuote {
                                quote: '"',
                                text: s.into(),
                            });
                        }
                    }
                }
            }
            '\\' => match chars.next() {
                Some('\n') => {}
                Some(n) => {
                    in_word = true;
                    cur.push(n);
                }
                None => return Err(ParamError::TrailingBackslash(s.into())),
            },
            c => {
                in_word = true;
                cur.push(c);
            }
        }
    }
    if in_word {
        words.push(cur);
    }
    Ok(words)
}

const CONNECTION: &str = "connection settings come from the PgSQL node's registration";
const OUTPUT: &str = "pgbackman chooses the output file";
const FORMAT: &str = "the dump format and parallel jobs are chosen by pgbackman";
const INFO: &str = "pg_dump would print information instead of dumping";

/// pg_dump short options: (letter, takes a value, forbidden because).
const SHORT: &[ShortOption] = &[
    ('d', true, Some(CONNECTION)),
    ('h', true, Some(CONNECTION)),
    ('p', true, Some(CONNECTION)),
    ('U', true, Some(CONNECTION)),
    ('w', false, Some(CONNECTION)),
    ('W', false, Some(CONNECTION)),
    ('f', true, Some(OUTPUT)),
    ('F', true, Some(FORMAT)),
    ('j', true, Some(FORMAT)),
    ('V', false, Some(INFO)),
    ('?', false, Some(INFO)),
    ('e', true, None),
    ('E', true, None),
    ('n', true, None),
    ('N', true, None),
    ('S', true, None),
    ('t', true, None),
    ('T', true, None),
    ('Z', true, None),
];

/// pg_dump long options (PostgreSQL 12 to 18): (name, takes a value, forbidden because).
const LONG: &[LongOption] = &[
    ("dbname", true, Some(CONNECTION)),
    ("host", true, Some(CONNECTION)),
    ("port", true, Some(CONNECTION)),
    ("username", true, Some(CONNECTION)),
    ("no-password", false, Some(CONNECTION)),
    ("password", false, Some(CONNECTION)),
    ("file", true, Some(OUTPUT)),
    ("format", true, Some(FORMAT)),
    ("jobs", true, Some(FORMAT)),
    ("version", false, Some(INFO)),
    ("help", false, Some(INFO)),
    ("schema", true, None),
    ("exclude-schema", true, None),
    ("table", true, None),
    ("exclude-table", true, None),
    ("table-and-children", true, None),
    ("exclude-table-and-children", true, None),
    ("exclude-table-data", true, None),
    ("exclude-table-data-and-children", true, None),
    ("extension", true, None),
    ("exclude-extension", true, None),
    ("compress", true, None),
    ("superuser", true, None),
    ("encoding", true, None),
    ("lock-wait-timeout", true, None),
    ("role", true, None),
    ("section", true, None),
    ("include-foreign-data", true, None),
    ("rows-per-insert", true, None),
    ("extra-float-digits", true, None),
    ("filter", true, None),
    ("snapshot", true, None),
    ("sync-method", true, None),
    ("restrict-key", true, None),
    ("data-only", false, None),
    ("schema-only", false, None),
    ("statistics-only", false, None),
    ("blobs", false, None),
    ("no-blobs", false, None),
    ("large-objects", false, None),
    ("no-large-objects", false, None),
    ("clean", false, None),
    ("create", false, None),
    ("inserts", false, None),
    ("column-inserts", false, None),
    ("attribute-inserts", false, None),
    ("no-owner", false, None),
    ("no-privileges", false, None),
    ("no-acl", false, None),
    ("verbose", false, None),
    ("binary-upgrade", false, None),
    ("disable-dollar-quoting", false, None),
    ("disable-triggers", false, None),
    ("enable-row-security", false, None),
    ("if-exists", false, None),
    ("load-via-partition-root", false, None),
    ("no-comments", false, None),
    ("no-publications", false, None),
    ("no-security-labels", false, None),
    ("no-subscriptions", false, None),
    ("no-synchronized-snapshots", false, None),
    ("no-table-access-method", false, None),
    ("no-tablespaces", false, None),
    ("no-toast-compression", false, None),
    ("no-unlogged-table-data", false, None),
    ("no-sync", false, None),
    ("no-data", false, None),
    ("no-schema", false, None),
    ("no-statistics", false, None),
    ("no-policies", false, None),
    ("with-data", false, None),
    ("with-schema", false, None),
    ("with-statistics", false, None),
    ("sequence-data", false, None),
    ("on-conflict-do-nothing", false, None),
    ("quote-all-identifiers", false, None),
    ("serializable-deferrable", false, None),
    ("strict-names", false, None),
    ("use-set-session-authorization", false, None),
];

/// Splits extra pg_dump parameters ([`split_shell_words`]) and checks them: no connection
/// option (`-h -p -U -d -w -W` and long forms), no `-f/--file`, no `-F/--format` or
/// `-j/--jobs`, no `-V/--version` or `-?/--help`, no positional argument. Long options are
/// matched the way getopt does, by unambiguous prefix, so `--hos=x` is caught as `--host`; a
/// prefix of a forbidden option is rejected even when it is ambiguous. Returns the words.
pub fn check_extra_dump_parameters(s: &str) -> Result<Vec<String>, ParamError> {
    let words = split_shell_words(s)?;
    check_options(&words, SHORT, LONG, true).map_err(|p| match p {
        OptionProblem::Forbidden { option, reason } => ParamError::Forbidden { option, reason },
        OptionProblem::MissingValue(w) => ParamError::MissingValue(w),
        OptionProblem::Positional(w) => ParamError::Positional(w),
    })?;
    Ok(words)
}

/// A short option of a client program: (letter, takes a value, forbidden because).
pub type ShortOption = (char, bool, Option<&'static str>);
/// A long option of a client program: (name, takes a value, forbidden because).
pub type LongOption = (&'static str, bool, Option<&'static str>);

/// What [`check_options`] refused; the caller names the program in its own error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OptionProblem {
    /// An option the user may not set.
    Forbidden {
        /// The option as written.
        option: String,
        /// Why it is not allowed.
        reason: &'static str,
    },
    /// An option that needs a value has none.
    MissingValue(String),
    /// A word that is not an option nor an option's value.
    Positional(String),
}

/// Checks option words against a client program's option tables, the way getopt reads them:
/// long options by unambiguous prefix (a prefix of a forbidden option is refused even when it is
/// ambiguous), clusters of short options (`-vh`, `-nfoo`, `-n foo`), no positional argument.
/// `--` ends the options (and is then accepted) only when `end_of_options` says so.
pub fn check_options(
    words: &[String],
    short: &[ShortOption],
    long: &[LongOption],
    end_of_options: bool,
) -> Result<(), OptionProblem> {
    let mut i = 0;
    let mut options_ended = false;
    while i < words.len() {
        let w = &words[i];
        i += 1;
        if options_ended || w == "-" || !w.starts_with('-') || (w == "--" && !end_of_options) {
            return Err(OptionProblem::Positional(w.clone()));
        }
        if w == "--" {
            options_ended = true;
            continue;
        }
        if let Some(name_value) = w.strip_prefix("--") {
            let (name, has_value) = match name_value.split_once('=') {
                Some((n, _)) => (n, true),
                None => (name_value, false),
            };
            let exact = long.iter().find(|(n, _, _)| *n == name);
            let candidates: Vec<_> = long
                .iter()
                .filter(|(n, _, _)| n.starts_with(name))
                .collect();
            if exact.is_none()
                && let Some((_, _, Some(reason))) = candidates.iter().find(|(_, _, r)| r.is_some())
            {
                return Err(OptionProblem::Forbidden {
                    option: w.clone(),
                    reason,
                });
            }
            let known = exact.or(if candidates.len() == 1 {
                Some(candidates[0])
            } else {
                None
            });
            if let Some((_, takes_value, forbidden)) = known {
                if let Some(reason) = forbidden {
                    return Err(OptionProblem::Forbidden {
                        option: w.clone(),
                        reason,
                    });
                }
                if *takes_value && !has_value {
                    if i >= words.len() {
                        return Err(OptionProblem::MissingValue(w.clone()));
                    }
                    i += 1;
                }
            }
            continue;
        }
        let letters: Vec<char> = w[1..].chars().collect();
        for (k, c) in letters.iter().enumerate() {
            let Some((_, takes_value, forbidden)) = short.iter().find(|(l, _, _)| l == c) else {
                continue;
            };
            if let Some(reason) = forbidden {
                let option = if letters.len() == 1 {
                    w.clone()
                } else {
                    format!("-{c} (in {w})")
                };
                return Err(OptionProblem::Forbidden { option, reason });
            }
            if *takes_value {
                if k + 1 == letters.len() {
                    if i >= words.len() {
                        return Err(OptionProblem::MissingValue(w.clone()));
                    }
                    i += 1;
                }
                break;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_like_a_shell() {
        let cases: &[(&str, &[&str])] = &[
            ("", &[]),
            ("   ", &[]),
            ("--no-owner", &["--no-owner"]),
            ("  -n  public\t-v ", &["-n", "public", "-v"]),
            ("--exclude-table='my table'", &["--exclude-table=my table"]),
            ("-t \"a \\\"b\\\" \\$x\"", &["-t", "a \"b\" $x"]),
            ("-t \"a\\b\"", &["-t", "a\\b"]),
            ("-t a\\ b", &["-t", "a b"]),
            ("-t 'it'\\''s'", &["-t", "it's"]),
            ("''", &[""]),
            ("-t $HOME `id`", &["-t", "$HOME", "`id`"]),
            ("-t ünï", &["-t", "ünï"]),
        ];
        for (text, want) in cases {
            assert_eq!(&split_shell_words(text).unwrap(), want, "{text:?}");
        }
        assert!(matches!(
            split_shell_words("-t 'a"),
            Err(ParamError::UnterminatedQuote { quote: '\'', .. })
        ));
        assert!(matches!(
            split_shell_words("-t \"a"),
            Err(ParamError::UnterminatedQuote { quote: '"', .. })
        ));
        assert!(matches!(
            split_shell_words("-t a\\"),
            Err(ParamError::TrailingBackslash(_))
        ));
    }

    #[test]
    fn accepts_ordinary_options() {
        for text in [
            "",
            "--no-owner --no-privileges",
            "-n public -N audit",
            "-npublic",
            "--schema=public --exclude-table 'log*'",
            "-v -x -O",
            "-vx",
            "--lock-wait-timeout=30s",
            "--exclude-table-data=big --if-exists --clean",
            "-Z 0",
            "--compress=zstd:3",
            "--sche=public",
            "--no-sync",
            "--some-future-flag",
            "--",
        ] {
            check_extra_dump_parameters(text).unwrap_or_else(|e| panic!("{text:?}: {e}"));
        }
        assert_eq!(
            check_extra_dump_parameters("-n 'my schema' --no-owner").unwrap(),
            ["-n", "my schema", "--no-owner"]
        );
    }

    #[test]
    fn rejects_overrides() {
        let cases: &[(&str, &str)] = &[
            ("-h other", CONNECTION),
            ("-hother", CONNECTION),
            ("--host=other", CONNECTION),
            ("--host other", CONNECTION),
            ("--hos=other", CONNECTION),
            ("-p 5433", CONNECTION),
            ("--port=5433", CONNECTION),
            ("-U postgres", CONNECTION),
            ("--username=x", CONNECTION),
            ("-d db", CONNECTION),
            ("--dbname=db", CONNECTION),
            ("--d", CONNECTION),
            ("-w", CONNECTION),
            ("-W", CONNECTION),
            ("--password", CONNECTION),
            ("--no-password", CONNECTION),
            ("-vW", CONNECTION),
            ("-f /tmp/x", OUTPUT),
            ("--file=/tmp/x", OUTPUT),
            ("--fi=x", OUTPUT),
            ("-Fc", FORMAT),
            ("-F d", FORMAT),
            ("--format=plain", FORMAT),
            ("-j 4", FORMAT),
            ("--jobs=4", FORMAT),
            ("-V", INFO),
            ("--version", INFO),
            ("--help", INFO),
            ("-?", INFO),
            ("--no-owner -v --host=x", CONNECTION),
        ];
        for (text, reason) in cases {
            match check_extra_dump_parameters(text) {
                Err(ParamError::Forbidden { reason: r, .. }) => assert_eq!(r, *reason, "{text:?}"),
                other => panic!("{text:?}: {other:?}"),
            }
        }
        let e = check_extra_dump_parameters("--host=x")
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "pg_dump option \"--host=x\" is not allowed in extra parameters: connection settings come from the PgSQL node's registration"
        );
        assert!(
            check_extra_dump_parameters("-vh x")
                .unwrap_err()
                .to_string()
                .contains("\"-h (in -vh)\"")
        );
    }

    #[test]
    fn rejects_positional_and_missing_values() {
        for text in [
            "mydb",
            "--no-owner mydb",
            "-",
            "-- -v",
            "-n public extra",
            "--flag value",
        ] {
            assert!(
                matches!(
                    check_extra_dump_parameters(text),
                    Err(ParamError::Positional(_))
                ),
                "{text:?}"
            );
        }
        for text in ["-n", "--schema", "-v -t"] {
            assert!(
                matches!(
                    check_extra_dump_parameters(text),
                    Err(ParamError::MissingValue(_))
                ),
                "{text:?}"
            );
        }
        // A value that looks like an option is still a value.
        assert!(check_extra_dump_parameters("-n -h").is_ok());
    }
}
