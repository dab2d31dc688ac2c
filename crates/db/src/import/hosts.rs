//! Backup servers and PgSQL nodes of the old catalog, with their configuration: taken when
//! already registered here (same FQDN, same port), else registered through the API.

use std::collections::BTreeMap;

use pgbackman_core::import::{
    ConfigMap, Finding, bin_dir_template, fqdn, node_config, server_config,
};

use super::apply::{NODES, Run, SERVERS};
use super::read::{OldCatalog, OldConfig, OldHost};
use crate::error::DbError;

impl Run<'_, '_> {
    pub(super) async fn servers(
        &mut self,
        old: &OldCatalog,
    ) -> Result<BTreeMap<i64, i64>, DbError> {
        let mut ids = BTreeMap::new();
        for s in &old.servers {
            let name = fqdn(&s.hostname, &s.domain);
            let object = format!("backup server {name}");
            if let Some(id) = self.mapped("SERVER", s.id) {
                ids.insert(s.id, id);
                self.count(SERVERS).already += 1;
                continue;
            }
            if let Some(id) = self
                .existing(
                    "select server_id from public.backup_server where lower(fqdn) = lower($1)",
                    &[&name],
                )
                .await?
            {
                self.record("SERVER", s.id, id).await?;
                ids.insert(s.id, id);
                self.count(SERVERS).imported += 1;
                self.note(Finding::new(
                    &object,
                    "-",
                    &s.id.to_string(),
                    format!("already registered here: taken as SrvID {id}, its configuration kept"),
                ));
                continue;
            }
            let status = s.status.trim().to_ascii_uppercase();
            match self
                .try_id(
                    "select api.register_backup_server($1, $2, $3, $4)",
                    &[&s.hostname.trim(), &s.domain.trim(), &status, &s.remarks],
                )
                .await?
            {
                Ok(id) => {
                    self.record("SERVER", s.id, id).await?;
                    ids.insert(s.id, id);
                    self.count(SERVERS).imported += 1;
                    self.note(Finding::new(
                        &object,
                        "-",
                        &s.id.to_string(),
                        format!("imported as SrvID {id}"),
                    ));
                    self.server_config(id, &object, &old.server_config, s.id)
                        .await?;
                }
                Err(why) => {
                    self.count(SERVERS).skipped += 1;
                    self.note(Finding::new(
                        &object,
                        "hostname",
                        &name,
                        format!("not imported: {why}"),
                    ));
                }
            }
        }
        Ok(ids)
    }

    async fn server_config(
        &mut self,
        id: i64,
        object: &str,
        config: &[OldConfig],
        old_id: i64,
    ) -> Result<(), DbError> {
        let mine: Vec<&OldConfig> = config.iter().filter(|c| c.owner == old_id).collect();
        let bins: Vec<(String, String)> = mine
            .iter()
            .filter(|c| c.parameter.starts_with("pgsql_bin_"))
            .map(|c| (c.parameter.clone(), c.value.clone()))
            .collect();
        let mut carry = Vec::new();
        match bin_dir_template(&bins) {
            Ok(Some(t)) => {
                let old = bins
                    .iter()
                    .map(|(_, d)| d.as_str())
                    .collect::<Vec<_>>()
                    .join(", ");
                self.note(Finding::new(
                    object,
                    "pgsql_bin_*",
                    &old,
                    format!("carried as pgsql_bin_dir = {t}"),
                ));
                carry.push(("pgsql_bin_*".to_string(), "pgsql_bin_dir".to_string(), t));
            }
            Ok(None) => {}
            Err(why) => self.note(Finding::new(
                object,
                "pgsql_bin_*",
                "",
                format!("not carried: {why}"),
            )),
        }
        for c in mine {
            match server_config(&c.parameter, &c.value) {
                ConfigMap::Carry { parameter, value } => {
                    carry.push((c.parameter.clone(), parameter, value))
                }
                ConfigMap::Drop(why) => {
                    self.note(Finding::new(object, &c.parameter, &c.value, why))
                }
                ConfigMap::Silent => {}
            }
        }
        for (old_param, parameter, value) in carry {
            if let Err(why) = self
                .try_id(
                    "select api.update_backup_server_config($1, $2, $3)",
                    &[&id.to_string(), &parameter, &value],
                )
                .await?
            {
                self.note(Finding::new(
                    object,
                    &old_param,
                    &value,
                    format!("not carried: {why}"),
                ));
            }
        }
        Ok(())
    }

    pub(super) async fn nodes(&mut self, old: &OldCatalog) -> Result<BTreeMap<i64, i64>, DbError> {
        let mut ids = BTreeMap::new();
        for n in &old.nodes {
            let name = fqdn(&n.hostname, &n.domain);
            let object = format!("PgSQL node {name}:{}", n.port);
            if let Some(id) = self.mapped("NODE", n.id) {
                ids.insert(n.id, id);
                self.count(NODES).already += 1;
                continue;
            }
            if let Some(id) = self
                .existing(
                    "select node_id from public.pgsql_node where lower(fqdn) = lower($1) and pgport = $2",
                    &[&name, &n.port],
                )
                .await?
            {
                self.record("NODE", n.id, id).await?;
                ids.insert(n.id, id);
                self.count(NODES).imported += 1;
                self.note(Finding::new(&object, "-", &n.id.to_string(), format!("already registered here: taken as NodeID {id}, its configuration kept")));
                continue;
            }
            match self.register_node(n).await? {
                Ok(id) => {
                    self.record("NODE", n.id, id).await?;
                    ids.insert(n.id, id);
                    self.count(NODES).imported += 1;
                    self.note(Finding::new(
                        &object,
                        "-",
                        &n.id.to_string(),
                        format!("imported as NodeID {id}"),
                    ));
                    self.node_config(id, &object, &old.node_config, n.id)
                        .await?;
                }
                Err(why) => {
                    self.count(NODES).skipped += 1;
                    self.note(Finding::new(
                        &object,
                        "hostname",
                        &name,
                        format!("not imported: {why}"),
                    ));
                }
            }
        }
        Ok(ids)
    }

    async fn register_node(&mut self, n: &OldHost) -> Result<Result<i64, String>, DbError> {
        let status = n.status.trim().to_ascii_uppercase();
        self.try_id(
            "select api.register_pgsql_node($1, $2, $3, $4, null, null, $5, $6)",
            &[
                &n.hostname.trim(),
                &n.domain.trim(),
                &n.port,
                &n.admin_user,
                &status,
                &n.remarks,
            ],
        )
        .await
    }

    async fn node_config(
        &mut self,
        id: i64,
        object: &str,
        config: &[OldConfig],
        old_id: i64,
    ) -> Result<(), DbError> {
        for c in config.iter().filter(|c| c.owner == old_id) {
            match node_config(&c.parameter, &c.value) {
                ConfigMap::Carry { parameter, value } => {
                    if let Err(why) = self
                        .try_id(
                            "select api.update_pgsql_node_config($1, $2, $3)",
                            &[&id.to_string(), &parameter, &value],
                        )
                        .await?
                    {
                        self.note(Finding::new(
                            object,
                            &c.parameter,
                            &c.value,
                            format!("not carried: {why}"),
                        ));
                    } else if value != c.value {
                        self.note(Finding::new(
                            object,
                            &c.parameter,
                            &c.value,
                            format!("carried as {value}"),
                        ));
                    }
                }
                ConfigMap::Drop(why) => {
                    self.note(Finding::new(object, &c.parameter, &c.value, why))
                }
                ConfigMap::Silent => {}
            }
        }
        Ok(())
    }
}
