//! The roles and database steps of a run: roles.sql and database.sql from the node's catalogs.

use super::*;

impl Run<'_> {
    pub(super) async fn capture_roles_and_database(
        &mut self,
        session: &NodeSession,
        staging: &Path,
        server_version: &str,
    ) -> Result<(), Stop> {
        let spec = self.spec;
        let captured = Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let header = sqlgen::Header {
            dbname: &spec.dbname,
            node_label: &spec.node_label,
            server_version,
            captured: &captured,
        };
        let t = std::time::Instant::now();
        let with_passwords = spec.profile == NodeProfile::Standard;
        let roles = self
            .guarded(
                "roles",
                session.bounded(
                    "reading the roles the database needs",
                    introspect::capture_roles(&session.client, &spec.dbname, with_passwords),
                ),
            )
            .await?
            .map_err(|m| {
                fail(
                    "roles",
                    format!("reading the roles of {:?}: {m}", spec.dbname),
                )
            })?;
        self.role_list = roles.roles.iter().map(|r| r.name.clone()).collect();
        self.role_name_bytes = roles
            .roles
            .iter()
            .filter_map(|r| Some((r.name.clone(), hex::encode(r.name_bytes.as_ref()?))))
            .collect();
        self.role_passwords = match &roles.passwords_missing {
            None => "included".into(),
            Some(why) => format!("not included: {why}"),
        };
        self.log.event(&format!(
            "roles: {} role(s), {} membership(s), passwords {}",
            roles.roles.len(),
            roles.memberships.len(),
            self.role_passwords
        ));
        let text = sqlgen::roles_sql(&roles, &header);
        self.write_small(staging, ROLES_FILE, text.into_bytes())
            .await?;
        self.timed("roles", t);

        let t = std::time::Instant::now();
        let db = self
            .guarded(
                "database",
                session.bounded(
                    "reading the database's settings and grants",
                    introspect::capture_database(&session.client, &spec.dbname),
                ),
            )
            .await?
            .map_err(|m| {
                fail(
                    "database",
                    format!("reading the definition of {:?}: {m}", spec.dbname),
                )
            })?;
        let text = sqlgen::database_sql(&db, &header);
        self.write_small(staging, DATABASE_FILE, text.into_bytes())
            .await?;
        self.log.event(&format!(
            "database: owner {:?}, {} setting(s), {} role setting(s)",
            db.owner,
            db.settings.len(),
            db.role_settings.len()
        ));
        self.timed("database", t);
        Ok(())
    }

    async fn write_small(
        &mut self,
        dir: &Path,
        name: &'static str,
        content: Vec<u8>,
    ) -> Result<(), Stop> {
        let d = dir.to_path_buf();
        // An encrypted set: roles.sql (password hashes) and database.sql are sealed in memory
        // before they touch the disk (crate::crypt).
        let seal = self.seal.clone();
        if seal.is_some() {
            self.sealed_files.push(name.to_string());
        }
        let entry = self
            .blocking("write", Arc::default(), move || match seal {
                Some(s) => set::write_private_file(&d, name, &s.seal_bytes(&content)?),
                None => set::write_private_file(&d, name, &content),
            })
            .await?
            .map_err(|e| fail("write", format!("{}: {e}", dir.join(name).display())))?;
        self.written.push(entry);
        Ok(())
    }
}
