//! State of one shell (or one `-C` run): the catalog connection, output format, prompts.

use anyhow::{Result, anyhow, bail};
use pgbackman_config::FileConfig;
use pgbackman_core::model::OutputFormat;
use pgbackman_db::{Audit, Catalog};
use rustyline::error::ReadlineError;

use crate::complete::Mode;
use crate::parse::Invocation;
use crate::shell::ShellEditor;

/// The user abandoned the command (answered "no", Ctrl-C or Ctrl-D at a prompt).
#[derive(Debug, thiserror::Error)]
#[error("Command interrupted by the user.")]
pub struct Aborted;

pub struct Session {
    pub catalog: Catalog,
    pub format: OutputFormat,
    pub config: FileConfig,
    /// Where the catalog setting came from, for show_pgbackman_config.
    pub catalog_source: String,
    /// The identity of this host as a backup server (default for SrvID arguments).
    pub local_server: String,
    pub os_user: String,
    /// Present in the interactive shell: prompts and confirmations use it.
    pub editor: Option<ShellEditor>,
    pub history: Vec<String>,
    /// The line being executed, for the audit log.
    pub line: String,
}

impl Session {
    pub fn interactive(&self) -> bool {
        self.editor.is_some()
    }

    pub fn audit(&self) -> Audit {
        Audit {
            os_user: self.os_user.clone(),
            command: self.line.clone(),
        }
    }

    /// Asks one question in the interactive shell; Ctrl-C / Ctrl-D abandon the command.
    pub fn ask(&mut self, label: &str, default: Option<&str>) -> Result<String> {
        let Some(ed) = self.editor.as_mut() else {
            bail!("{label}: no value given (nothing can be asked outside the interactive shell)");
        };
        // Labels and defaults may hold names from a node or the catalog.
        let prompt = crate::render::safe(&match default {
            Some(d) => format!("{label} [{d}]: "),
            None => format!("{label}: "),
        });
        // At a question, Tab completes what its label asks for (a node, a DefID, yes/no, ...).
        if let Some(h) = ed.helper_mut() {
            h.mode = Mode::Answer(label.to_string());
        }
        let answer = ed.readline(&prompt);
        if let Some(h) = ed.helper_mut() {
            h.mode = Mode::Line;
        }
        match answer {
            Ok(s) => Ok(s.trim().to_string()),
            Err(ReadlineError::Interrupted | ReadlineError::Eof) => Err(Aborted.into()),
            Err(e) => Err(anyhow!("reading the answer failed: {e}")),
        }
    }

    /// The value of argument `name`: as given, else asked for (interactive shell, no positional
    /// argument given), else None. An empty answer or "" means "the default".
    pub fn value(
        &mut self,
        inv: &Invocation,
        name: &str,
        default: Option<&str>,
    ) -> Result<Option<String>> {
        // A listing's arguments are filters with defaults: PgBackMan's show_jobs_queue asked
        // nothing, so a bare `show_*` runs with its defaults ([`Session::required`] still asks
        // for what it cannot do without).
        self.value_or_ask(inv, name, default, !inv.cmd.name.starts_with("show_"))
    }

    fn value_or_ask(
        &mut self,
        inv: &Invocation,
        name: &str,
        default: Option<&str>,
        ask: bool,
    ) -> Result<Option<String>> {
        if let Some(v) = inv.given(name) {
            return Ok(non_empty(v));
        }
        let arg = inv.cmd.args.iter().find(|a| a.name == name);
        if let Some(arg) = arg
            && ask
            && inv.bare
            && self.interactive()
            && arg.kind == crate::spec::Kind::Pos
        {
            let v = self.ask(arg.label, default)?;
            return Ok(non_empty(&v));
        }
        Ok(None)
    }

    /// Like [`Session::value`], with the default applied; missing without default is an error.
    pub fn required(
        &mut self,
        inv: &Invocation,
        name: &str,
        default: Option<&str>,
    ) -> Result<String> {
        // Without a default the command cannot run: asked even by a listing.
        let ask = default.is_none() || !inv.cmd.name.starts_with("show_");
        if let Some(v) = self.value_or_ask(inv, name, default, ask)? {
            return Ok(v);
        }
        if let Some(d) = default {
            return Ok(d.to_string());
        }
        let label = inv
            .cmd
            .args
            .iter()
            .find(|a| a.name == name)
            .map_or(name, |a| a.label);
        bail!("missing argument: {label}\nUsage: {}", inv.cmd.usage())
    }

    /// yes/no confirmation in the interactive shell; `-C` runs are explicit and not asked.
    pub fn confirm(&mut self, question: &str) -> Result<()> {
        if !self.interactive() {
            return Ok(());
        }
        loop {
            match self
                .ask(&format!("{question} (yes/no)"), None)?
                .to_ascii_lowercase()
                .as_str()
            {
                "yes" | "y" => return Ok(()),
                "no" | "n" => return Err(Aborted.into()),
                _ => println!("Please answer yes or no."),
            }
        }
    }
}

fn non_empty(v: &str) -> Option<String> {
    if v.trim().is_empty() {
        None
    } else {
        Some(v.to_string())
    }
}
