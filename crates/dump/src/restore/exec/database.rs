//! A database restore (FULL / SCHEMA / DATA): checks, rename of an existing database, roles.sql,
//! database.sql, pg_restore by the chosen feed, and the row counts compared with the set.

use super::*;

impl Exec<'_> {
    pub(super) async fn restore_database(
        &mut self,
        m: &Manifest,
        code: BackupCode,
        state: &TargetState,
        staging: &Path,
        guard: &mut Option<StagingGuard>,
        progress: &(dyn Fn(u64) + Sync),
    ) -> Result<(), Stop> {
        let spec = self.spec;
        let target = spec.target_dbname.clone();
        self.out.target_dbname = target.clone();
        let t = std::time::Instant::now();
        if target.is_empty() {
            return Err(fail(
                "arguments",
                format!("a {code} set needs a target database name"),
            ));
        }
        if code == BackupCode::Data {
            return Err(fail(
                "check",
                "a DATA set holds no schema and cannot be restored into a new database: restore the FULL or SCHEMA set, or load the data with pg_restore --data-only into a database that has the schema",
            ));
        }
        // The target database.
        let exists = state.databases.contains(&target);
        if exists {
            match &spec.rename_existing_to {
                None => {
                    return Err(fail(
                        "check",
                        format!(
                            "database {target:?} exists on {}: restore under another name, or have the existing one renamed out of the way",
                            spec.node_label
                        ),
                    ));
                }
                Some(new) if state.databases.contains(new) => {
                    return Err(fail(
                        "check",
                        format!(
                            "database {target:?} cannot be renamed to {new:?} on {}: that database exists too; choose another name",
                            spec.node_label
                        ),
                    ));
                }
                Some(_) => {}
            }
        }
        // The roles.
        let needed = m.role_list.clone();
        self.needed_roles = needed.clone();
        let raw = raw_role_names(m)?;
        self.check_raw_roles(&raw, state)?;
        let mut now_exist = Vec::new();
        let mut now_missing = Vec::new();
        let mut reuse = Vec::new();
        for r in &needed {
            let present = match raw.get(r) {
                Some(b) => state.raw_roles.contains_key(b),
                None => state.roles.contains(r),
            };
            if let RolePolicy::Decided {
                create,
                reuse: keep,
            } = &spec.roles
            {
                if create.contains(r) && present {
                    now_exist.push(r.clone());
                } else if keep.contains(r) && !present {
                    now_missing.push(r.clone());
                }
            }
            if present {
                reuse.push(r.clone());
            }
        }
        if let RolePolicy::Decided {
            create,
            reuse: keep,
        } = &spec.roles
            && let Some(r) = create.iter().chain(keep).find(|r| !needed.contains(r))
        {
            return Err(fail(
                "check",
                format!(
                    "role {r:?} is not one of the roles of the set ({})",
                    needed.join(", ")
                ),
            ));
        }
        if !now_exist.is_empty() || !now_missing.is_empty() {
            let mut parts = Vec::new();
            if !now_exist.is_empty() {
                parts.push(format!(
                    "{} exist(s) now on {} but was to be created",
                    now_exist.join(", "),
                    spec.node_label
                ));
            }
            if !now_missing.is_empty() {
                parts.push(format!(
                    "{} was to be reused but does not exist",
                    now_missing.join(", ")
                ));
            }
            return Err(fail(
                "check",
                format!(
                    "the roles changed since the restore was defined: {}; define the restore again to decide",
                    parts.join("; ")
                ),
            ));
        }
        self.out.roles_reused = reuse;
        // How the dump reaches pg_restore.
        let dump = self.files_dir.join(&m.dump_file);
        let feed = match m.dump_file.as_str() {
            CUSTOM_DUMP_FILE => {
                let free = free_bytes(&spec.staging_root);
                let expected = m.database_size.and_then(|s| u64::try_from(s).ok());
                let share = m.table_row_counts.as_ref().and_then(|c| {
                    let total: i64 = c.tables.values().map(|n| (*n).max(0)).sum();
                    let max = c.tables.values().copied().max().unwrap_or(0);
                    (total > 0).then(|| max as f64 / total as f64)
                });
                let (mut feed, mut why) = choose_feed(
                    spec.decompression.as_str(),
                    spec.jobs,
                    expected,
                    free,
                    share,
                );
                let sections = spec.extra_args.iter().any(|a| {
                    a.starts_with("--section")
                        || a.starts_with("--data-only")
                        || a.starts_with("--schema-only")
                        || a == "-a"
                        || a == "-s"
                });
                if feed == Feed::Tee && sections {
                    feed = Feed::File;
                    why = "the extra parameters choose sections themselves: file instead of tee"
                        .into();
                }
                self.out.feed_reason = why;
                Some(feed)
            }
            DIRECTORY_DUMP => {
                self.out.feed_reason = "directory-format dump: read by pg_restore itself".into();
                None
            }
            other => {
                return Err(fail(
                    "manifest",
                    format!("dump file {other:?} is not a database dump this version restores"),
                ));
            }
        };
        self.out.feed = Some(feed.map_or("directory", |f| f.as_str()).to_string());
        self.out.jobs = match feed {
            Some(Feed::Stream) => 1,
            _ => spec.jobs.max(1),
        };
        self.log.event(&format!(
            "plan: database {target:?}{}, create role(s) [{}], reuse role(s) [{}], feed {} ({}), {} job(s)",
            match &spec.rename_existing_to {
                Some(n) if exists => format!(" (existing one renamed to {n:?})"),
                _ => String::new(),
            },
            needed
                .iter()
                .filter(|r| !self.out.roles_reused.contains(r))
                .cloned()
                .collect::<Vec<_>>()
                .join(", "),
            self.out.roles_reused.join(", "),
            self.out.feed.as_deref().unwrap_or(""),
            self.out.feed_reason,
            self.out.jobs
        ));
        self.timed("check", t);
        if self.cancel.is_cancelled() {
            return Err(Stop::Cancelled {
                step: "check".into(),
            });
        }

        // rename
        if exists && let Some(new) = spec.rename_existing_to.clone() {
            let t = std::time::Instant::now();
            let oid = self
                .on_target(
                    "rename",
                    "reading the database's OID",
                    target::database_oid(self.client(), &target),
                )
                .await?
                .ok_or_else(|| fail("rename", format!("database {target:?} vanished")))?;
            let names = (target.clone(), new.clone(), oid);
            self.journal("rename", |c| c.renaming = Some(names))?;
            let r = self
                .guarded(
                    "rename",
                    self.session().bounded(
                        "renaming the existing database",
                        target::rename_database(self.client(), &target, &new),
                    ),
                )
                .await?;
            if let Err(e) = r {
                let others = self
                    .session()
                    .bounded(
                        "counting the sessions on the database",
                        target::other_sessions(self.client(), &target),
                    )
                    .await
                    .unwrap_or(0);
                return Err(fail(
                    "rename",
                    format!(
                        "cannot rename database {target:?} to {new:?} on {}: {e}{}",
                        spec.node_label,
                        if others > 0 {
                            format!(" ({others} session(s) connected: disconnect them and retry)")
                        } else {
                            String::new()
                        }
                    ),
                ));
            }
            self.renamed = Some((target.clone(), new.clone()));
            self.out.renamed_dbname = Some(new.clone());
            self.log.event(&format!(
                "renamed the existing database {target:?} to {new:?}"
            ));
            self.timed("rename", t);
        }

        // roles
        let t = std::time::Instant::now();
        self.roles_before = Some(state.roles.clone());
        let missing: Vec<String> = needed
            .iter()
            .filter(|r| !state.roles.contains(*r))
            .cloned()
            .collect();
        let raw_hex = raw
            .iter()
            .filter(|(r, _)| missing.contains(r))
            .map(|(r, b)| (r.clone(), hex::encode(b)))
            .collect();
        self.journal("roles", |c| {
            c.creating_roles = Some(missing);
            c.role_bytes = raw_hex;
        })?;
        let mut args = self.psql_args(&spec.node.admin_dbname);
        let script = self.files_dir.join(ROLES_FILE);
        let (file_arg, pump, ids) = self.small_script(m, &script, ROLES_FILE);
        args.push(file_arg);
        self.run_child("roles", "psql", args, pump, progress, false)
            .await
            .map_err(|s| {
                psql_error::explain(s, ROLES_FILE, Script::File(&script, ids.as_deref()))
            })?;
        let after = self
            .on_target(
                "roles",
                "reading the roles after roles.sql",
                target::existing_roles(self.client(), &needed),
            )
            .await?;
        self.out.roles_created = needed
            .iter()
            .filter(|r| after.contains(*r) && !state.roles.contains(*r))
            .cloned()
            .collect();
        if let Some(r) = needed.iter().find(|r| !after.contains(*r)) {
            return Err(fail(
                "roles",
                format!("role {r:?} does not exist after roles.sql ran"),
            ));
        }
        let made = self
            .on_target(
                "roles",
                "reading the OIDs of the roles created",
                target::role_oids(self.client(), &self.out.roles_created),
            )
            .await?;
        let to_rename: Vec<(String, u32, Vec<u8>)> = made
            .iter()
            .filter_map(|(r, oid)| Some((r.clone(), *oid, raw.get(r)?.clone())))
            .collect();
        self.journal("roles", |c| c.created_roles = Some(made))?;
        self.log.event(&format!(
            "roles created: [{}]",
            self.out.roles_created.join(", ")
        ));
        self.timed("roles", t);

        // database
        let t = std::time::Instant::now();
        // Checked again right before: only a database this run creates is ever dropped.
        let again = self
            .on_target(
                "database",
                "reading its roles and databases",
                target::read_state(self.client()),
            )
            .await?;
        if again.databases.contains(&target) {
            return Err(fail(
                "database",
                format!(
                    "database {target:?} appeared on {} meanwhile",
                    spec.node_label
                ),
            ));
        }
        self.journal("database", |c| c.creating_db = true)?;
        self.touched_db = true;
        let mut args = self.psql_args(&spec.node.admin_dbname);
        args.push(format!("--set=dbname={target}"));
        let script = self.files_dir.join(DATABASE_FILE);
        let (file_arg, pump, ids) = self.small_script(m, &script, DATABASE_FILE);
        args.push(file_arg);
        self.run_child("database", "psql", args, pump, progress, false)
            .await
            .map_err(|s| {
                psql_error::explain(s, DATABASE_FILE, Script::File(&script, ids.as_deref()))
            })?;
        // The journal names the database by OID from now on (the long part comes next).
        let oid = self
            .on_target(
                "database",
                "reading the new database's OID",
                target::database_oid(self.client(), &target),
            )
            .await?;
        self.journal("database", |c| c.db_oid = oid)?;
        self.timed("database", t);

        // role names: the roles named in another encoding get their source bytes.
        if !to_rename.is_empty() {
            let t = std::time::Instant::now();
            self.rename_raw_roles(&target, &to_rename).await?;
            self.timed("role_names", t);
        }

        // The tee feed splits the data load of a table holding most of the rows (split.rs).
        let split = match (&m.table_row_counts, feed) {
            (Some(c), Some(Feed::Tee))
                if spec.extra_args.is_empty() && self.source.repository().is_none() =>
            {
                split_table(&c.tables, spec.jobs)
            }
            _ => None,
        };
        let mut split_done = false;
        if let Some((schema, table)) = split {
            self.prepare_staging(staging, guard)?;
            let staged = staging.join(STAGED_DUMP);
            split_done = self
                .tee_split(&dump, &staged, &target, &schema, &table, staging, progress)
                .await?;
        }

        // pg_restore
        let mut args = vec![
            format!("--dbname=dbname={}", conninfo_value(&target)),
            "--exit-on-error".into(),
            "--verbose".into(),
        ];
        let pump: Option<Pump> = match feed {
            Some(Feed::Stream) => {
                args.extend(spec.extra_args.iter().cloned());
                let written = Arc::clone(&self.written);
                let abort = Arc::new(AtomicBool::new(false));
                let (src, entry) = (self.source.clone(), self.entry_of(m)?);
                let ids = self.ids.clone();
                Some(Box::new(move |f: File| {
                    feed::decode_into(src.open_plain(&entry, ids.as_deref())?, f, &written, &abort)
                        .map(|n| (n, Vec::new()))
                }))
            }
            Some(Feed::Tee) if split_done => None,
            Some(Feed::Tee) => {
                self.prepare_staging(staging, guard)?;
                let dst = staging.join(STAGED_DUMP);
                args.extend([
                    "--section=pre-data".to_string(),
                    "--section=data".to_string(),
                ]);
                args.extend(spec.extra_args.iter().cloned());
                let written = Arc::clone(&self.written);
                let abort = Arc::new(AtomicBool::new(false));
                let (src, entry) = (self.source.clone(), self.entry_of(m)?);
                let ids = self.ids.clone();
                Some(Box::new(move |f: File| {
                    feed::decode_tee(
                        src.open_plain(&entry, ids.as_deref())?,
                        f,
                        &dst,
                        &written,
                        &abort,
                    )
                    .map(|n| (n, Vec::new()))
                }))
            }
            Some(Feed::File) => {
                let t = std::time::Instant::now();
                self.prepare_staging(staging, guard)?;
                let dst = staging.join(STAGED_DUMP);
                let abort = Arc::new(AtomicBool::new(false));
                let (src, entry, d, w, a) = (
                    self.source.clone(),
                    self.entry_of(m)?,
                    dst.clone(),
                    Arc::clone(&self.written),
                    Arc::clone(&abort),
                );
                let ids = self.ids.clone();
                let r = self
                    .blocking("decompress", abort, move || {
                        feed::decode_to_file(src.open_plain(&entry, ids.as_deref())?, &d, &w, &a)
                    })
                    .await?;
                let n = r.map_err(|e| {
                    if let Some(m) = source::mismatch_of(&e) {
                        self.out.checksums_failed = Some(m);
                    }
                    fail(
                        "decompress",
                        format!(
                            "{} into {}: {e}",
                            self.source.describe(&m.dump_file),
                            dst.display()
                        ),
                    )
                })?;
                progress(n);
                self.log
                    .event(&format!("decompressed {} bytes into {}", n, dst.display()));
                self.timed("decompress", t);
                args.push(format!("--jobs={}", spec.jobs.max(1)));
                args.extend(spec.extra_args.iter().cloned());
                args.push(dst.display().to_string());
                None
            }
            None => {
                args.push(format!("--jobs={}", spec.jobs.max(1)));
                args.extend(spec.extra_args.iter().cloned());
                args.push(dump.display().to_string());
                None
            }
        };
        if !split_done {
            let t = std::time::Instant::now();
            self.run_child("pg_restore", "pg_restore", args, pump, progress, true)
                .await?;
            self.timed("pg_restore", t);
        }
        if feed == Some(Feed::Tee) {
            let t = std::time::Instant::now();
            let mut args = vec![
                format!("--dbname=dbname={}", conninfo_value(&target)),
                "--exit-on-error".into(),
                "--verbose".into(),
                "--section=post-data".into(),
                format!("--jobs={}", spec.jobs.max(1)),
            ];
            args.extend(spec.extra_args.iter().cloned());
            args.push(staging.join(STAGED_DUMP).display().to_string());
            let first = std::mem::take(&mut self.out.command);
            self.run_child("post_data", "pg_restore", args, None, progress, true)
                .await?;
            let second = std::mem::replace(&mut self.out.command, first);
            self.out.command.push("&&".into());
            self.out.command.extend(second);
            self.timed("post_data", t);
        }

        // row counts
        if spec.compare_row_counts {
            let t = std::time::Instant::now();
            self.compare_row_counts(m, &target).await?;
            self.timed("row_counts", t);
        }

        let t = std::time::Instant::now();
        match self
            .guarded(
                "size",
                introspect::database_size(self.client(), Some(&target)),
            )
            .await?
        {
            Ok(s) => self.out.restored_size = Some(s),
            Err(e) => self
                .out
                .notes
                .push(format!("size of {target:?} unknown: {e}")),
        }
        self.timed("size", t);
        Ok(())
    }
    async fn compare_row_counts(&mut self, m: &Manifest, target: &str) -> Result<(), Stop> {
        let step = "row_counts";
        let Some(expected) = &m.table_row_counts else {
            self.out
                .notes
                .push("no row counts in the manifest: nothing compared".into());
            return Ok(());
        };
        if expected.source != RowCountSource::Snapshot {
            self.out.row_count_check = Some(RowCountCheck {
                tables: 0,
                mismatches: Default::default(),
                exact: false,
            });
            self.out
                .notes
                .push("the manifest holds estimates only: row counts not compared".into());
            return Ok(());
        }
        let (s, _) = self
            .guarded(
                step,
                node::connect(&self.spec.node, target, &self.spec.application_name, None),
            )
            .await?
            .map_err(|e| fail(step, format!("cannot connect to {target:?}: {e}")))?;
        let keys: Vec<String> = expected.tables.keys().cloned().collect();
        let counted = self
            .guarded(step, async {
                s.client
                    .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                    .await
                    .map_err(|e| e.to_string())?;
                let r = introspect::count_rows(&s.client, &keys).await;
                let _ = s.client.batch_execute("COMMIT").await;
                Ok::<_, String>(r)
            })
            .await?
            .map_err(|e| fail(step, e))?;
        let (counts, _) = counted;
        let mut mismatches = std::collections::BTreeMap::new();
        for (k, want) in &expected.tables {
            let got = counts.get(k).copied().unwrap_or(-1);
            if got != *want {
                mismatches.insert(k.clone(), (*want, got));
            }
        }
        let n = mismatches.len();
        self.out.row_count_check = Some(RowCountCheck {
            tables: expected.tables.len(),
            mismatches: mismatches.clone(),
            exact: true,
        });
        self.log.event(&format!(
            "row counts: {} table(s) compared, {n} difference(s)",
            expected.tables.len()
        ));
        if n > 0 {
            let list: Vec<String> = mismatches
                .iter()
                .take(10)
                .map(|(k, (w, g))| format!("{k}: {w} in the set, {g} restored"))
                .collect();
            return Err(fail(
                step,
                format!("{n} table(s) differ from the set: {}", list.join("; ")),
            ));
        }
        Ok(())
    }
}
