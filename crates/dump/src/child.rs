//! Supervised child processes: argv only (never a shell), their own process group, stderr kept
//! in the run's log and as a tail for errors, and killed as a group (SIGTERM, then SIGKILL after
//! a grace period) on cancel, on timeout and when the supervising future is dropped.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, Write};
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, ChildStderr};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Time between SIGTERM and SIGKILL.
pub(crate) const GRACE: Duration = Duration::from_secs(5);
/// Lines of stderr kept for error reports.
pub(crate) const TAIL_LINES: usize = 20;
/// stderr bytes of one step copied to the log; past that only the tail is kept.
const LOG_STDERR_LIMIT: u64 = 16 << 20;

/// The run's log file (`backup.log` in the set). Write errors are remembered, not lost: the run
/// fails at step `write` when the log could not be written.
pub(crate) struct RunLog {
    inner: Mutex<LogInner>,
}

struct LogInner {
    file: Option<File>,
    error: Option<io::Error>,
}

impl RunLog {
    pub(crate) fn new(file: Option<File>) -> RunLog {
        RunLog {
            inner: Mutex::new(LogInner { file, error: None }),
        }
    }

    /// Appends `text` plus a newline.
    pub(crate) fn line(&self, text: &str) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if inner.error.is_some() {
            return;
        }
        let result = match inner.file.as_mut() {
            Some(f) => f
                .write_all(text.as_bytes())
                .and_then(|()| f.write_all(b"\n")),
            None => Ok(()),
        };
        if let Err(e) = result {
            inner.error = Some(e);
        }
    }

    /// Appends a time-stamped line.
    pub(crate) fn event(&self, text: &str) {
        let now = chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S%.3fZ");
        self.line(&format!("{now} {text}"));
    }

    /// The first write error, if any (taken: reported once).
    pub(crate) fn take_error(&self) -> Option<io::Error> {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .error
            .take()
    }

    /// Flushes and fsyncs the file, then closes it.
    pub(crate) fn close(&self) -> io::Result<()> {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(e) = inner.error.take() {
            return Err(e);
        }
        match inner.file.take() {
            Some(f) => f.sync_all(),
            None => Ok(()),
        }
    }
}

/// Where a child's stdout goes.
pub(crate) enum Stdout {
    /// Discarded (the tool writes its output itself, e.g. `-Fd -f dir`).
    Null,
    /// A pipe the caller reads.
    Pipe,
}

/// A child to start.
pub(crate) struct ChildCommand {
    pub program: PathBuf,
    pub args: Vec<String>,
    /// Variables set in the child's environment.
    pub env: Vec<(String, String)>,
    /// Variables removed from the child's environment.
    pub env_remove: Vec<String>,
    pub stdout: Stdout,
}

impl ChildCommand {
    /// A client program of `bin_dir` reaching `node`: host, port and user in argv before
    /// `args`; the application name, sslmode, pgpass file and a connect timeout in its
    /// environment (never a password); the variables of [`crate::run::ENV_REMOVED`] removed.
    pub(crate) fn for_node(
        node: &crate::spec::NodeConn,
        bin_dir: &std::path::Path,
        program: &str,
        application_name: &str,
        args: Vec<String>,
        stdout: Stdout,
    ) -> ChildCommand {
        let mut full = vec![
            format!("--host={}", node.host),
            format!("--port={}", node.port),
            format!("--username={}", node.user),
            "--no-password".into(),
        ];
        let timeouts = node.timeouts.clone().unwrap_or_default();
        // Keepalives are TCP's: a unix socket (a directory as host) takes none.
        let tcp = !node.host.starts_with('/');
        full.extend(args.into_iter().map(|a| {
            if tcp {
                with_keepalives(a, &timeouts)
            } else {
                a
            }
        }));
        let mut env = vec![("PGAPPNAME".to_string(), application_name.to_string())];
        if !node.sslmode.is_empty() {
            env.push(("PGSSLMODE".into(), node.sslmode.clone()));
        }
        if let Some(p) = &node.passfile {
            env.push(("PGPASSFILE".into(), p.to_string_lossy().into_owned()));
        }
        // Covers TCP, TLS and authentication in libpq (a node that never answers fails the
        // child instead of hanging it until the maximum runtime).
        match &node.timeouts {
            Some(t) => env.push((
                "PGCONNECT_TIMEOUT".into(),
                t.connect.after.as_secs().to_string(),
            )),
            None if std::env::var_os("PGCONNECT_TIMEOUT").is_none() => {
                env.push(("PGCONNECT_TIMEOUT".into(), "10".into()));
            }
            None => {}
        }
        ChildCommand {
            program: bin_dir.join(program),
            args: full,
            env,
            env_remove: crate::run::ENV_REMOVED
                .iter()
                .map(|s| s.to_string())
                .collect(),
            stdout,
        }
    }

