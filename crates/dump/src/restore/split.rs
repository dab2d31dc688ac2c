//! The tee feed with a split data load. pg_restore loads each table with one COPY, so a table
//! holding most of the rows bounds the data section whatever `-j` says. Its COPY text is one
//! row per line (COPY escapes newlines), so its lines are dealt out in large chunks over
//! `jobs` psql children, each running the same `COPY ... FROM stdin`:
//!
//! 1. `toc`: `pg_restore --list` (the table of contents is at the start of the stream);
//! 2. `pre_data`: `pg_restore --section=pre-data`, streamed (stops reading after the TOC);
//! 3. `pg_restore` (the data section), concurrently:
//!    - `pg_restore --section=data -L <the list without the split table's TABLE DATA>` fed
//!      while the same bytes are written to the staging file (sequences, large objects and
//!      every other table stay in pg_restore's hands);
//!    - `pg_restore -L <only that entry>` writing the table's COPY script to its stdout,
//!      read here: its `SET` lines and the COPY statement become the argv of `jobs` psql
//!      (`-c SET ... -c COPY ...`), and its rows go to their stdins, 1 MB at a time, to
//!      whichever is free;
//! 4. `post_data` (back in exec.rs): `pg_restore --section=post-data -j N` from the file.
//!
//! Any child failing, cancel or timeout kills every other child of the step; the caller
//! undoes the restore as for any failure.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::task::JoinHandle;

use super::{Exec, Stop, fail};
use crate::child::{self, Ended, Stdout, Supervised};
use crate::quote::conninfo_value;

/// Rows are dealt out in chunks of about this size.
const CHUNK: usize = 1 << 20;

/// The `pg_restore --list` entry of the TABLE DATA of `schema.table`: the list with that entry
/// commented out, and a list of that entry alone. `None` unless exactly one entry matches.
pub(super) fn split_toc(list: &str, schema: &str, table: &str) -> Option<(String, String)> {
    let want = format!("TABLE DATA {schema} {table} ");
    let mut rest = String::with_capacity(list.len() + 8);
    let mut only = None;
    for line in list.lines() {
        let entry = line
            .split_once("; ")
            .filter(|(id, _)| !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|(_, r)| r.splitn(3, ' ').nth(2));
        if entry.is_some_and(|e| e.starts_with(&want)) {
            if only.is_some() {
                return None;
            }
            only = Some(format!("{line}\n"));
            rest.push(';');
        }
        rest.push_str(line);
        rest.push('\n');
    }
    only.map(|o| (rest, o))
}

/// Reads pg_restore's script up to the COPY statement: the `SET` lines before it, and the
/// statement. Comments, blank lines and `\restrict`/`\unrestrict` are skipped; anything else
/// is an error (the script is not what this code knows how to split).
fn read_header(r: &mut impl BufRead) -> io::Result<(Vec<String>, String)> {
    let mut pre = Vec::new();
    let mut line = String::new();
    loop {
        line.clear();
        if r.read_line(&mut line)? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "pg_restore wrote no COPY statement",
            ));
        }
        let l = line.trim_end();
        if l.is_empty()
            || l.starts_with("--")
            || l.starts_with("\\restrict ")
            || l.starts_with("\\unrestrict ")
        {
            continue;
        }
        if l.starts_with("COPY ") && l.ends_with(" FROM stdin;") {
            return Ok((pre, l.to_string()));
        }
        if l.starts_with("SET ") || l.starts_with("SELECT pg_catalog.set_config(") {
            pre.push(l.to_string());
            continue;
        }
        return Err(io::Error::other(format!(
            "unexpected line before the COPY statement: {}",
            l.chars().take(100).collect::<String>()
        )));
    }
}

