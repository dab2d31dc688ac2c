-- pgbackman catalog, version 3: retention and maintenance (issue 4).

-- The status a definition had when quarantine set it DELETED because its database was gone from
-- the node (NULL: not quarantined). Maintenance restores it if the database comes back before
-- the node's automatic_deletion_retention; any other status change clears it.
alter table backup_definition add column quarantined_from text
    check (quarantined_from in ('ACTIVE', 'STOPPED'));

-- The last listing of each node's databases that quarantine found sane: the next listing is
-- compared with it, so a node that suddenly lists far fewer databases raises an alert instead of
-- quarantining definitions. accept_next: a DBA dropped many databases on purpose and accepted the
-- next listing as it is (accept_pgsql_node_listing).
create table pgsql_node_listing (
    pgsql_node_id  bigint primary key references pgsql_node on delete cascade,
    databases      integer,
    listed_at      timestamptz,
    listed_by      bigint references backup_server on delete set null,
    accept_next    boolean not null default false
);

-- Backup sets an agent must finish deleting (two-phase deletion: marked, files, row).
create index backup_catalog_deleting_idx on backup_catalog (backup_server_id) where retention_state = 'DELETING';

insert into pgsql_node_default_config (parameter, value, description) values
    ('autoregister_backup_server', '', 'SrvID of the backup server that gets the definitions autoregister creates; empty: the server with most of the node''s definitions');

-- PgBackMan never purged sent alerts (reference §8.2 item 26).
insert into backup_server_default_config (parameter, value, description) values
    ('sent_alerts_retention', '90 days', 'How long sent alerts of this server are kept before maintenance removes them');