    /// argv as it is logged and reported: the program then the arguments. No secret is ever
    /// part of it (passwords go through pgpass files), but anything looking like a conninfo
    /// password is masked all the same.
    pub(crate) fn argv(&self) -> Vec<String> {
        std::iter::once(self.program.to_string_lossy().into_owned())
            .chain(self.args.iter().cloned())
            .map(|a| redact(&a))
            .collect()
    }
}

/// `--dbname=dbname=X` (and pg_dumpall's `--database=`) with libpq's TCP keepalive keys added
/// to the connection string: they have no environment variable. pg_dumpall and pg_dump -j
/// reuse the string for each of their connections.
fn with_keepalives(arg: String, t: &pgbackman_config::NodeTimeouts) -> String {
    let is_conninfo = ["--dbname=dbname=", "--database=dbname="]
        .iter()
        .any(|p| arg.starts_with(p));
    if !is_conninfo {
        return arg;
    }
    let mut arg = arg;
    for (k, v) in t.conninfo_params() {
        if k != "connect_timeout" {
            arg.push_str(&format!(" {k}={v}"));
        }
    }
    arg
}

/// Masks `password=...` in a conninfo-like argument.
pub(crate) fn redact(arg: &str) -> String {
    let lower = arg.to_ascii_lowercase();
    match lower.find("password=") {
        Some(pos) => format!("{}password=********", &arg[..pos]),
        None if lower.starts_with("postgres") && lower.contains("://") && arg.contains('@') => {
            "<connection uri removed>".into()
        }
        None => arg.to_string(),
    }
}

/// Kills a whole process group when dropped (unless disarmed): the supervising future may be
/// dropped at any await point, and no child may outlive it.
struct GroupGuard {
    pgid: Option<Pid>,
}

impl GroupGuard {
    fn signal(&self, sig: Signal) {
        if let Some(pgid) = self.pgid {
            // ESRCH (group already gone) is fine.
            let _ = killpg(pgid, sig);
        }
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        self.signal(Signal::SIGKILL);
    }
}

/// A running child.
pub(crate) struct Supervised {
    child: Child,
    guard: GroupGuard,
    stderr: Option<JoinHandle<String>>,
    /// Signs of life: bumped for each line of stderr, and by whoever reads its output
    /// ([`Supervised::activity`]); [`Supervised::wait_watched`] stops a child whose count
    /// stands still.
    activity: Arc<AtomicU64>,
}

/// A reader that counts what it reads into an activity counter: one relaxed add per read (of
/// up to a buffer's worth), so watching a stream costs nothing per byte.
pub(crate) struct Counting<R> {
    pub inner: R,
    pub activity: Arc<AtomicU64>,
}

impl<R: io::Read> io::Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.activity.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

/// How a supervised child ended.
#[derive(Debug)]
pub(crate) enum Ended {
    /// It exited by itself.
    Exited(ExitStatus),
    /// The cancellation token fired; the group was killed.
    Cancelled,
    /// The deadline passed; the group was killed.
    TimedOut,
    /// No sign of life (output read, stderr line) for the watchdog's time; the group was
    /// killed.
    Stalled,
}

/// Starts `cmd` in its own process group, stdin from /dev/null, stderr copied to `log`.
pub(crate) fn spawn(
    cmd: &ChildCommand,
    log: &Arc<RunLog>,
) -> io::Result<(Supervised, Option<tokio::process::ChildStdout>)> {
    spawn_with_stdin(cmd, log, false).map(|(s, out, _)| (s, out))
}

/// Like [`spawn`], with stdin a pipe the caller writes when `piped_stdin`.
pub(crate) fn spawn_with_stdin(
    cmd: &ChildCommand,
    log: &Arc<RunLog>,
    piped_stdin: bool,
) -> io::Result<(
    Supervised,
    Option<tokio::process::ChildStdout>,
    Option<tokio::process::ChildStdin>,
)> {
    // Through the launcher when there is one, so the child dies with us even on SIGKILL.
    let mut c = crate::launcher::command(&cmd.program);
    c.args(&cmd.args)
        .stdin(if piped_stdin {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(match cmd.stdout {
            Stdout::Null => Stdio::null(),
            Stdout::Pipe => Stdio::piped(),
        })
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    for k in &cmd.env_remove {
        c.env_remove(k);
    }
    for (k, v) in &cmd.env {
        c.env(k, v);
    }
    let mut child = c.spawn()?;
    let pgid = child
        .id()
        .and_then(|id| i32::try_from(id).ok())
        .map(Pid::from_raw);
    let guard = GroupGuard { pgid };
    let stdout = child.stdout.take();
    let stdin = child.stdin.take();
    let activity = Arc::new(AtomicU64::new(0));
    let stderr = child
        .stderr
        .take()
        .map(|s| tokio::spawn(copy_stderr(s, Arc::clone(log), Arc::clone(&activity))));
    Ok((
        Supervised {
            child,
            guard,
            stderr,
            activity,
        },
        stdout,
        stdin,
    ))
}

/// Copies stderr lines to the log (up to a limit) and returns the last [`TAIL_LINES`] lines.
async fn copy_stderr(stderr: ChildStderr, log: Arc<RunLog>, activity: Arc<AtomicU64>) -> String {
    let mut reader = BufReader::new(stderr);
    let mut tail: VecDeque<String> = VecDeque::with_capacity(TAIL_LINES + 1);
    let mut logged: u64 = 0;
    let mut truncated = false;
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match reader.read_until(b'\n', &mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                activity.fetch_add(1, Ordering::Relaxed);
                let line = String::from_utf8_lossy(&buf);
                let line = line.trim_end_matches(['\n', '\r']).to_string();
                logged += n as u64;
                if logged <= LOG_STDERR_LIMIT {
                    log.line(&line);
                } else if !truncated {
                    truncated = true;
                    log.line(
                        "[... stderr too long: the rest is not logged, see the tail below ...]",
                    );
                }
                if tail.len() == TAIL_LINES {
                    tail.pop_front();
                }
                tail.push_back(line);
            }
        }
    }
    let tail: Vec<String> = tail.into_iter().collect();
    if truncated {
        log.line("[... last lines of stderr ...]");
        for l in &tail {
            log.line(l);
        }
    }
    tail.join("\n")
}

