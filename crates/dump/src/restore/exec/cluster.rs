//! A CLUSTER or GLOBALS restore: the dump through psql onto an empty cluster, every statement
//! that would change an existing role commented out first.

use super::*;

impl Exec<'_> {
    pub(super) async fn restore_cluster(
        &mut self,
        m: &Manifest,
        code: BackupCode,
        state: &TargetState,
        progress: &(dyn Fn(u64) + Sync),
    ) -> Result<(), Stop> {
        let spec = self.spec;
        let t = std::time::Instant::now();
        let expected_file = if code == BackupCode::Globals {
            GLOBALS_DUMP_FILE
        } else {
            CLUSTER_DUMP_FILE
        };
        if m.dump_file != expected_file {
            return Err(fail(
                "manifest",
                format!("a {code} set holds {expected_file}, not {:?}", m.dump_file),
            ));
        }
        let own: BTreeSet<&str> = [
            "postgres",
            "template0",
            "template1",
            spec.node.admin_dbname.as_str(),
        ]
        .into_iter()
        .collect();
        let dbs: Vec<&String> = state
            .databases
            .iter()
            .filter(|d| !own.contains(d.as_str()))
            .collect();
        let mut roles: Vec<String> = state
            .roles
            .iter()
            .filter(|r| {
                !r.starts_with("pg_") && **r != state.bootstrap_superuser && **r != spec.node.user
            })
            .cloned()
            .collect();
        // Roles named from a session on a database of another encoding count too.
        roles.extend(
            state
                .raw_roles
                .keys()
                .map(|b| format!("{} (bytes {})", String::from_utf8_lossy(b), hex::encode(b))),
        );
        if (!dbs.is_empty() || !roles.is_empty()) && !spec.acknowledge_nonempty {
            let mut what = Vec::new();
            if !dbs.is_empty() {
                what.push(format!(
                    "database(s) {}",
                    dbs.iter()
                        .map(|s| s.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
            if !roles.is_empty() {
                what.push(format!(
                    "role(s) {}",
                    roles
                        .iter()
                        .map(|s| s.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
            return Err(fail(
                "check",
                format!(
                    "the target cluster {} is not empty ({}): a {code} set restores onto an empty cluster; acknowledge explicitly (--acknowledge-nonempty) to restore onto it anyway",
                    spec.node_label,
                    what.join("; ")
                ),
            ));
        }
        self.out.feed = Some("sql".into());
        self.out.feed_reason = "pg_dumpall SQL decoded in-process into psql".into();
        self.out.jobs = 1;
        self.timed("check", t);

        let t = std::time::Instant::now();
        let (roles, dbs) = (state.roles.clone(), state.databases.clone());
        let raw = state.raw_roles.keys().map(hex::encode).collect();
        self.journal("psql", |c| {
            c.roles_before = Some(roles);
            c.raw_roles_before = Some(raw);
            c.dbs_before = Some(dbs);
        })?;
        self.roles_before = Some(state.roles.clone());
        self.raw_roles_before = Some(state.raw_roles.clone());
        self.dbs_before = Some(state.databases.clone());
        let mut args = self.psql_args(&spec.node.admin_dbname);
        args.push("--file=-".into());
        let (src, entry) = (self.source.clone(), self.entry_of(m)?);
        let existing = state.roles.clone();
        let written = Arc::clone(&self.written);
        let abort = Arc::new(AtomicBool::new(false));
        let ids = self.ids.clone();
        let pump: Pump = Box::new(move |f: File| {
            feed::decode_sql_into(
                src.open_plain(&entry, ids.as_deref())?,
                f,
                &existing,
                &written,
                &abort,
            )
        });
        let skipped = self
            .run_child("psql", "psql", args, Some(pump), progress, true)
            .await
            .map_err(|s| {
                // From a repository the script is not on this disk: the statement is not quoted.
                let script = self.files_dir.join(expected_file);
                psql_error::explain(s, expected_file, Script::Zstd(&script, self.ids.as_deref()))
            })?;
        self.out.roles_reused = skipped;
        let after = self
            .on_target(
                "psql",
                "reading its roles and databases",
                target::read_state(self.client()),
            )
            .await?;
        self.out.roles_created = after.roles.difference(&state.roles).cloned().collect();
        self.out.databases_created = after
            .databases
            .difference(&state.databases)
            .cloned()
            .collect();
        self.log.event(&format!(
            "created role(s) [{}], database(s) [{}]",
            self.out.roles_created.join(", "),
            self.out.databases_created.join(", ")
        ));
        self.timed("psql", t);
        Ok(())
    }
}
