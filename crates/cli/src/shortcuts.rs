//! PgBackMan's shell shortcuts (`\h`, `\?`, `\s`, `\q`, typed `EOF`) and its two help topics
//! (`help shortcuts`, `help support`). The same mapping serves the shell, `-C` and `-f`, so a
//! line behaves the same wherever it is typed.

/// What a line means before it is parsed as a command.
#[derive(Debug, PartialEq, Eq)]
pub enum Line<'a> {
    /// Leave the shell (`quit`, `exit`, `\q`, `EOF`); with -C or -f: nothing to do.
    Quit,
    /// A command line, shortcuts expanded.
    Run(std::borrow::Cow<'a, str>),
}

/// Expands a shortcut. `EOF` is case-sensitive as in PgBackMan (Ctrl-D sends it there).
pub fn expand(line: &str) -> Line<'_> {
    let t = line.trim();
    match t {
        "\\q" | "quit" | "exit" | "EOF" => Line::Quit,
        "\\h" | "\\?" => Line::Run("help".into()),
        "\\s" => Line::Run("show_history".into()),
        _ => match t.strip_prefix("\\h ") {
            // `\h command` like psql's.
            Some(rest) => Line::Run(format!("help {}", rest.trim()).into()),
            None => Line::Run(line.into()),
        },
    }
}

/// Help topics that are not commands.
pub const TOPICS: &[&str] = &["shortcuts", "support"];

/// The text of help topic `name`, if it is one.
pub fn topic(name: &str) -> Option<String> {
    match name {
        "shortcuts" => Some(
            "Shortcuts of the pgbackman shell:\n\n\
             \x20 \\h, \\?          help (\\h <command>: help of one command)\n\
             \x20 \\s              show_history\n\
             \x20 \\q, quit, exit  leave the shell (also typed EOF, or Ctrl-D)\n\
             \x20 Tab             complete the command, or the argument at the cursor (a node at a\n\
             \x20                 node's place, a DefID at a DefID's place, codes, --flags and their\n\
             \x20                 values); a second Tab lists the candidates\n\
             \x20 Ctrl-C          abandon the line or the running command (never the shell)\n\
             \x20 Ctrl-R          search the history\n\n\
             \\q, \\h and quit work with -C and -f too.\n"
                .to_string(),
        ),
        "support" => Some(format!(
            "pgbackman {} (BSD-3-Clause), a continuation of PgBackMan.\n\n\
             When reporting a problem, include:\n\
             \x20 - the command and its whole output (-o json shows every field),\n\
             \x20 - the output of show_pgbackman_config and `pgbackman db status`,\n\
             \x20 - for backups, restores and alerts: show_backup_details / show_restore_details and the\n\
             \x20   agent's log on the backup server (journalctl -u pgbackman-agent).\n\
             Never include passwords: pgbackman keeps them in pgpass files, never in its output.\n",
            pgbackman_db::migrate::SOFTWARE_VERSION
        )),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shortcuts_expand() {
        assert_eq!(expand("\\q"), Line::Quit);
        assert_eq!(expand(" EOF "), Line::Quit);
        assert_eq!(
            expand("eof"),
            Line::Run("eof".into()),
            "EOF is case-sensitive"
        );
        assert_eq!(expand("\\h"), Line::Run("help".into()));
        assert_eq!(
            expand("\\h show_jobs_queue"),
            Line::Run("help show_jobs_queue".into())
        );
        assert_eq!(expand("\\s"), Line::Run("show_history".into()));
        assert_eq!(
            expand("show_jobs_queue"),
            Line::Run("show_jobs_queue".into())
        );
    }

    #[test]
    fn topics_are_not_commands() {
        for t in TOPICS {
            assert!(crate::spec::find(t).is_none());
            assert!(topic(t).is_some());
        }
    }
}
