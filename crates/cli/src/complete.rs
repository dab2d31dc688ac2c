//! Tab completion by position: the command table says which argument the cursor is in (a node
//! at a node's place, a DefID at a DefID's place, a code, a flag name or a flag's value), and the
//! catalog's [`Candidates`] (read between commands, never while typing) fill the names and ids.
//! The same rules serve the questions that ask for a missing argument, by its label.

use pgbackman_db::completion::Candidates;

use crate::spec::{self, Arg, Cmd, Kind};

/// What the line being edited is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Mode {
    /// A command line.
    #[default]
    Line,
    /// The answer to a question with this label (`NodeID | FQDN`, `... (yes/no)`).
    Answer(String),
}

/// The replacement start and the candidates for the text before the cursor.
pub fn complete(before: &str, mode: &Mode, c: &Candidates) -> (usize, Vec<String>) {
    match mode {
        Mode::Answer(label) => {
            let (start, word) = split_list(before, 0, label);
            (start, matching(values(None, label, c), word))
        }
        Mode::Line => line(before, c),
    }
}

fn line(before: &str, c: &Candidates) -> (usize, Vec<String>) {
    let start = before.rfind(char::is_whitespace).map_or(0, |i| i + 1);
    let word = &before[start..];
    // Inside an open quote the words are not known: offer nothing rather than a wrong thing.
    let Some(words) = shlex::split(&before[..start]) else {
        return (start, Vec::new());
    };
    let Some((name, args)) = words.split_first() else {
        let names = spec::COMMANDS.iter().map(|c| c.name.to_string()).collect();
        return (start, matching(names, word));
    };
    if name == "help" || name == "\\h" {
        if !args.is_empty() {
            return (start, Vec::new());
        }
        let mut names: Vec<String> = spec::COMMANDS.iter().map(|c| c.name.to_string()).collect();
        names.extend(crate::shortcuts::TOPICS.iter().map(|t| t.to_string()));
        return (start, matching(names, word));
    }
    let Some(cmd) = spec::find(name) else {
        return (start, Vec::new());
    };
    let at = position(cmd, args);
    if word.starts_with('-') && !matches!(at, At::OptValue(_)) {
        return (start, matching(flag_names(cmd, args), word));
    }
    match at {
        At::OptValue(a) | At::Pos(a) => {
            let (s, w) = split_list(before, start, a.label);
            (s, matching(values(Some(a), a.label, c), w))
        }
        // Every positional is given: what is left are the options.
        At::End if word.is_empty() => (start, flag_names(cmd, args)),
        At::End => (start, Vec::new()),
    }
}

