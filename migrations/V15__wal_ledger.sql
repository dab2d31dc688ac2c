-- WAL archives and the WAL ledger (issue 11, catalog foundation). The catalog answers "from when
-- to when is node X restorable, and with which files?" by SQL (sql/47_wal.sql): every WAL object
-- a backup server holds is one row of wal_object; wal_run keeps its contiguous segment ranges so
-- that holes and recovery windows never scan a year of segments.

-- One WAL archive per node and backup server: the agent of that server keeps a physical
-- replication slot on the node and receives its WAL. status: ACTIVE, DELETING (delete_wal_archive:
-- the agent stops its receiver and drops the slot), DELETED (the agent did). The receiver_*,
-- slot_* and node_lsn columns are what the agent reports; NULL until it does.
create table wal_archive (
    archive_id          bigint generated always as identity primary key,
    backup_server_id    bigint not null references backup_server,
    pgsql_node_id       bigint not null references pgsql_node,
    -- PostgreSQL's rule for replication slot names.
    slot_name           text not null check (slot_name ~ '^[a-z0-9_]{1,63}$'),
    synchronous         boolean not null default false,
    max_lag_bytes       bigint not null check (max_lag_bytes > 0),
    status              text not null default 'ACTIVE' check (status in ('ACTIVE', 'DELETING', 'DELETED')),
    receiver_state      text,
    receiver_error      text,
    slot_wal_status     text,
    slot_retained_bytes bigint,
    node_lsn            pg_lsn,
    state_reported_at   timestamptz,
    created             timestamptz not null default now(),
    deleted             timestamptz,
    remarks             text not null default ''
);
-- One live archive per node and server; a slot name once per node (the agent of another server
-- must not take over this one's slot).
create unique index wal_archive_node_server_key on wal_archive (pgsql_node_id, backup_server_id)
    where status <> 'DELETED';
create unique index wal_archive_node_slot_key on wal_archive (pgsql_node_id, slot_name)
    where status <> 'DELETED';
create index wal_archive_server_idx on wal_archive (backup_server_id);

-- The WAL ledger: one row per object a backup server holds. system_identifier is the cluster
-- incarnation (a u64: numeric, not bigint); segno the segment number (XLogSegNo, NULL for a
-- timeline history file); seg_size the incarnation's wal_segment_size. kind: full (a complete
-- segment), partial (the tail of a timeline, F11: kept beside the full segment of the same number,
-- which supersedes it), history (NNNNNNNN.history), backup_history (SEGMENT.OFFSET.backup). sha256 is of the
-- plain bytes, stored_sha256 of the bytes on disk (after codec). header_check: the agent's
-- verdict on the page headers (magic, address, system identifier).
create table wal_object (
    wal_id              bigint generated always as identity primary key,
    pgsql_node_id       bigint not null references pgsql_node,
    backup_server_id    bigint not null references backup_server,
    system_identifier   numeric(20, 0) not null check (system_identifier between 0 and 18446744073709551615),
    timeline            bigint not null check (timeline between 1 and 4294967295),
    segno               bigint check (segno >= 0),
    kind                text not null check (kind in ('full', 'partial', 'history', 'backup_history')),
    seg_size            integer not null check (seg_size between 1048576 and 1073741824 and (seg_size & (seg_size - 1)) = 0),
    start_lsn           pg_lsn,
    end_lsn             pg_lsn,
    size                bigint not null check (size >= 0),
    stored_size         bigint not null check (stored_size >= 0),
    sha256              text not null check (sha256 ~ '^[0-9a-f]{64}$'),
    stored_sha256       text not null check (stored_sha256 ~ '^[0-9a-f]{64}$'),
    codec               text not null check (codec ~ '^[a-z0-9_-]{1,32}$'),
    stored_path         text not null check (stored_path <> ''),
    arrival             text not null check (arrival in ('stream', 'archive_command', 'backfill')),
    header_check        text not null check (header_check in ('PASSED', 'FAILED', 'NOT_CHECKED')),
    header_detail       text,
    arrived_at          timestamptz not null,
    recorded_at         timestamptz not null default now(),
    check ((segno is null) = (kind = 'history')),
    check (kind = 'history' or (start_lsn is not null and end_lsn is not null and start_lsn <= end_lsn))
);
-- The keys: a segment (full or partial, each once), a history file per timeline, a backup
-- history file per start LSN. A copy on another backup server is its own object; the server
-- comes last so that the same key on any server (a content conflict) is one index range.
create unique index wal_object_segment_key on wal_object
    (pgsql_node_id, system_identifier, timeline, segno, kind, backup_server_id) where kind in ('full', 'partial');