/// Deals the rows of `r` (up to the `\.` line) over `sinks` in chunks of whole lines, each
/// chunk to whichever sink takes it first, then reads `r` to its end. Returns the row bytes.
fn distribute(
    r: &mut impl BufRead,
    sinks: Vec<File>,
    written: &AtomicU64,
    abort: &AtomicBool,
) -> io::Result<u64> {
    let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(sinks.len() * 2);
    let rx = Arc::new(Mutex::new(rx));
    std::thread::scope(|s| {
        let writers: Vec<_> = sinks
            .into_iter()
            .map(|mut f| {
                let rx = Arc::clone(&rx);
                s.spawn(move || -> io::Result<()> {
                    loop {
                        let next = rx.lock().map_err(|_| io::Error::other("poisoned"))?.recv();
                        match next {
                            Ok(chunk) => {
                                if let Err(e) = f.write_all(&chunk) {
                                    abort.store(true, Ordering::Relaxed);
                                    return Err(e);
                                }
                            }
                            Err(_) => return Ok(()),
                        }
                    }
                })
            })
            .collect();
        let mut read = || -> io::Result<u64> {
            let mut total = 0u64;
            let mut chunk = Vec::with_capacity(CHUNK + (64 << 10));
            let mut line = Vec::new();
            loop {
                line.clear();
                if r.read_until(b'\n', &mut line)? == 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the rows ended without \\.",
                    ));
                }
                let end = line == b"\\.\n";
                if !end {
                    chunk.extend_from_slice(&line);
                }
                if (end && !chunk.is_empty()) || chunk.len() >= CHUNK {
                    if abort.load(Ordering::Relaxed) {
                        return Err(io::Error::new(io::ErrorKind::Interrupted, "stopped"));
                    }
                    let n = chunk.len() as u64;
                    total += n;
                    let full =
                        std::mem::replace(&mut chunk, Vec::with_capacity(CHUNK + (64 << 10)));
                    tx.send(full).map_err(|_| {
                        io::Error::new(io::ErrorKind::BrokenPipe, "every COPY ended")
                    })?;
                    written.fetch_add(n, Ordering::Relaxed);
                }
                if end {
                    break;
                }
            }
            // What follows (comments, \unrestrict) is not data; pg_restore must still finish.
            io::copy(r, &mut io::sink())?;
            Ok(total)
        };
        let res = read();
        drop(tx);
        if res.is_err() {
            abort.store(true, Ordering::Relaxed);
        }
        let mut first = res;
        for w in writers {
            let r = w
                .join()
                .unwrap_or_else(|_| Err(io::Error::other("writer panicked")));
            if let (Ok(_), Err(e)) = (&first, r) {
                first = Err(e);
            }
        }
        first
    })
}

/// A child of the split step.
struct Running {
    step: &'static str,
    program: &'static str,
    sup: Supervised,
}