impl Supervised {
    /// The child's activity counter, for the reader of its output to bump
    /// (see [`Counting`]).
    pub(crate) fn activity(&self) -> Arc<AtomicU64> {
        Arc::clone(&self.activity)
    }

    /// Waits for the child, calling `tick` every `tick_every`. On `cancel` or at `deadline` the
    /// group gets SIGTERM, then SIGKILL after [`GRACE`]. Any member of the group still alive
    /// when the leader is gone is killed.
    pub(crate) async fn wait(
        &mut self,
        cancel: &CancellationToken,
        deadline: Option<Instant>,
        tick_every: Duration,
        tick: &mut (dyn FnMut() + Send),
    ) -> io::Result<Ended> {
        self.wait_watched(cancel, deadline, None, tick_every, tick)
            .await
    }

    /// [`Supervised::wait`], and when `stall` is given, the child is also stopped
    /// ([`Ended::Stalled`]) once its activity counter has not moved for that long (checked at
    /// each tick, so `tick_every` is the watchdog's resolution).
    pub(crate) async fn wait_watched(
        &mut self,
        cancel: &CancellationToken,
        deadline: Option<Instant>,
        stall: Option<Duration>,
        tick_every: Duration,
        tick: &mut (dyn FnMut() + Send),
    ) -> io::Result<Ended> {
        let mut ticker = tokio::time::interval(tick_every);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let far = Instant::now() + Duration::from_secs(100 * 365 * 86400);
        let mut seen = self.activity.load(Ordering::Relaxed);
        let mut alive_at = Instant::now();
        let stop = loop {
            tokio::select! {
                status = self.child.wait() => {
                    let status = status?;
                    tick();
                    // Stragglers (parallel workers of a killed leader): gone with the group.
                    self.guard.signal(Signal::SIGKILL);
                    return Ok(Ended::Exited(status));
                }
                () = cancel.cancelled() => break Ended::Cancelled,
                () = tokio::time::sleep_until(deadline.unwrap_or(far)), if deadline.is_some() => break Ended::TimedOut,
                _ = ticker.tick() => {
                    tick();
                    let now = self.activity.load(Ordering::Relaxed);
                    if now != seen {
                        seen = now;
                        alive_at = Instant::now();
                    } else if stall.is_some_and(|s| alive_at.elapsed() >= s) {
                        break Ended::Stalled;
                    }
                }
            }
        };
        self.guard.signal(Signal::SIGTERM);
        if tokio::time::timeout(GRACE, self.child.wait())
            .await
            .is_err()
        {
            self.guard.signal(Signal::SIGKILL);
            self.child.wait().await?;
        }
        self.guard.signal(Signal::SIGKILL);
        Ok(stop)
    }

    /// The last lines of stderr (waits for the copy to end: the pipe closes when the whole
    /// group is gone). Bounded, so that a grandchild holding the pipe cannot hang the run.
    pub(crate) async fn stderr_tail(&mut self) -> String {
        match self.stderr.take() {
            Some(handle) => match tokio::time::timeout(GRACE, handle).await {
                Ok(Ok(tail)) => tail,
                _ => String::new(),
            },
            None => String::new(),
        }
    }
}

impl Drop for Supervised {
    fn drop(&mut self) {
        if let Some(h) = &self.stderr {
            h.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redaction() {
        assert_eq!(redact("--dbname=dbname='x'"), "--dbname=dbname='x'");
        assert_eq!(
            redact("dbname=x password=secret"),
            "dbname=x password=********"
        );
        assert_eq!(redact("postgresql://u:pw@h/db"), "<connection uri removed>");
        assert_eq!(redact("-Fc"), "-Fc");
    }
}
