-- Base backups (issue 11): definitions with code BASEBACKUP (node-level, no database), their sets
-- in backup_catalog like the logical ones, and their physical facts in base_backup, which joins
-- the WAL ledger (wal_object / wal_run, V15) by node, incarnation, timeline and LSN.

-- The code lists are restated: only this migration adds a backup code.
alter table backup_definition drop constraint backup_definition_backup_code_check;
alter table backup_definition add constraint backup_definition_backup_code_check
    check (backup_code in ('FULL', 'SCHEMA', 'DATA', 'CLUSTER', 'GLOBALS', 'BASEBACKUP'));
alter table backup_definition drop constraint backup_definition_check;
alter table backup_definition add constraint backup_definition_check
    check (backup_code in ('CLUSTER', 'GLOBALS', 'BASEBACKUP') or dbname <> '');
alter table backup_catalog drop constraint backup_catalog_backup_code_check;
alter table backup_catalog add constraint backup_catalog_backup_code_check
    check (backup_code in ('FULL', 'SCHEMA', 'DATA', 'CLUSTER', 'GLOBALS', 'BASEBACKUP'));

-- pg_basebackup's options of a BASEBACKUP definition: --checkpoint, --max-rate (its own syntax:
-- kB/s, or a k / M suffix), and how long a finished backup waits for its WAL in the ledger.
alter table backup_definition
    add column checkpoint       text not null default 'fast' check (checkpoint in ('fast', 'spread')),
    add column max_rate         text check (max_rate ~ '^[0-9]{1,7}[kM]?$'),
    add column wal_wait_timeout interval not null default '15 minutes'
        check (wal_wait_timeout between '10 seconds' and '7 days');

-- What a running job waits for, as its agent reports it (a base backup: the WAL segments not in
-- the ledger yet, and until when it waits). NULL when it waits for nothing.
alter table job add column wait_note text;

-- The physical facts of a base backup set. state: SUCCEEDED once the WAL from start_lsn to
-- stop_lsn is in the ledger (or was included: wal_method fetch), FAILED otherwise (missing_wal
-- names what was missing when the wait ended). manifest_state: every file of the tar checked
-- against backup_manifest as it streamed.
create table base_backup (
    bck_id              bigint primary key references backup_catalog on delete cascade,
    pgsql_node_id       bigint not null references pgsql_node,
    backup_server_id    bigint not null references backup_server,
    system_identifier   numeric(20, 0) check (system_identifier between 0 and 18446744073709551615),
    timeline            bigint check (timeline between 1 and 4294967295),
    start_lsn           pg_lsn,
    stop_lsn            pg_lsn,
    start_time          timestamptz,
    stop_time           timestamptz,
    start_wal_file      text,
    seg_size            integer,
    wal_method          text not null check (wal_method in ('none', 'fetch')),
    tablespaces         jsonb not null default '[]',
    manifest_state      text not null check (manifest_state in ('PASSED', 'FAILED', 'NOT_CHECKED')),
    manifest_detail     text,
    files_checked       integer,
    state               text not null check (state in ('running', 'waiting_for_wal', 'SUCCEEDED', 'FAILED')),
    missing_wal         text[] not null default '{}',
    wal_deadline        timestamptz,
    check (start_lsn is null or stop_lsn is null or start_lsn <= stop_lsn)
);
-- Recovery chains: a node's base backups in LSN order per incarnation.
create index base_backup_node_lsn_idx on base_backup (pgsql_node_id, system_identifier, start_lsn);