impl Exec<'_> {
    fn start(
        &self,
        step: &'static str,
        program: &'static str,
        args: Vec<String>,
        stdin: bool,
        stdout: bool,
    ) -> Result<(Running, Option<File>, Option<tokio::process::ChildStdout>), Stop> {
        let mut cmd = self.child_command(program, args);
        if stdout {
            cmd.stdout = Stdout::Pipe;
        }
        if program == "psql" {
            cmd.env
                .push(("PGOPTIONS".into(), "-c synchronous_commit=off".into()));
        }
        self.log.event(&format!(
            "step {step}: {}",
            serde_json::to_string(&cmd.argv()).unwrap_or_default()
        ));
        let (sup, out, inp) = child::spawn_with_stdin(&cmd, &self.log, stdin)
            .map_err(|e| fail(step, format!("cannot start {}: {e}", cmd.program.display())))?;
        let inp = match inp {
            Some(i) => Some(File::from(
                i.into_owned_fd()
                    .map_err(|e| fail(step, format!("pipe: {e}")))?,
            )),
            None => None,
        };
        Ok((Running { step, program, sup }, inp, out))
    }

    /// Waits for every child (and every helper thread in `helpers`) to end. The first failure
    /// kills the others. Returns the first failure, if any.
    async fn wait_all(
        &self,
        running: Vec<Running>,
        helpers: Vec<(&'static str, JoinHandle<io::Result<u64>>)>,
        progress: &(dyn Fn(u64) + Sync),
    ) -> Result<(), Stop> {
        let local = self.cancel.child_token();
        let mut set = tokio::task::JoinSet::new();
        for (i, mut r) in running.into_iter().enumerate() {
            let tok = local.clone();
            let deadline = self.deadline;
            set.spawn(async move {
                let mut nothing = || {};
                let ended = r
                    .sup
                    .wait(&tok, deadline, Duration::from_secs(3600), &mut nothing)
                    .await;
                let tail = r.sup.stderr_tail().await;
                (i, r.step, r.program, ended, tail)
            });
        }
        let mut first: Option<Stop> = None;
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        let mut last = 0;
        loop {
            tokio::select! {
                next = set.join_next() => {
                    let Some(joined) = next else { break };
                    let (_, step, program, ended, stderr_tail) = match joined {
                        Ok(v) => v,
                        Err(e) => {
                            local.cancel();
                            first.get_or_insert(fail("pg_restore", format!("internal error: {e}")));
                            continue;
                        }
                    };
                    let stop = match ended {
                        Ok(Ended::Exited(s)) if s.success() => {
                            self.log.event(&format!("{step}: {s}"));
                            None
                        }
                        Ok(Ended::Exited(s)) => {
                            self.log.event(&format!("{step}: {s}"));
                            Some(Stop::Failed {
                                step: step.into(),
                                exit_status: s.code(),
                                message: match s.code() {
                                    Some(c) => format!("{program} exited with status {c}"),
                                    None => format!("{program} ended abnormally ({s})"),
                                },
                                stderr_tail,
                            })
                        }
                        // Killed because another child failed: that failure is the one reported.
                        Ok(Ended::Cancelled) if !self.cancel.is_cancelled() => None,
                        Ok(Ended::Cancelled) => Some(Stop::Cancelled { step: step.into() }),
                        // A restore's children have no watchdog: Stalled cannot come.
                        Ok(Ended::TimedOut | Ended::Stalled) => Some(self.timed_out(step)),
                        Err(e) => Some(fail(step, format!("waiting for {program}: {e}"))),
                    };
                    if let Some(s) = stop {
                        local.cancel();
                        // A real failure outranks the Cancelled of a child killed after it.
                        if first.is_none() || matches!(first, Some(Stop::Cancelled { .. })) && matches!(s, Stop::Failed { .. }) {
                            first = Some(s);
                        }
                    }
                }
                _ = tick.tick() => {
                    let now = self.written.load(Ordering::Relaxed);
                    if now != last {
                        last = now;
                        progress(now);
                    }
                }
            }
        }
        for (step, h) in helpers {
            let r = h
                .await
                .unwrap_or_else(|e| Err(io::Error::other(format!("internal error: {e}"))));
            if let Err(e) = r
                && first.is_none()
            {
                first = Some(fail(
                    step,
                    format!(
                        "feeding the restore from {}: {e}",
                        self.spec.set_dir.display()
                    ),
                ));
            }
        }
        first.map_or(Ok(()), Err)
    }

    /// Runs the table of contents step: `pg_restore --list` fed from the set.
    async fn toc(&self, dump: &Path, progress: &(dyn Fn(u64) + Sync)) -> Result<String, Stop> {
        let (r, inp, out) = self.start("toc", "pg_restore", vec!["--list".into()], true, true)?;
        let abort = Arc::new(AtomicBool::new(false));
        let pump = spawn_decode(
            dump,
            self.ids.clone(),
            inp,
            None,
            Arc::new(AtomicU64::new(0)),
            &abort,
        );
        let mut out = out.ok_or_else(|| fail("toc", "no stdout pipe"))?;
        let reader = tokio::spawn(async move {
            let mut s = String::new();
            out.read_to_string(&mut s).await.map(|_| s)
        });
        let r = self.wait_all(vec![r], vec![("toc", pump)], progress).await;
        abort.store(true, Ordering::Relaxed);
        r?;
        reader
            .await
            .map_err(|e| fail("toc", format!("internal error: {e}")))?
            .map_err(|e| fail("toc", format!("reading pg_restore --list: {e}")))
    }

    /// The tee feed with the data of `schema.table` split over `jobs` COPYs. Returns false
    /// (nothing done) when the table of contents does not name that table exactly once: the
    /// caller then runs the plain tee feed.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn tee_split(
        &mut self,
        dump: &Path,
        staged: &Path,
        target: &str,
        schema: &str,
        table: &str,
        staging: &Path,
        progress: &(dyn Fn(u64) + Sync),
    ) -> Result<bool, Stop> {
        let jobs = self.spec.jobs.max(1) as usize;
        let t = std::time::Instant::now();
        let list = self.toc(dump, progress).await?;
        let Some((rest, only)) = split_toc(&list, schema, table) else {
            self.log.event(&format!(
                "toc: no single TABLE DATA entry of {schema}.{table}: data not split"
            ));
            return Ok(false);
        };
        let io = |p: &Path, e: io::Error| fail("toc", format!("{}: {e}", p.display()));
        let rest_list: PathBuf = staging.join("rest.list");
        let only_list: PathBuf = staging.join("split.list");
        for (p, text) in [(&rest_list, &rest), (&only_list, &only)] {
            let mut f = crate::set::create_private_file(p).map_err(|e| io(p, e))?;
            f.write_all(text.as_bytes()).map_err(|e| io(p, e))?;
        }
        self.timed("toc", t);

        // pre-data
        let t = std::time::Instant::now();
        let db = format!("--dbname=dbname={}", conninfo_value(target));
        let (r, inp, _) = self.start(
            "pre_data",
            "pg_restore",
            vec![
                db.clone(),
                "--exit-on-error".into(),
                "--verbose".into(),
                "--section=pre-data".into(),
            ],
            true,
            false,
        )?;
        let abort = Arc::new(AtomicBool::new(false));
        let pump = spawn_decode(
            dump,
            self.ids.clone(),
            inp,
            None,
            Arc::new(AtomicU64::new(0)),
            &abort,
        );
        let r = self
            .wait_all(vec![r], vec![("decompress", pump)], progress)
            .await;
        abort.store(true, Ordering::Relaxed);
        r?;
        self.timed("pre_data", t);

        // data
        let t = std::time::Instant::now();
        let abort = Arc::new(AtomicBool::new(false));
        let args = vec![
            db.clone(),
            "--exit-on-error".into(),
            "--verbose".into(),
            "--section=data".into(),
            format!("--use-list={}", rest_list.display()),
        ];
        self.out.command = self.child_command("pg_restore", args.clone()).argv();
        let (main, inp, _) = self.start("pg_restore", "pg_restore", args, true, false)?;
        let mut running = vec![main];
        let mut helpers = vec![(
            "decompress",
            spawn_decode(
                dump,
                self.ids.clone(),
                inp,
                Some(staged.to_path_buf()),
                Arc::clone(&self.written),
                &abort,
            ),
        )];
        let started = self.start(
            "split",
            "pg_restore",
            vec![
                "--file=-".into(),
                format!("--use-list={}", only_list.display()),
            ],
            true,
            true,
        );
        let (script, inp, out) = match started {
            Ok(v) => v,
            Err(e) => {
                abort.store(true, Ordering::Relaxed);
                drop(running);
                return Err(e);
            }
        };
        running.push(script);
        helpers.push((
            "decompress",
            spawn_decode(
                dump,
                self.ids.clone(),
                inp,
                None,
                Arc::new(AtomicU64::new(0)),
                &abort,
            ),
        ));
        let out = out
            .ok_or_else(|| fail("split", "no stdout pipe"))
            .and_then(|o| {
                o.into_owned_fd()
                    .map_err(|e| fail("split", format!("pipe: {e}")))
            });
        let out = match out {
            Ok(o) => File::from(o),
            Err(e) => {
                abort.store(true, Ordering::Relaxed);
                return Err(e);
            }
        };
        // The header comes first; the COPY children need it in their argv.
        let header = tokio::task::spawn_blocking(move || {
            let mut r = BufReader::with_capacity(CHUNK, out);
            read_header(&mut r).map(|h| (h, r))
        });
        let header = tokio::select! {
            h = header => h.map_err(|e| fail("split", format!("internal error: {e}"))),
            () = self.cancel.cancelled() => Err(Stop::Cancelled { step: "split".into() }),
        };
        let ((pre, copy), mut reader) = match header {
            Ok(Ok(v)) => v,
            Ok(Err(e)) => {
                abort.store(true, Ordering::Relaxed);
                // pg_restore's own failure, when there is one, says more.
                self.wait_all(running, helpers, progress).await?;
                return Err(fail("split", format!("reading pg_restore's script: {e}")));
            }
            Err(stop) => {
                abort.store(true, Ordering::Relaxed);
                return Err(stop);
            }
        };
        self.log.event(&format!(
            "split: {copy} over {jobs} connection(s), after {} SET line(s)",
            pre.len()
        ));
        let mut sinks = Vec::with_capacity(jobs);
        for _ in 0..jobs {
            let mut args = self.psql_args(target);
            for p in &pre {
                args.push(format!("--command={p}"));
            }
            args.push(format!("--command={copy}"));
            match self.start("split_copy", "psql", args, true, false) {
                Ok((r, Some(inp), _)) => {
                    running.push(r);
                    sinks.push(inp);
                }
                Ok((r, None, _)) => {
                    running.push(r);
                    abort.store(true, Ordering::Relaxed);
                    return Err(fail("split_copy", "no stdin pipe"));
                }
                Err(e) => {
                    abort.store(true, Ordering::Relaxed);
                    return Err(e);
                }
            }
        }
        let (w, a) = (Arc::new(AtomicU64::new(0)), Arc::clone(&abort));
        helpers.push((
            "split",
            tokio::task::spawn_blocking(move || distribute(&mut reader, sinks, &w, &a)),
        ));
        let r = self.wait_all(running, helpers, progress).await;
        abort.store(true, Ordering::Relaxed);
        r?;
        self.timed("pg_restore", t);
        Ok(true)
    }
}

