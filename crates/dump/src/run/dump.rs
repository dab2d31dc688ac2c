//! The dump step of a run: pg_dump / pg_dumpall supervised (maximum runtime, progress
//! watchdog), its output streamed through zstd and sha256 or hashed as a directory, and the row
//! counts taken in its snapshot meanwhile.

use super::*;

/// Exact row counts and the tables that could not be counted.
type Counted = (BTreeMap<String, i64>, Vec<String>);

/// The dump's program, its arguments after the connection options, and where its output goes.
struct DumpCommand {
    program: &'static str,
    args: Vec<String>,
    /// A file the child's stdout is streamed to through zstd at this level.
    stream_to: Option<(PathBuf, i32)>,
    /// A directory the child writes itself (directory format).
    dir_out: Option<PathBuf>,
}

impl Run<'_> {
    /// Row counts of a custom-format dump: those its stream gave, the other tables counted
    /// with SQL in the dump's snapshot (still open).
    async fn stream_counts(
        &mut self,
        session: &NodeSession,
        tables: &[TableRef],
        stream_rows: &rows::StreamRows,
    ) -> Result<Counted, Stop> {
        let t = std::time::Instant::now();
        let read = stream_rows.lock().ok().and_then(|mut r| r.take());
        let (found, left) = match read {
            Some(Ok(archive)) => rows::split(tables, &archive),
            other => {
                let why = match other {
                    Some(Err(e)) => e.to_string(),
                    _ => "the dump was not read to its end".into(),
                };
                self.log.event(&format!(
                    "row counts: not read from the dump stream ({why}); counting every table with SQL"
                ));
                let keys = tables
                    .iter()
                    .map(|t| node::table_key(&t.schema, &t.name))
                    .collect();
                (Vec::new(), keys)
            }
        };
        let (mut counts, notes) = if left.is_empty() {
            (BTreeMap::new(), Vec::new())
        } else {
            match self
                .guarded("row_counts", introspect::count_rows(&session.client, &left))
                .await
            {
                Ok(c) => c,
                Err(stop) => {
                    let _ = session.cancel_query().await;
                    return Err(stop);
                }
            }
        };
        self.log.event(&format!(
            "row counts: {} tables read from the dump stream, {} counted with SQL in its snapshot",
            found.len(),
            left.len()
        ));
        if !left.is_empty() {
            self.timed("row_counts", t);
        }
        counts.extend(found);
        Ok((counts, notes))
    }

    /// The dump's progress watchdog: `[nodes] stall_timeout` (the default when the spec carries
    /// no timeouts), None when disabled.
    fn stall_limit(&self) -> Option<pgbackman_config::Limit> {
        match &self.spec.node.timeouts {
            Some(t) => t.stall.clone(),
            None => pgbackman_config::NodeTimeouts::default().stall,
        }
    }

    /// The connection part of a child's argv and environment.
    fn child_command(&self, program: &str, args: Vec<String>, stdout: Stdout) -> ChildCommand {
        let spec = self.spec;
        let mut cmd = ChildCommand::for_node(
            &spec.node,
            &spec.bin_dir,
            program,
            &spec.application_name,
            args,
            stdout,
        );
        // A backend blocked on a lock notices a vanished pg_dump only when it next writes; with
        // this (PostgreSQL 14+) it checks every few seconds, so a killed dump leaves no backend.
        if self.server_version_num.is_some_and(|v| v >= 140000) {
            cmd.env.push((
                "PGOPTIONS".into(),
                "-c client_connection_check_interval=2000".into(),
            ));
        }
        cmd
    }

    /// argv (after the connection options) of the dump, where its output goes (a file streamed
    /// through zstd, or a directory written by pg_dump), and the program.
    fn dump_arguments(
        &mut self,
        staging: &Path,
        client_major: u32,
        snapshot: Option<&str>,
    ) -> DumpCommand {
        let spec = self.spec;
        let mut args: Vec<String> = Vec::new();
        let mut stream_to: Option<(PathBuf, i32)> = None;
        let mut dir_out: Option<PathBuf> = None;
        let lock_wait = spec
            .lock_wait_timeout
            .map(|d| format!("--lock-wait-timeout={}", d.as_millis().max(1)));
        let program = match spec.code {
            BackupCode::Full | BackupCode::Schema | BackupCode::Data => {
                match spec.format {
                    DumpFormat::Custom { zstd_level } => {
                        args.extend(["--format=custom".into(), "--compress=0".into()]);
                        stream_to = Some((staging.join(CUSTOM_DUMP_FILE), zstd_level));
                        self.dump_file = Some(CUSTOM_DUMP_FILE.into());
                    }
                    DumpFormat::Directory { jobs } => {
                        let out = staging.join(DIRECTORY_DUMP);
                        args.extend([
                            "--format=directory".into(),
                            format!("--jobs={jobs}"),
                            if client_major >= 16 {
                                "--compress=zstd".into()
                            } else {
                                "--compress=5".into()
                            },
                            format!("--file={}", out.display()),
                        ]);
                        dir_out = Some(out);
                        self.dump_file = Some(DIRECTORY_DUMP.into());
                    }
                }
                match spec.code {
                    BackupCode::Schema => args.push("--schema-only".into()),
                    BackupCode::Data => args.push("--data-only".into()),
                    _ => {}
                }
                args.extend(lock_wait.clone());
                if let Some(id) = snapshot {
                    args.push(format!("--snapshot={id}"));
                }
                args.push("--verbose".into());
                args.extend(spec.extra_args.iter().cloned());
                args.push(format!("--dbname=dbname={}", conninfo_value(&spec.dbname)));
                "pg_dump"
            }
            // BASEBACKUP never gets here (check_arguments refuses it: crate::basebackup).
            BackupCode::Cluster | BackupCode::Globals | BackupCode::BaseBackup => {
                args.push(format!(
                    "--database=dbname={}",
                    conninfo_value(&spec.node.admin_dbname)
                ));
                if spec.code == BackupCode::Globals {
                    args.push("--globals-only".into());
                }
                if spec.profile == NodeProfile::Managed {
                    args.push("--no-role-passwords".into());
                }
                args.extend(lock_wait.clone());
                args.push("--verbose".into());
                args.extend(spec.extra_args.iter().cloned());
                let name = if spec.code == BackupCode::Globals {
                    GLOBALS_DUMP_FILE
                } else {
                    CLUSTER_DUMP_FILE
                };
                let level = match spec.format {
                    DumpFormat::Custom { zstd_level } => zstd_level,
                    DumpFormat::Directory { .. } => 3,
                };
                stream_to = Some((staging.join(name), level));
                self.dump_file = Some(name.into());
                "pg_dumpall"
            }
        };
        DumpCommand {
            program,
            args,
            stream_to,
            dir_out,
        }
    }

    /// The dump step: the child, its output (streamed through zstd, or a directory hashed
    /// afterwards) and, for FULL/DATA, the row counts in the dump's snapshot.
    pub(super) async fn dump(
        &mut self,
        session: &NodeSession,
        staging: &Path,
        client_major: u32,
        progress: &(dyn Fn(u64) + Sync),
    ) -> Result<Vec<FileEntry>, Stop> {
        let spec = self.spec;
        let step = self.dump_step();
        let started = std::time::Instant::now();
        // Row counts: tables listed (and, for exact counts, the snapshot exported) first.
        let mut snapshot = None;
        let mut tables: Vec<TableRef> = Vec::new();
        let counted_code = matches!(spec.code, BackupCode::Full | BackupCode::Data);
        let mut count_mode = if counted_code {
            RowCountMode::default()
        } else {
            RowCountMode::Off
        };
        if count_mode == RowCountMode::Exact
            && spec
                .extra_args
                .iter()
                .any(|a| a.starts_with("--serializable-deferrable") || a.starts_with("--snapshot"))
        {
            self.notes.push(
                "row counts are estimates: --serializable-deferrable or --snapshot given".into(),
            );
            count_mode = RowCountMode::Estimate;
        }
        if count_mode == RowCountMode::Exact {
            match self
                .guarded(
                    step,
                    session.bounded(
                        "exporting a snapshot",
                        introspect::export_snapshot(&session.client),
                    ),
                )
                .await?
            {
                Ok(id) => snapshot = Some(id),
                Err(m) => {
                    let note = format!("row counts are estimates: cannot export a snapshot: {m}");
                    self.log.event(&note);
                    self.notes.push(note);
                    count_mode = RowCountMode::Estimate;
                }
            }
        }
        if count_mode != RowCountMode::Off {
            match self
                .guarded(
                    step,
                    session.bounded(
                        "listing the tables",
                        introspect::list_tables(&session.client),
                    ),
                )
                .await?
            {
                Ok(t) => tables = t,
                Err(m) => {
                    let note = format!("no row counts: cannot list the tables: {m}");
                    self.log.event(&note);
                    self.notes.push(note);
                    count_mode = RowCountMode::Off;
                }
            }
        }

        let DumpCommand {
            program,
            args,
            stream_to,
            dir_out,
        } = self.dump_arguments(staging, client_major, snapshot.as_deref());
        if self.seal.is_some()
            && let Some(f) = &self.dump_file
        {
            // The dump is streamed through age (checked: never a directory-format dump).
            self.sealed_files.push(f.clone());
        }
        let stdout = if stream_to.is_some() {
            Stdout::Pipe
        } else {
            Stdout::Null
        };
        // Exact counts of a custom-format dump come from its own stream (run::rows).
        let from_stream = snapshot.is_some() && stream_to.is_some() && !spec.code.is_cluster_wide();
        let stream_rows = rows::StreamRows::default();
        let cmd = self.child_command(program, args, stdout);
        let argv = cmd.argv();
        self.command = argv.clone();
        self.log.event(&format!(
            "step {step}: {}",
            serde_json::to_string(&argv).unwrap_or_default()
        ));

        let (mut sup, child_stdout) = child::spawn(&cmd, &self.log)
            .map_err(|e| fail(step, format!("cannot start {}: {e}", cmd.program.display())))?;
        let written = Arc::new(AtomicU64::new(0));
        let writer = match (&stream_to, child_stdout) {
            (Some((dest, level)), Some(out)) => {
                let fd = out
                    .into_owned_fd()
                    .map_err(|e| fail(step, format!("pipe: {e}")))?;
                // pg_dump writes its archive 4 KiB at a time; through the default 64 KiB pipe
                // both sides wake each other every few writes. 1 MiB (the unprivileged maximum
                // by default) lets each side run longer; best effort, the default still works.
                let _ = nix::fcntl::fcntl(&fd, nix::fcntl::FcntlArg::F_SETPIPE_SZ(1 << 20));
                // Counted into the child's activity: the stall watchdog's sign of life.
                let input = child::Counting {
                    inner: File::from(fd),
                    activity: sup.activity(),
                };
                let input = rows::RowTap::new(input, from_stream, Arc::clone(&stream_rows));
                let (dest, level, w) = (dest.clone(), *level, Arc::clone(&written));
                match self.target {
                    // A repository: streamed into its object, nothing on this disk.
                    Some(target) => {
                        let file = dest
                            .file_name()
                            .map(|n| n.to_string_lossy().into_owned())
                            .unwrap_or_default();
                        let started = crate::upload::start_sealed(
                            target,
                            &file,
                            input,
                            level,
                            w,
                            Arc::clone(&self.pending),
                            self.seal.clone(),
                        )
                        .await;
                        match started {
                            Ok(h) => Some(h),
                            Err(e) => {
                                drop(sup);
                                return Err(fail("upload", e.to_string()));
                            }
                        }
                    }
                    None => {
                        let seal = self.seal.clone();
                        Some(tokio::task::spawn_blocking(move || {
                            set::compress_stream_sealed(input, &dest, level, w, seal.as_deref())
                        }))
                    }
                }
            }
            _ => None,
        };

        // Supervise the child while the rows are counted in the same snapshot.
        let mut last = 0u64;
        let mut last_walk = std::time::Instant::now();
        let dir_for_tick = dir_out.clone();
        let written_tick = Arc::clone(&written);
        let activity = sup.activity();
        let mut tick = move || {
            let now = match &dir_for_tick {
                Some(d) => {
                    if last_walk.elapsed() < Duration::from_secs(1) {
                        return;
                    }
                    last_walk = std::time::Instant::now();
                    set::tree_size(d)
                }
                None => written_tick.load(Ordering::Relaxed),
            };
            if now != last {
                last = now;
                progress(now);
                // A directory-format dump writes its files itself: their growth is its
                // sign of life.
                if dir_for_tick.is_some() {
                    activity.fetch_add(1, Ordering::Relaxed);
                }
            }
        };
        let stall = self.stall_limit();
        let client = &session.client;
        let count_fut = async {
            if snapshot.is_some() && !from_stream {
                let keys: Vec<String> = tables
                    .iter()
                    .map(|t| node::table_key(&t.schema, &t.name))
                    .collect();
                Some(introspect::count_rows(client, &keys).await)
            } else {
                None
            }
        };
        tokio::pin!(count_fut);
        let mut counted: Option<Option<Counted>> = None;
        // A writer that fails (disk full) stops the child at once rather than when it next writes.
        let stop_child = self.cancel.child_token();
        let writer_fut = async {
            match writer {
                Some(h) => Some(h.await),
                None => None,
            }
        };
        tokio::pin!(writer_fut);
        let mut written_result = None;
        let ended = {
            let wait_fut = sup.wait_watched(
                &stop_child,
                self.deadline,
                stall.as_ref().map(|l| l.after),
                Duration::from_millis(200),
                &mut tick,
            );
            tokio::pin!(wait_fut);
            loop {
                tokio::select! {
                    e = &mut wait_fut => break e,
                    c = &mut count_fut, if counted.is_none() => counted = Some(c),
                    w = &mut writer_fut, if written_result.is_none() => {
                        if matches!(w, Some(Ok(Err(_))) | Some(Err(_))) {
                            stop_child.cancel();
                        }
                        written_result = Some(w);
                    }
                }
            }
        };
        let stderr_tail = sup.stderr_tail().await;
        let written_result = match written_result {
            Some(w) => w,
            None => writer_fut.await,
        };
        let writer_result = match written_result {
            Some(r) => Some(r.map_err(|e| fail("compress", format!("internal error: {e}")))?),
            None => None,
        };
        let in_flight = snapshot.is_some() && !from_stream && counted.is_none();
        let stop_counting = || async {
            if in_flight {
                let _ = session.cancel_query().await;
            }
        };
        // The writer's own failure comes first: the child was stopped because of it.
        let stream_entry = match writer_result {
            Some(Err(e)) => {
                stop_counting().await;
                return Err(match e {
                    StreamError::Write(e) => fail(
                        "write",
                        format!(
                            "writing {}: {e}",
                            stream_to
                                .as_ref()
                                .map(|s| s.0.display().to_string())
                                .unwrap_or_default()
                        ),
                    ),
                    StreamError::Compress(e) => fail("compress", format!("zstd: {e}")),
                    StreamError::Upload(m) => fail("upload", m),
                    StreamError::Read(e) => Stop::Failed {
                        step: step.into(),
                        exit_status: None,
                        message: format!("reading the output of {program}: {e}"),
                        stderr_tail,
                    },
                });
            }
            Some(Ok((size, sha256))) => Some((size, sha256)),
            None => None,
        };
        let status = match ended {
            Ok(Ended::Exited(status)) => status,
            Ok(Ended::Cancelled) => {
                stop_counting().await;
                self.log.event(&format!("{step}: cancelled"));
                return Err(Stop::Cancelled { step: step.into() });
            }
            Ok(Ended::TimedOut) => {
                stop_counting().await;
                self.log.event(&format!("{step}: maximum runtime exceeded"));
                return Err(match self.timed_out(step) {
                    Stop::Failed {
                        step,
                        exit_status,
                        message,
                        ..
                    } => Stop::Failed {
                        step,
                        exit_status,
                        message,
                        stderr_tail,
                    },
                    other => other,
                });
            }
            Ok(Ended::Stalled) => {
                stop_counting().await;
                let limit = stall.map(|l| l.to_string()).unwrap_or_default();
                let message = format!(
                    "{program} stalled: no data from {} for {limit}; the node stopped answering \
                     in the middle of the dump (or a lock or query on it blocked the dump), so the \
                     dump was stopped. Check the node, or raise the stall timeout for very slow nodes",
                    spec.node_label
                );
                self.log.event(&format!("{step}: {message}"));
                return Err(Stop::Failed {
                    step: step.into(),
                    exit_status: None,
                    message,
                    stderr_tail,
                });
            }
            Err(e) => {
                stop_counting().await;
                return Err(fail(step, format!("waiting for {program}: {e}")));
            }
        };
        self.commands.push(ManifestCommand {
            step: step.into(),
            argv: argv.clone(),
            exit_status: status.code(),
        });
        self.log.event(&format!("{step}: {status}"));
        if !status.success() {
            stop_counting().await;
            let message = match status.code() {
                Some(c) => format!("{program} exited with status {c}"),
                None => format!("{program} ended abnormally ({status})"),
            };
            return Err(Stop::Failed {
                step: step.into(),
                exit_status: status.code(),
                message,
                stderr_tail,
            });
        }
        if let Some(err) = self.log.take_error() {
            return Err(fail(
                "write",
                format!("{}: {err}", staging.join(LOG_FILE).display()),
            ));
        }

        if from_stream {
            counted = Some(Some(
                self.stream_counts(session, &tables, &stream_rows).await?,
            ));
        }
        // Row counts not finished yet: wait (bounded by cancel and deadline).
        if snapshot.is_some() && counted.is_none() {
            match self.guarded("row_counts", &mut count_fut).await {
                Ok(c) => counted = Some(c),
                Err(stop) => {
                    let _ = session.cancel_query().await;
                    return Err(stop);
                }
            }
        }
        if snapshot.is_some() {
            let _ = introspect::end_snapshot(client).await;
        }
        match (count_mode, counted.flatten()) {
            (RowCountMode::Exact, Some((tables_counted, notes))) => {
                for n in notes {
                    self.notes.push(format!("row count skipped: {n}"));
                }
                self.row_counts = Some(TableRowCounts {
                    source: RowCountSource::Snapshot,
                    tables: tables_counted,
                });
            }
            (RowCountMode::Estimate, _) => {
                self.row_counts = Some(TableRowCounts {
                    source: RowCountSource::Estimate,
                    tables: tables
                        .iter()
                        .map(|t| (node::table_key(&t.schema, &t.name), t.estimate))
                        .collect(),
                });
            }
            _ => {}
        }

        self.timed(step, started);

        // Files of the dump.
        let mut files = Vec::new();
        if let (Some((dest, _)), Some((size, sha256))) = (&stream_to, stream_entry) {
            let name = dest
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            if let Some(target) = self.target {
                // pg_dump exited 0: only now does the dump object become visible.
                let w = self.pending.lock().await.take();
                let Some(w) = w else {
                    return Err(fail("upload", "internal error: no upload to finish"));
                };
                let stored = w
                    .finish()
                    .await
                    .map_err(|e| fail("upload", e.to_string()))?;
                self.uploaded.push(stored.key.clone());
                if stored.sha256 != sha256 || stored.size != size {
                    return Err(fail(
                        "upload",
                        format!(
                            "object {} of repository {}: the store received other bytes than were compressed",
                            target.key(&name),
                            target.store.name()
                        ),
                    ));
                }
            }
            progress(size);
            files.push(FileEntry { name, size, sha256 });
        }
        if let Some(dir) = dir_out {
            let t = std::time::Instant::now();
            let abort = Arc::new(AtomicBool::new(false));
            let (base, a) = (staging.to_path_buf(), Arc::clone(&abort));
            let d = dir.clone();
            let entries = self
                .blocking("hash", abort, move || set::hash_tree(&base, &d, &a))
                .await?
                .map_err(|e| fail("hash", format!("{}: {e}", dir.display())))?;
            progress(entries.iter().map(|e| e.size).sum());
            files.extend(entries);
            self.timed("hash", t);
        }
        Ok(files)
    }
}