create unique index wal_object_history_key on wal_object
    (pgsql_node_id, system_identifier, timeline, backup_server_id) where kind = 'history';
create unique index wal_object_backup_history_key on wal_object
    (pgsql_node_id, system_identifier, timeline, start_lsn, backup_server_id) where kind = 'backup_history';
-- show_wal_segments: a node's objects in LSN order.
create index wal_object_node_lsn_idx on wal_object (pgsql_node_id, start_lsn);

-- Contiguous ranges of present segments (full or partial) per copy, maintained by the triggers
-- of sql/47_wal.sql: holes are the gaps between runs, recovery windows are walks over them.
create table wal_run (
    pgsql_node_id       bigint not null,
    backup_server_id    bigint not null,
    system_identifier   numeric(20, 0) not null,
    timeline            bigint not null,
    seg_size            integer not null,
    first_segno         bigint not null,
    last_segno          bigint not null check (last_segno >= first_segno),
    segments            bigint not null,
    stored_bytes        bigint not null,
    start_lsn           pg_lsn not null,
    end_lsn             pg_lsn not null,
    first_arrived       timestamptz not null,
    last_arrived        timestamptz not null,
    primary key (pgsql_node_id, backup_server_id, system_identifier, timeline, first_segno)
);

-- Timeline history as parsed from NNNNNNNN.history files: timeline began at switch_lsn on parent.
create table timeline_history (
    pgsql_node_id       bigint not null references pgsql_node,
    system_identifier   numeric(20, 0) not null,
    timeline            bigint not null check (timeline between 2 and 4294967295),
    parent              bigint not null check (parent >= 1 and parent < timeline),
    switch_lsn          pg_lsn not null,
    reason              text not null default '',
    recorded_at         timestamptz not null default now(),
    primary key (pgsql_node_id, system_identifier, timeline)
);

-- Different content under a key the ledger already holds: refused, kept aside by the agent,
-- recorded here and alerted (WAL_CONFLICT), never overwritten.
create table wal_conflict (
    conflict_id         bigint generated always as identity primary key,
    wal_id              bigint not null references wal_object on delete cascade,
    backup_server_id    bigint not null references backup_server,
    sha256              text not null,
    size                bigint,
    stored_path         text,
    arrival             text,
    reported            jsonb not null,
    first_seen          timestamptz not null default now(),
    last_seen           timestamptz not null default now(),
    times_seen          integer not null default 1,
    unique (wal_id, backup_server_id, sha256)
);

-- The new alert type, added to whatever list the earlier migrations left (several issues add
-- types in parallel: rebuild the check from the current one instead of restating it).
do $$
declare
    v_types text[];
begin
    select array_agg(m[1] order by ord) into v_types
      from pg_catalog.pg_constraint c,
           regexp_matches(pg_catalog.pg_get_constraintdef(c.oid), '''([A-Z_]+)''', 'g') with ordinality as t(m, ord)
     where c.conrelid = 'public.alert'::regclass and c.conname = 'alert_alert_type_check';
    if not 'WAL_CONFLICT' = any (coalesce(v_types, '{}')) then
        v_types := coalesce(v_types, '{}') || 'WAL_CONFLICT'::text;
    end if;
    alter table alert drop constraint if exists alert_alert_type_check;
    execute format('alter table alert add constraint alert_alert_type_check check (alert_type in (%s))',
                   (select string_agg(quote_literal(t), ', ' order by o) from unnest(v_types) with ordinality u(t, o)));
end $$;

