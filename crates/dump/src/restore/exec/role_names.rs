//! Roles whose names are not UTF-8 on the source (a DBA connected to a LATIN1 database ran
//! `CREATE ROLE "legacy-ø"`: `pg_authid` holds the LATIN1 byte f8). Shared catalogs store the
//! bytes of whichever session wrote them, and the dump of that database names the role with
//! those bytes, so the restore must recreate them exactly. roles.sql (run from the UTF8 admin
//! database) creates such a role under its UTF-8 spelling; once database.sql has made the
//! target database (in the source's encoding), a session on it renames the role by OID to the
//! bytes the manifest recorded ([`Manifest::role_name_bytes`]), before pg_restore needs them.
//! The undo and the journal find these roles by OID (`target::drop_role_oid`).

use std::collections::BTreeMap;

use super::*;

/// The manifest's non-UTF-8 role names: name → stored bytes.
pub(super) fn raw_role_names(m: &Manifest) -> Result<BTreeMap<String, Vec<u8>>, Stop> {
    let mut out = BTreeMap::new();
    for (name, h) in &m.role_name_bytes {
        let bytes = hex::decode(h).map_err(|e| {
            fail(
                "manifest",
                format!(
                    "role_name_bytes of role {name:?} is not hex ({e}): the manifest is damaged"
                ),
            )
        })?;
        if !m.role_list.contains(name) {
            return Err(fail(
                "manifest",
                format!(
                    "role_name_bytes names role {name:?}, which is not in role_list: the manifest is damaged"
                ),
            ));
        }
        out.insert(name.clone(), bytes);
    }
    Ok(out)
}

impl Exec<'_> {
    /// Refuses, before anything changes, the cases roles.sql cannot handle for a role named in
    /// another encoding: the role exists already (roles.sql, which names it in UTF-8, would
    /// create a twin beside it), or a different role holds its UTF-8 spelling.
    pub(super) fn check_raw_roles(
        &self,
        raw: &BTreeMap<String, Vec<u8>>,
        state: &TargetState,
    ) -> Result<(), Stop> {
        let label = &self.spec.node_label;
        for (name, bytes) in raw {
            let hex = hex::encode(bytes);
            if state.raw_roles.contains_key(bytes) {
                return Err(fail(
                    "check",
                    format!(
                        "role {name:?} (stored bytes {hex}, named from a session on a database of another encoding) exists on {label}: a restore does not reuse a role so named; drop or rename it there, or restore onto another node"
                    ),
                ));
            }
            if state.roles.contains(name) {
                return Err(fail(
                    "check",
                    format!(
                        "role {name:?} exists on {label} spelled in UTF-8, but the set's role of that name is stored as the bytes {hex} (named from a session on a database of another encoding), a different role: rename the role on {label}, or restore onto another node"
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Renames each `(name, OID, bytes)` role (created by this run under its UTF-8 name) to
    /// its source bytes, from a session on the restored database `dbname`.
    pub(super) async fn rename_raw_roles(
        &mut self,
        dbname: &str,
        roles: &[(String, u32, Vec<u8>)],
    ) -> Result<(), Stop> {
        let step = "role_names";
        let spec = self.spec;
        let (s, _) = self
            .guarded(
                step,
                node::connect(&spec.node, dbname, &spec.application_name, None),
            )
            .await?
            .map_err(|e| {
                fail(
                    step,
                    format!(
                        "cannot connect to database {dbname:?} on {} to give roles their source names: {e}",
                        spec.node_label
                    ),
                )
            })?;
        for (name, oid, bytes) in roles {
            self.guarded(
                step,
                s.bounded(
                    "renaming a role to its source name",
                    target::rename_role_to_bytes(&s.client, *oid, bytes),
                ),
            )
            .await?
            .map_err(|e| {
                fail(
                    step,
                    format!(
                        "cannot give role {name:?} (OID {oid}) its source name bytes {} on {}: {e}",
                        hex::encode(bytes),
                        spec.node_label
                    ),
                )
            })?;
            self.log.event(&format!(
                "role {name:?} (OID {oid}) renamed to its source bytes {}",
                hex::encode(bytes)
            ));
        }
        Ok(())
    }
}
