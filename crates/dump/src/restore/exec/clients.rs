//! The clients a restore runs (psql, pg_restore): their argv and environment, and running one
//! to its end with its stdin fed.

use super::*;

impl Exec<'_> {
    /// The connection part of a child's argv and environment (as for a backup).
    pub(super) fn child_command(&self, program: &str, args: Vec<String>) -> ChildCommand {
        let spec = self.spec;
        let mut cmd = ChildCommand::for_node(
            &spec.node,
            &spec.bin_dir,
            program,
            &spec.application_name,
            args,
            Stdout::Null,
        );
        if program == "pg_restore" {
            // pg_restore commits every statement on its own; waiting for each WAL flush buys
            // nothing here (a restore cut short is undone, never half-kept).
            cmd.env
                .push(("PGOPTIONS".into(), "-c synchronous_commit=off".into()));
        }
        cmd
    }

    pub(super) fn psql_args(&self, dbname: &str) -> Vec<String> {
        vec![
            "--no-psqlrc".into(),
            "--quiet".into(),
            "--set=ON_ERROR_STOP=1".into(),
            format!("--dbname=dbname={}", conninfo_value(dbname)),
        ]
    }

    /// Runs one client to its end, feeding its stdin with `pump` when given. A pump that fails
    /// fails the step even when the child exited 0 (psql reading a truncated script would).
    /// How psql reads a small script of the set (roles.sql, database.sql): `--file=PATH`, or
    /// for an encrypted one `--file=-` fed decrypted through stdin (no plaintext copy on disk).
    /// Returns the argument, the pump and the identities used.
    pub(super) fn small_script(
        &self,
        m: &Manifest,
        path: &Path,
        name: &str,
    ) -> (String, Option<Pump>, Option<Arc<crate::crypt::Identities>>) {
        match &self.ids {
            Some(ids) if m.is_encrypted(name) => {
                let (ids2, p) = (Arc::clone(ids), path.to_path_buf());
                let pump: Pump = Box::new(move |mut f: File| {
                    let mut r = ids2.open(&p)?;
                    let n = std::io::copy(&mut r, &mut f)?;
                    Ok((n, Vec::new()))
                });
                ("--file=-".into(), Some(pump), Some(Arc::clone(ids)))
            }
            _ => (format!("--file={}", path.display()), None, None),
        }
    }

    pub(super) async fn run_child(
        &mut self,
        step: &str,
        program: &str,
        args: Vec<String>,
        pump: Option<Pump>,
        progress: &(dyn Fn(u64) + Sync),
        main: bool,
    ) -> Result<Vec<String>, Stop> {
        let cmd = self.child_command(program, args);
        let argv = cmd.argv();
        if main {
            self.out.command = argv.clone();
        }
        self.log.event(&format!(
            "step {step}: {}",
            serde_json::to_string(&argv).unwrap_or_default()
        ));
        let (mut sup, _, stdin) = child::spawn_with_stdin(&cmd, &self.log, pump.is_some())
            .map_err(|e| fail(step, format!("cannot start {}: {e}", cmd.program.display())))?;
        let pump_handle = match (pump, stdin) {
            (Some(p), Some(stdin)) => {
                let fd = stdin
                    .into_owned_fd()
                    .map_err(|e| fail(step, format!("pipe: {e}")))?;
                let f = File::from(fd);
                Some(tokio::task::spawn_blocking(move || p(f)))
            }
            _ => None,
        };
        let written = Arc::clone(&self.written);
        let mut last = 0u64;
        let mut tick = move || {
            let now = written.load(Ordering::Relaxed);
            if now != last {
                last = now;
                progress(now);
            }
        };
        let ended = sup
            .wait(
                &self.cancel,
                self.deadline,
                Duration::from_millis(250),
                &mut tick,
            )
            .await;
        let stderr_tail = sup.stderr_tail().await;
        let pumped = match pump_handle {
            Some(h) => Some(
                h.await
                    .map_err(|e| fail(step, format!("internal error: {e}")))?,
            ),
            None => None,
        };
        let status = match ended {
            Ok(Ended::Exited(s)) => s,
            Ok(Ended::Cancelled) => {
                self.log.event(&format!("{step}: cancelled"));
                return Err(Stop::Cancelled { step: step.into() });
            }
            // A restore's children have no watchdog: Stalled cannot come.
            Ok(Ended::TimedOut | Ended::Stalled) => {
                return Err(match self.timed_out(step) {
                    Stop::Failed { step, message, .. } => Stop::Failed {
                        step,
                        exit_status: None,
                        message,
                        stderr_tail,
                    },
                    other => other,
                });
            }
            Err(e) => return Err(fail(step, format!("waiting for {program}: {e}"))),
        };
        self.log.event(&format!("{step}: {status}"));
        // The pump failing on its source (the store gone, bytes other than the manifest's)
        // is the cause when the child then failed on a truncated input: it is reported.
        let source_failed =
            matches!(&pumped, Some(Err(e)) if e.kind() != std::io::ErrorKind::BrokenPipe);
        if !status.success() && !source_failed {
            return Err(Stop::Failed {
                step: step.into(),
                exit_status: status.code(),
                message: match status.code() {
                    Some(c) => format!("{program} exited with status {c}"),
                    None => format!("{program} ended abnormally ({status})"),
                },
                stderr_tail,
            });
        }
        match pumped {
            Some(Err(e)) => {
                if let Some(m) = source::mismatch_of(&e) {
                    self.out.checksums_failed = Some(m);
                }
                if !status.success() {
                    self.log
                        .event(&format!("{program} failed after its input failed: {e}"));
                }
                Err(Stop::Failed {
                    step: "decompress".into(),
                    exit_status: None,
                    message: format!("feeding {program} from {}: {e}", self.source.label()),
                    stderr_tail,
                })
            }
            Some(Ok((_, skipped))) => Ok(skipped),
            None => Ok(Vec::new()),
        }
    }
}
