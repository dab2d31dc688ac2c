//! Running a client tool (pg_restore) for a verification: its output, its stderr tail, its
//! process group killed when the verification stops.

use super::*;

/// Why a tool run did not succeed.
#[derive(Debug)]
pub(super) enum ToolError {
    Cancelled,
    Failed {
        message: String,
        stderr_tail: String,
    },
}

impl ToolError {
    pub(super) fn failed(message: impl Into<String>) -> ToolError {
        ToolError::Failed {
            message: message.into(),
            stderr_tail: String::new(),
        }
    }
}

pub(super) struct ToolOutput {
    pub(super) stdout: String,
}

/// A client tool run as a supervised child: argv only, its own process group (killed as a group
/// on cancel and when dropped), connection variables removed from its environment.
pub(super) struct Tool {
    pub(super) program: PathBuf,
    pub(super) args: Vec<String>,
    pub(super) env: Vec<(String, String)>,
    /// The stdin file is encrypted: read through these identities (crate::crypt).
    pub(super) ids: Option<Arc<crate::crypt::Identities>>,
}

impl Tool {
    /// Runs the tool; `zstd_stdin` is decoded in-process and fed to its stdin (a tool that stops
    /// reading early, like `pg_restore --list`, is fine).
    pub(super) async fn run(
        &self,
        zstd_stdin: Option<Opener>,
        capture_stdout: bool,
        cancel: &CancellationToken,
    ) -> Result<ToolOutput, ToolError> {
        let name = self
            .program
            .file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
        // Through the launcher, like the executor's other children: a SIGKILLed agent must not
        // leave a pg_restore --list (or a drill's restore) behind.
        let mut c = crate::launcher::command(&self.program);
        c.args(&self.args)
            .stdin(if zstd_stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(if capture_stdout {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        for k in ENV_REMOVED {
            c.env_remove(k);
        }
        for (k, v) in &self.env {
            c.env(k, v);
        }
        let mut child = c.spawn().map_err(|e| {
            ToolError::failed(format!("cannot start {}: {e}", self.program.display()))
        })?;
        let group = GroupKill(
            child
                .id()
                .and_then(|id| i32::try_from(id).ok())
                .map(Pid::from_raw),
        );
        let feeder = match (zstd_stdin, child.stdin.take()) {
            (Some(open), Some(stdin)) => {
                let fd = stdin
                    .into_owned_fd()
                    .map_err(|e| ToolError::failed(format!("pipe: {e}")))?;
                let ids = self.ids.clone();
                Some(tokio::task::spawn_blocking(move || {
                    let src = open()
                        .and_then(|r| crate::crypt::plain(r, ids.as_deref(), "the dump"))
                        .map_err(|e| e.to_string())?;
                    feed_zstd(src, File::from(fd))
                }))
            }
            _ => None,
        };
        let stdout = child.stdout.take().map(|s| tokio::spawn(read_all(s)));
        let stderr = child.stderr.take().map(|s| tokio::spawn(tail(s)));
        let status = tokio::select! {
            s = child.wait() => s.map_err(|e| ToolError::failed(format!("waiting for {name}: {e}")))?,
            () = cancel.cancelled() => {
                group.signal(Signal::SIGTERM);
                if tokio::time::timeout(GRACE, child.wait()).await.is_err() {
                    group.signal(Signal::SIGKILL);
                    let _ = child.wait().await;
                }
                return Err(ToolError::Cancelled);
            }
        };
        group.signal(Signal::SIGKILL);
        let stderr_tail = match stderr {
            Some(h) => tokio::time::timeout(GRACE, h)
                .await
                .ok()
                .and_then(Result::ok)
                .unwrap_or_default(),
            None => String::new(),
        };
        let stdout = match stdout {
            Some(h) => h.await.unwrap_or_default(),
            None => String::new(),
        };
        let fed = match feeder {
            Some(h) => h
                .await
                .unwrap_or_else(|e| Err(format!("internal error: {e}"))),
            None => Ok(()),
        };
        if !status.success() {
            let mut message = match status.code() {
                Some(c) => format!("{name} exited with status {c}"),
                None => format!("{name} ended abnormally ({status})"),
            };
            if let Err(e) = fed {
                message.push_str(&format!(" (reading the dump: {e})"));
            }
            return Err(ToolError::Failed {
                message,
                stderr_tail,
            });
        }
        // The tool succeeded: a feeder stopped by a closed pipe only means it had read enough.
        Ok(ToolOutput { stdout })
    }
}

/// Decodes `path` (zstd) into the child's stdin. A closed pipe ends it quietly: the child may
/// stop reading once it has what it needs.
pub(super) fn feed_zstd(src: impl Read, mut to: File) -> Result<(), String> {
    let mut d = zstd::stream::read::Decoder::new(src).map_err(|e| format!("zstd: {e}"))?;
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = match d.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(format!("zstd: {e}")),
        };
        match to.write_all(&buf[..n]) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => return Ok(()),
            Err(e) => return Err(format!("writing to the child: {e}")),
        }
    }
}

pub(super) async fn read_all(mut r: impl AsyncRead + Unpin) -> String {
    let mut v = Vec::new();
    let _ = tokio::io::AsyncReadExt::read_to_end(&mut r, &mut v).await;
    String::from_utf8_lossy(&v).into_owned()
}

pub(super) async fn tail(r: impl AsyncRead + Unpin) -> String {
    let mut lines = BufReader::new(r).lines();
    let mut t: VecDeque<String> = VecDeque::new();
    while let Ok(Some(l)) = lines.next_line().await {
        if t.len() == TAIL_LINES {
            t.pop_front();
        }
        t.push_back(l);
    }
    Vec::from(t).join("\n")
}

/// Kills the child's process group when dropped.
pub(super) struct GroupKill(Option<Pid>);

impl GroupKill {
    pub(super) fn signal(&self, sig: Signal) {
        if let Some(p) = self.0 {
            let _ = killpg(p, sig);
        }
    }
}

impl Drop for GroupKill {
    fn drop(&mut self) {
        self.signal(Signal::SIGKILL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn feeding_stops_quietly_when_the_reader_leaves() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.zst");
        let data = vec![7u8; 4 << 20];
        std::fs::write(&p, zstd::encode_all(&data[..], 3).unwrap()).unwrap();
        let (r, w) = std::io::pipe().unwrap();
        drop(r);
        let w: std::os::fd::OwnedFd = w.into();
        assert_eq!(feed_zstd(File::open(&p).unwrap(), File::from(w)), Ok(()));
    }
}
