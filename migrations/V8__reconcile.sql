-- Crash recovery and reconciliation (issue 10).
--
-- note: what the agent says about a result beyond its status, e.g. that a set found complete
-- after an agent restart was recorded from its manifest.
alter table backup_catalog add column note text;
-- Reconciliation looks up the set directories it finds on disk.
create index backup_catalog_dir_idx on backup_catalog (backup_dir) where backup_dir is not null;

-- MAINTENANCE alerts: what a maintenance pass found and could not settle (orphan sets, rows
-- whose files are gone, blocked deletions, partitions the agent refuses).
alter table alert drop constraint if exists alert_alert_type_check;
alter table alert add constraint alert_alert_type_check
    check (alert_type in ('BACKUP', 'SNAPSHOT', 'RESTORE', 'DRILL', 'LOST_JOB', 'OVERDUE', 'QUARANTINE', 'VERIFY',
                          'MAINTENANCE'));

-- What the last maintenance pass of each backup server found and could not settle; replaced at
-- every pass (a finding that is gone was settled). kind: ORPHAN (a set on disk without a catalog
-- row), MISSING (a row whose set directory is gone), BLOCKED (retention must delete a set the
-- agent refuses to delete), PARTITION (a node partition the agent refuses to write to).
create table reconciliation (
    backup_server_id  bigint not null references backup_server on delete cascade,
    kind              text not null check (kind in ('ORPHAN', 'MISSING', 'BLOCKED', 'PARTITION')),
    path              text not null,
    bck_id            bigint references backup_catalog on delete cascade,
    pgsql_node_id     bigint references pgsql_node on delete cascade,
    detail            text not null,
    first_seen        timestamptz not null default now(),
    last_seen         timestamptz not null default now(),
    primary key (backup_server_id, kind, path)
);
create index reconciliation_bck_idx on reconciliation (bck_id) where bck_id is not null;
