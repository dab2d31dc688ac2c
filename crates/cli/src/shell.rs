//! The interactive shell: rustyline with persistent history and completion of command names,
//! FQDNs and ids. Ctrl-C abandons the current line or command, never the shell; Ctrl-D quits.

use std::borrow::Cow;
use std::path::PathBuf;

use rustyline::completion::{Completer, Pair};
use rustyline::error::ReadlineError;
use rustyline::highlight::Highlighter;
use rustyline::hint::Hinter;
use rustyline::history::FileHistory;
use rustyline::validate::Validator;
use rustyline::{Config, Context, Editor, Helper};

use crate::session::Session;
use crate::spec::COMMANDS;

pub type ShellEditor = Editor<ShellHelper, FileHistory>;

pub const PROMPT: &str = "[pgbackman]$ ";

/// What Tab completes on the current line.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum CompletionMode {
    /// A command line: command names first, then FQDNs, ids and tokens.
    #[default]
    Command,
    /// An answer that names a server or node: FQDNs and ids.
    Names,
    /// Free text (a hostname, remarks, ...): nothing.
    Off,
}

#[derive(Default)]
pub struct ShellHelper {
    /// FQDNs and ids of servers and nodes, refreshed after each command.
    pub words: Vec<String>,
    pub mode: CompletionMode,
}

impl Completer for ShellHelper {
    type Candidate = Pair;

    fn complete(
        &self,
        line: &str,
        pos: usize,
        _ctx: &Context<'_>,
    ) -> rustyline::Result<(usize, Vec<Pair>)> {
        let before = &line[..pos];
        let start = before.rfind(char::is_whitespace).map_or(0, |i| i + 1);
        let word = &before[start..];
        let first = before[..start].trim().is_empty();
        let pairs = |v: Vec<String>| {
            v.into_iter()
                .map(|w| Pair {
                    display: w.clone(),
                    replacement: w,
                })
                .collect()
        };
        let names = || {
            self.words
                .iter()
                .filter(|w| w.starts_with(word))
                .cloned()
                .collect::<Vec<_>>()
        };
        match self.mode {
            CompletionMode::Off => return Ok((start, Vec::new())),
            CompletionMode::Names => return Ok((start, pairs(names()))),
            CompletionMode::Command => {}
        }
        let candidates: Vec<String> = if first {
            COMMANDS
                .iter()
                .map(|c| c.name.to_string())
                .filter(|n| n.starts_with(word))
                .collect()
        } else if before.trim_start().starts_with("help ") {
            COMMANDS
                .iter()
                .map(|c| c.name.to_string())
                .filter(|n| n.starts_with(word))
                .collect()
        } else {
            let mut v = names();
            for special in [
                "all",
                "#all_databases#",
                "#databases_without_backup_definitions#",
                "force-deletion",
            ] {
                if special.starts_with(word) && !word.is_empty() {
                    v.push(special.to_string());
                }
            }
            v
        };
        Ok((start, pairs(candidates)))
    }
}

impl Hinter for ShellHelper {
    type Hint = String;
}
impl Highlighter for ShellHelper {
    fn highlight_prompt<'b, 's: 'b, 'p: 'b>(
        &'s self,
        prompt: &'p str,
        _default: bool,
    ) -> Cow<'b, str> {
        Cow::Borrowed(prompt)
    }
}
impl Validator for ShellHelper {}
impl Helper for ShellHelper {}

pub fn history_path(configured: Option<&str>) -> Option<PathBuf> {
    if let Some(p) = configured {
        return Some(match p.strip_prefix("~/") {
            Some(rest) => PathBuf::from(std::env::var_os("HOME")?).join(rest),
            None => PathBuf::from(p),
        });
    }
    let base = std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))?;
    Some(base.join("pgbackman/history"))
}

pub fn new_editor(history: Option<&PathBuf>) -> anyhow::Result<ShellEditor> {
    let cfg = Config::builder()
        .auto_add_history(false)
        .max_history_size(5000)?
        .build();
    let mut ed: ShellEditor = Editor::with_config(cfg)?;
    ed.set_helper(Some(ShellHelper::default()));
    if let Some(p) = history {
        // A missing history file is normal on first use.
        let _ = ed.load_history(p);
    }
    Ok(ed)
}

/// Runs the read-eval-print loop until quit / Ctrl-D.
pub async fn run(mut s: Session, history: Option<PathBuf>) -> anyhow::Result<()> {
    println!(
        "Welcome to the PostgreSQL Backup Manager shell (pgbackman {}).\nType help or \\? to list commands, help <command> for one. Ctrl-D or quit leaves.\n",
        pgbackman_db::migrate::SOFTWARE_VERSION
    );
    refresh_words(&mut s).await;
    while let Some(ed) = s.editor.as_mut() {
        let line = match ed.readline(PROMPT) {
            Ok(l) => l,
            Err(ReadlineError::Interrupted) => continue,
            Err(ReadlineError::Eof) => break,
            Err(e) => {
                eprintln!("[ERROR] reading input: {e}");
                break;
            }
        };
        let line = line.trim().to_string();
        if line.is_empty() {
            continue;
        }
        let _ = ed.add_history_entry(line.as_str());
        if let Some(p) = &history {
            if let Some(dir) = p.parent() {
                let _ = std::fs::create_dir_all(dir);
            }
            let _ = ed.append_history(p);
        }
        s.history.push(line.clone());
        let line = match crate::shortcuts::expand(&line) {
            crate::shortcuts::Line::Quit => break,
            crate::shortcuts::Line::Run(l) => l.into_owned(),
        };
        if line == "clear" {
            if let Some(ed) = s.editor.as_mut() {
                let _ = ed.clear_screen();
            }
            continue;
        }
        // Ctrl-C while a command runs abandons it (its transaction rolls back), not the shell.
        tokio::select! {
            _ = crate::execute_line(&mut s, &line) => {}
            _ = tokio::signal::ctrl_c() => eprintln!("\n[ABORTED] Command interrupted by the user."),
        }
        refresh_words(&mut s).await;
    }
    println!("Done, thank you for using pgbackman.");
    Ok(())
}

async fn refresh_words(s: &mut Session) {
    if let Ok(words) = s.catalog.completion_words().await
        && let Some(h) = s.editor.as_mut().and_then(|e| e.helper_mut())
    {
        h.words = words;
    }
}
