//! The undo of a failed restore: what it created dropped, what it renamed renamed back, each
//! action (or why it could not be done) in the outcome's cleanup lines.

use super::*;

impl Exec<'_> {
    /// Undoes what a failed run changed on the target; every action and failure goes to
    /// `cleanup`. Runs after cancel too (bounded per statement), never raced against it.
    pub(super) async fn undo(&mut self) {
        let touched = self.renamed.is_some() || self.touched_db || self.roles_before.is_some();
        if !touched {
            return;
        }
        let spec = self.spec;
        let alive = match &self.session {
            Some(s) => !s.client.is_closed(),
            None => false,
        };
        if !alive {
            match tokio::time::timeout(
                UNDO_TIMEOUT,
                node::connect(
                    &spec.node,
                    &spec.node.admin_dbname,
                    &spec.application_name,
                    None,
                ),
            )
            .await
            {
                Ok(Ok((s, _))) => self.session = Some(s),
                Ok(Err(e)) => {
                    self.cleanup(format!(
                        "could not reconnect to {} to undo the restore: {e}; check it by hand (see the restore log)",
                        spec.node_label
                    ));
                    return;
                }
                Err(_) => {
                    self.cleanup(format!(
                        "could not reconnect to {} to undo the restore (timeout); check it by hand",
                        spec.node_label
                    ));
                    return;
                }
            }
        }
        let state = match self
            .session()
            .bounded(
                "reading its roles and databases",
                target::read_state(self.client()),
            )
            .await
        {
            Ok(s) => s,
            Err(e) => {
                self.cleanup(format!(
                    "could not read the target to undo the restore: {e}"
                ));
                return;
            }
        };
        let force = self.force_drop;
        // Databases first (they may depend on the roles), then roles, then the rename back.
        let mut drop_dbs: Vec<String> = Vec::new();
        if let Some(before) = &self.dbs_before {
            drop_dbs.extend(state.databases.difference(before).cloned());
        } else if self.touched_db && state.databases.contains(&spec.target_dbname) {
            drop_dbs.push(spec.target_dbname.clone());
        }
        for db in drop_dbs {
            let r = self
                .session()
                .bounded(
                    "dropping a database",
                    target::drop_database(self.client(), &db, force),
                )
                .await;
            self.report_undo(
                r,
                format!("dropped the partly restored database {db:?}"),
                format!("drop database {db:?}"),
            );
        }
        // A database restore knows the OIDs of the roles roles.sql made: dropped by OID, as a
        // role renamed to bytes of another encoding cannot be named from this session.
        let made = match (&self.dbs_before, &self.changes.created_roles) {
            (None, Some(made)) if self.roles_before.is_some() => Some(made.clone()),
            _ => None,
        };
        if let Some(made) = made {
            for (r, oid) in made {
                let res = self
                    .session()
                    .bounded("dropping a role", target::drop_role_oid(self.client(), oid))
                    .await;
                self.report_undo(
                    res,
                    format!("dropped role {r:?} created by this restore"),
                    format!("drop role {r:?}"),
                );
            }
        } else if let Some(before) = self.roles_before.clone() {
            let created: Vec<String> = if self.dbs_before.is_some() {
                state.roles.difference(&before).cloned().collect()
            } else {
                self.needed_roles
                    .iter()
                    .filter(|r| state.roles.contains(*r) && !before.contains(*r))
                    .cloned()
                    .collect()
            };
            for r in created {
                let res = self
                    .session()
                    .bounded("dropping a role", target::drop_role(self.client(), &r))
                    .await;
                self.report_undo(
                    res,
                    format!("dropped role {r:?} created by this restore"),
                    format!("drop role {r:?}"),
                );
            }
        }
        // Roles the script made under a name that is not UTF-8: only an OID names them here.
        if let Some(before) = self.raw_roles_before.clone() {
            for (bytes, oid) in state
                .raw_roles
                .iter()
                .filter(|(b, _)| !before.contains_key(*b))
            {
                let name = format!(
                    "{:?} (bytes {})",
                    String::from_utf8_lossy(bytes),
                    hex::encode(bytes)
                );
                let res = self
                    .session()
                    .bounded(
                        "dropping a role",
                        target::drop_role_oid(self.client(), *oid),
                    )
                    .await;
                self.report_undo(
                    res,
                    format!("dropped role {name} created by this restore"),
                    format!("drop role {name}"),
                );
            }
        }
        if let Some((orig, new)) = self.renamed.clone() {
            let r = self
                .session()
                .bounded(
                    "renaming a database back",
                    target::rename_database(self.client(), &new, &orig),
                )
                .await;
            self.report_undo(
                r,
                format!("renamed database {new:?} back to {orig:?}"),
                format!("rename database {new:?} back to {orig:?}"),
            );
            self.out.renamed_dbname = None;
        }
    }

    /// Records an undo action (a time-out is an error naming the setting, see
    /// [`NodeSession::bounded`]).
    fn report_undo(&mut self, r: Result<(), String>, done: String, what: String) {
        match r {
            Ok(()) => self.cleanup(done),
            Err(e) => self.cleanup(format!("could not {what}: {e}; do it by hand")),
        }
    }

    fn cleanup(&mut self, line: String) {
        self.log.event(&format!("undo: {line}"));
        self.out.cleanup.push(line);
    }
}
