//! What tab completion in the shell offers: names and ids from the catalog, each kind bounded,
//! read in one statement (the shell bounds the call by a short deadline).

use crate::{Catalog, DbError};

/// Candidates by the kind of argument they fill.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Candidates {
    /// FQDNs and SrvIDs of backup servers.
    pub servers: Vec<String>,
    /// FQDNs and NodeIDs of PgSQL nodes.
    pub nodes: Vec<String>,
    /// DefIDs of definitions not DELETED, newest first.
    pub def_ids: Vec<String>,
    /// BckIDs of the newest backups.
    pub bck_ids: Vec<String>,
    /// JobIDs of jobs queued or running.
    pub job_ids: Vec<String>,
    /// Database names of definitions.
    pub dbnames: Vec<String>,
    /// Names of repositories.
    pub repositories: Vec<String>,
    /// Names of encryption keys.
    pub encryption_keys: Vec<String>,
}

/// At most this many candidates of each kind (a list longer than a screen helps nobody).
pub const PER_KIND: i64 = 500;

impl Catalog {
    pub async fn completion_candidates(&self) -> Result<Candidates, DbError> {
        let c = self.client().await?;
        let rows = c
            .query(
                "(select 's', fqdn from public.backup_server order by server_id limit $1)
                 union all (select 's', server_id::text from public.backup_server order by server_id limit $1)
                 union all (select 'n', fqdn from public.pgsql_node order by node_id limit $1)
                 union all (select 'n', node_id::text from public.pgsql_node order by node_id limit $1)
                 union all (select 'd', def_id::text from public.backup_definition
                             where job_status <> 'DELETED' order by def_id desc limit $1)
                 union all (select 'b', bck_id::text from public.backup_catalog order by bck_id desc limit $1)
                 union all (select 'j', job_id::text from public.job
                             where state in ('QUEUED', 'RUNNING') order by job_id desc limit $1)
                 union all (select 'db', dbname from (select distinct dbname from public.backup_definition
                             where dbname <> '' order by dbname limit $1) d)
                 union all (select 'r', name from public.repository order by name limit $1)
                 union all (select 'k', name from public.encryption_key order by name limit $1)",
                &[&PER_KIND],
            )
            .await?;
        let mut out = Candidates::default();
        for r in rows {
            let kind: &str = r.get(0);
            let word: String = r.get(1);
            match kind {
                "s" => out.servers.push(word),
                "n" => out.nodes.push(word),
                "d" => out.def_ids.push(word),
                "b" => out.bck_ids.push(word),
                "j" => out.job_ids.push(word),
                "r" => out.repositories.push(word),
                "k" => out.encryption_keys.push(word),
                _ => out.dbnames.push(word),
            }
        }
        Ok(out)
    }
}