/// Decodes the set's dump into `pipe` (a reader that closes it early is no error), and into
/// the new file `file` when given, on a blocking thread.
fn spawn_decode(
    dump: &Path,
    ids: Option<Arc<crate::crypt::Identities>>,
    pipe: Option<File>,
    file: Option<PathBuf>,
    written: Arc<AtomicU64>,
    abort: &Arc<AtomicBool>,
) -> JoinHandle<io::Result<u64>> {
    let src = dump.to_path_buf();
    let abort = Arc::clone(abort);
    tokio::task::spawn_blocking(move || {
        let Some(pipe) = pipe else {
            return Err(io::Error::other("no stdin pipe"));
        };
        match file {
            // Split feeds read a set in a directory only (each pass would be a download).
            Some(dst) => super::feed::decode_tee(
                crate::crypt::open_file(&src, ids.is_some(), ids.as_deref())?,
                pipe,
                &dst,
                &written,
                &abort,
            ),
            None => match super::feed::decode_into(
                crate::crypt::open_file(&src, ids.is_some(), ids.as_deref())?,
                pipe,
                &written,
                &abort,
            ) {
                Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(0),
                r => r,
            },
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toc_split() {
        let list = ";\n; Archive created at\n;\n215; 1259 16390 TABLE app events bench_owner\n3380; 0 16390 TABLE DATA app events bench_owner\n3381; 0 16400 TABLE DATA app events_archive bench_owner\n3382; 0 0 SEQUENCE SET app events_id_seq bench_owner\n";
        let (rest, only) = split_toc(list, "app", "events").unwrap();
        assert_eq!(only, "3380; 0 16390 TABLE DATA app events bench_owner\n");
        assert!(rest.contains("\n;3380; 0 16390 TABLE DATA app events "));
        assert!(rest.contains("\n3381; 0 16400 TABLE DATA app events_archive"));
        assert!(rest.contains("\n215; 1259 16390 TABLE app events"));
        assert_eq!(rest.lines().count(), list.lines().count());
        assert!(split_toc(list, "app", "users").is_none());
        let twice = format!("{list}3390; 0 1 TABLE DATA app events other\n");
        assert!(split_toc(&twice, "app", "events").is_none());
    }

    #[test]
    fn header_and_rows() {
        let script = "--\n-- PostgreSQL database dump\n--\n\\restrict abc\nSET client_encoding = 'UTF8';\nSELECT pg_catalog.set_config('search_path', '', false);\n\n--\nCOPY app.t (a, b) FROM stdin;\n1\tx\\ny\n2\t\\\\.\n3\t\\N\n\\.\n\n\\unrestrict abc\n";
        let mut r = BufReader::with_capacity(8, script.as_bytes());
        let (pre, copy) = read_header(&mut r).unwrap();
        assert_eq!(pre.len(), 2);
        assert_eq!(copy, "COPY app.t (a, b) FROM stdin;");
        let dir = tempfile::tempdir().unwrap();
        let (p1, p2) = (dir.path().join("1"), dir.path().join("2"));
        let sinks = vec![File::create(&p1).unwrap(), File::create(&p2).unwrap()];
        let n = distribute(&mut r, sinks, &AtomicU64::new(0), &AtomicBool::new(false)).unwrap();
        let mut all = std::fs::read(&p1).unwrap();
        all.extend(std::fs::read(&p2).unwrap());
        assert_eq!(all, b"1\tx\\ny\n2\t\\\\.\n3\t\\N\n");
        assert_eq!(n, all.len() as u64);

        let mut bad = BufReader::new("SET a = 1;\nCREATE TABLE x ();\n".as_bytes());
        assert!(read_header(&mut bad).is_err());
        let mut cut = BufReader::new("1\t2\n".as_bytes());
        let sinks = vec![File::create(&p1).unwrap()];
        assert!(distribute(&mut cut, sinks, &AtomicU64::new(0), &AtomicBool::new(false)).is_err());
    }
}
