-- WAL retention (issue 11): the range tombstone of each copy (backup server) and incarnation of a
-- node's WAL ledger. Every segment below below_segno (a backup_history file below below_lsn) is
-- no longer needed by a kept base backup: marked for deletion by its presence here (phase 1),
-- its file deleted by the agent (phase 2), its row removed (phase 3). One row per copy, set to
-- the floor at each pass (lowered when a kept base backup starts below it): a 500,000-segment
-- ledger is marked with one row, not 500,000 updates. Timeline history files are never below a
-- tombstone.
create table wal_retention (
    pgsql_node_id       bigint not null references pgsql_node on delete cascade,
    backup_server_id    bigint not null references backup_server on delete cascade,
    system_identifier   numeric(20, 0) not null,
    below_segno         bigint not null check (below_segno >= 0),
    below_lsn           pg_lsn not null,
    -- The oldest kept base backup when last raised (no reference: it may expire later).
    bck_id              bigint not null,
    marked_at           timestamptz not null default now(),
    primary key (pgsql_node_id, backup_server_id, system_identifier)
);
