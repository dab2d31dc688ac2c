//! The interactive shell: rustyline with persistent history and completion by position
//! ([`crate::complete`]). Ctrl-C abandons the current line or command, never the shell; Ctrl-D
//! quits.

use std::borrow::Cow;
use std::path::PathBuf;

use rustyline::completion::{Completer, Pair};
use rustyline::error::ReadlineError;
use rustyline::highlight::Highlighter;
use rustyline::hint::Hinter;
use rustyline::history::FileHistory;
use rustyline::validate::Validator;
use rustyline::{CompletionType, Config, Context, Editor, Helper};

use pgbackman_db::completion::Candidates;

use crate::complete::Mode;
use crate::session::Session;

pub type ShellEditor = Editor<ShellHelper, FileHistory>;

pub const PROMPT: &str = "[pgbackman]$ ";

#[derive(Default)]
pub struct ShellHelper {
    /// Names and ids from the catalog, refreshed after each command.
    pub candidates: Candidates,
    pub mode: Mode,
}

impl Completer for ShellHelper {
    type Candidate = Pair;

    fn complete(
        &self,
        line: &str,
        pos: usize,
        _ctx: &Context<'_>,
    ) -> rustyline::Result<(usize, Vec<Pair>)> {
        let (start, words) = crate::complete::complete(&line[..pos], &self.mode, &self.candidates);
        Ok((
            start,
            words
                .into_iter()
                .map(|w| Pair {
                    display: crate::render::safe(&w),
                    replacement: w,
                })
                .collect(),
        ))
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
        // Tab completes the common prefix; a second Tab lists the candidates (like bash).
        .completion_type(CompletionType::List)
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

/// How long the candidates may take to read; past it the shell keeps the previous ones.
const CANDIDATES_DEADLINE: std::time::Duration = std::time::Duration::from_millis(800);

/// Reads the completion candidates between commands (typing never waits for the catalog),
/// bounded by [`CANDIDATES_DEADLINE`]; a slow or failing catalog keeps the previous ones.
async fn refresh_words(s: &mut Session) {
    let read = tokio::time::timeout(CANDIDATES_DEADLINE, s.catalog.completion_candidates()).await;
    let c = match read {
        Ok(Ok(c)) => c,
        Ok(Err(_)) => return,
        Err(_) => {
            // Nobody waits for the statement any more: do not let the next command queue behind it.
            s.catalog.abandon_idle();
            return;
        }
    };
    if let Some(h) = s.editor.as_mut().and_then(|e| e.helper_mut()) {
        h.candidates = c;
    }
}