enum At {
    Pos(&'static Arg),
    OptValue(&'static Arg),
    End,
}

/// Which argument the next word fills, after the complete words `args`.
fn position(cmd: &'static Cmd, args: &[String]) -> At {
    let mut npos = 0;
    let mut pending: Option<&'static Arg> = None;
    for w in args {
        if pending.take().is_some() {
            continue;
        }
        if let Some(opt) = w.strip_prefix("--") {
            if !opt.contains('=') {
                pending = cmd
                    .args
                    .iter()
                    .find(|a| a.name == opt && a.kind == Kind::Opt);
            }
            continue;
        }
        npos += 1;
    }
    if let Some(a) = pending {
        return At::OptValue(a);
    }
    let positionals: Vec<&'static Arg> = cmd
        .args
        .iter()
        .filter(|a| matches!(a.kind, Kind::Pos | Kind::Rest))
        .collect();
    match positionals.get(npos) {
        Some(a) => At::Pos(a),
        // A Rest argument takes every word after it.
        None => match positionals.last() {
            Some(a) if a.kind == Kind::Rest => At::Pos(a),
            _ => At::End,
        },
    }
}

fn flag_names(cmd: &Cmd, args: &[String]) -> Vec<String> {
    cmd.args
        .iter()
        .filter(|a| matches!(a.kind, Kind::Opt | Kind::Flag))
        .map(|a| format!("--{}", a.name))
        .filter(|f| !args.iter().any(|w| w == f))
        .collect()
}

/// Arguments that take comma lists complete the item after the last comma.
fn split_list<'a>(before: &'a str, start: usize, label: &str) -> (usize, &'a str) {
    let word = &before[start..];
    let list = label.contains("(s)") || label.contains("| all") || label.contains("DBname");
    match word.rfind(',') {
        Some(i) if list => (start + i + 1, &word[i + 1..]),
        _ => (start, word),
    }
}

/// Candidates that start with `word` (case-insensitively: `full` finds FULL), in order, once.
fn matching(all: Vec<String>, word: &str) -> Vec<String> {
    let w = word.to_lowercase();
    let mut out: Vec<String> = Vec::new();
    for c in all {
        if c.to_lowercase().starts_with(&w) && !out.contains(&c) {
            out.push(c);
        }
    }
    out
}

const CODES: [&str; 5] = ["FULL", "SCHEMA", "DATA", "CLUSTER", "GLOBALS"];
/// Upper-case words of labels that are not values.
const NOT_VALUES: [&str; 6] = ["FQDN", "RFC", "IANA", "YYYY", "HH", "MM"];

/// The values an argument takes, from its label (prompts know only the label) and, for
/// options, its name.
fn values(arg: Option<&Arg>, label: &str, c: &Candidates) -> Vec<String> {
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    let mut v: Vec<String> = Vec::new();
    let name = arg.map_or("", |a| a.name);
    if label.contains("(yes/no)") {
        return s(&["yes", "no"]);
    }
    if label.contains("SrvID") {
        v.extend(c.servers.iter().cloned());
    } else if label.contains("NodeID") || name == "node" {
        v.extend(c.nodes.iter().cloned());
    } else if label.contains("DefID") {
        v.extend(c.def_ids.iter().cloned());
    } else if label.contains("BckID") {
        v.extend(c.bck_ids.iter().cloned());
    } else if label.contains("JobID") {
        v.extend(c.job_ids.iter().cloned());
    } else if label.starts_with("Repository name") {
        v.extend(c.repositories.iter().cloned());
        if label.ends_with("| local") {
            v.extend(s(&["local"]));
        } else if label.ends_with("| default") {
            v.extend(s(&["default"]));
        }
    } else if label.starts_with("Key name | KeyID") || name == "encrypted-with" {
        v.extend(c.encryption_keys.iter().cloned());
    } else if name == "encryption"
        || label.starts_with("Encryption (false")
        || label == "false | true | key name"
    {
        v.extend(s(&["false", "true"]));
        v.extend(c.encryption_keys.iter().cloned());
    } else if label.starts_with("Kind (local or s3)") {
        v.extend(s(&["local", "s3"]));
    } else if label.starts_with("DBname") || label.starts_with("Target DBname") {
        if label == "DBname" {
            v.extend(s(&[
                "#all_databases#",
                "#databases_without_backup_definitions#",
            ]));
        }
        v.extend(c.dbnames.iter().cloned());
    } else if label.starts_with("Backup code") {
        v.extend(s(&CODES));
    } else if label.contains("true/false") {
        v.extend(s(&["true", "false"]));
    } else if label == "force-deletion" {
        v.extend(s(&["force-deletion"]));
    } else if label.starts_with("AT time") {
        v.extend(s(&["now"]));
    } else if label == "Command" {
        v.extend(spec::COMMANDS.iter().map(|c| c.name.to_string()));
    } else if label == "Parameter=value" {
        v.extend(s(&[
            "output_format=table",
            "output_format=csv",
            "output_format=json",
            "timezone=local",
            "timezone=UTC",
        ]));
        v.extend(
            chrono_tz::TZ_VARIANTS
                .iter()
                .map(|t| format!("timezone={}", t.name())),
        );
    } else {
        match name {
            "format" => v.extend(s(&["custom", "directory"])),
            "decompression" => v.extend(s(&["auto", "stream", "file", "tee"])),
            "sslmode" => v.extend(s(&[
                "disable",
                "allow",
                "prefer",
                "require",
                "verify-ca",
                "verify-full",
            ])),
            "reuse-roles" => v.extend(s(&["all", "none"])),
            "rename-existing" => v.extend(s(&["auto"])),
            _ => v.extend(upper_words(label)),
        }
    }
    if label.contains("| all") {
        v.push("all".into());
    }
    if label.contains("| none") {
        v.push("none".into());
    }
    v
}

/// `Status (RUNNING or STOPPED)` → RUNNING, STOPPED; `Kind(s): ORPHAN, MISSING` → ORPHAN, MISSING.
fn upper_words(label: &str) -> Vec<String> {
    label
        .split(|ch: char| !(ch.is_ascii_alphanumeric() || ch == '_'))
        .filter(|w| {
            w.len() >= 3
                && w.chars().all(|ch| ch.is_ascii_uppercase() || ch == '_')
                && !w.ends_with("ID")
                && !NOT_VALUES.contains(w)
        })
        .map(str::to_string)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cands() -> Candidates {
        Candidates {
            servers: vec!["bs1.example.org".into(), "1".into()],
            nodes: vec![
                "pg01.example.org".into(),
                "pg02.example.org".into(),
                "1".into(),
                "2".into(),
            ],
            def_ids: vec!["12".into(), "7".into()],
            bck_ids: vec!["1042".into()],
            job_ids: vec!["77".into()],
            dbnames: vec!["billing".into()],
            repositories: vec!["offsite".into()],
            encryption_keys: vec!["site-2026".into()],
        }
    }

    fn at(line: &str) -> Vec<String> {
        complete(line, &Mode::Line, &cands()).1
    }

    #[test]
    fn positions_pick_the_kind() {
        assert_eq!(at("register_backup_definition bs"), ["bs1.example.org"]);
        assert_eq!(
            at("register_backup_definition bs1.example.org pg"),
            ["pg01.example.org", "pg02.example.org"]
        );
        // The node's place does not offer servers, the server's place no nodes.
        assert!(at("register_backup_definition p").is_empty());
        assert_eq!(at("register_backup_definition 1 2 b"), ["billing"]);
        assert_eq!(at("update_backup_definition 1"), ["12"]);
        assert_eq!(at("delete_pgsql_node 2"), ["2"]);
        assert_eq!(at("show_backup_details 10"), ["1042"]);
        assert_eq!(at("cancel_job "), ["77"]);
        assert_eq!(
            at("show_backup_definitions all pg01.example.org "),
            ["billing", "all"]
        );
        assert_eq!(at("delete_backup_definition_id 12 f"), ["force-deletion"]);
        assert_eq!(at("help show_jobs"), ["show_jobs_queue"]);
        let help = at("help sh");
        assert!(help.iter().all(|n| n.starts_with("sh")), "{help:?}");
        assert!(
            help.contains(&"show_jobs_queue".to_string())
                && help.contains(&"shortcuts".to_string())
        );
    }

    #[test]
    fn codes_flags_and_flag_values() {
        let code_place = "register_backup_definition 1 1 billing \"\" 30 2 * * * ";
        assert_eq!(at(code_place), CODES);
        assert_eq!(at(&format!("{code_place}sc")), ["SCHEMA"]);
        assert_eq!(at("update_backup_definition 12 --f"), ["--format"]);
        assert_eq!(at("update_backup_definition 12 --format d"), ["directory"]);
        // The option's value does not count as a positional.
        assert_eq!(
            at("update_pgsql_node --sslmode require pg0"),
            ["pg01.example.org", "pg02.example.org"]
        );
        assert_eq!(at("register_pgsql_node h d 5432 postgres R"), ["RUNNING"]);
        assert_eq!(at("show_jobs_queue all "), ["--all"]);
        assert_eq!(at("verify_backup all --code F"), ["FULL"]);
        assert_eq!(at("show_alerts all all Q"), ["QUEUED"]);
        let set = at("set time");
        assert_eq!(set[..2], ["timezone=local", "timezone=UTC"]);
        assert!(set.contains(&"timezone=Europe/Oslo".to_string()));
        assert_eq!(at("set timezone=Europe/Osl"), ["timezone=Europe/Oslo"]);
    }

    #[test]
    fn lists_and_questions() {
        let (start, v) = complete("verify_backup 9,10", &Mode::Line, &cands());
        assert_eq!((start, v), (16, vec!["1042".to_string()]));
        let q = |label: &str, typed: &str| complete(typed, &Mode::Answer(label.into()), &cands()).1;
        assert_eq!(q("NodeID | FQDN", "pg02"), ["pg02.example.org"]);
        assert_eq!(
            q("Repository name | RepoID | local", ""),
            ["offsite", "local"]
        );
        assert_eq!(q("DefID", ""), ["12", "7"]);
        assert_eq!(q("Key name | KeyID | fingerprint", "s"), ["site-2026"]);
        assert_eq!(
            q("false | true | key name", ""),
            ["false", "true", "site-2026"]
        );
        assert_eq!(at("show_backup_catalog --encrypted-with "), ["site-2026"]);
        assert_eq!(q("Cancel JobID 77? (yes/no)", "y"), ["yes"]);
        assert!(q("Hostname", "pg").is_empty());
        assert!(q("Remarks", "").is_empty());
        // An open quote: nothing rather than a guess.
        assert!(at("register_backup_server 'a b ").is_empty());
    }
}
