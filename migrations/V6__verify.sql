-- Verification levels and restore drills (issue 5).
--
-- backup_catalog already holds the latest verification of a backup (verification_level,
-- verification_state, verified_at, verification_error, drill_duration). This migration adds the
-- history of every verification job, the last drill instant fired per definition, and the
-- backup-server parameter naming the node drills restore into.

-- One row per VERIFY or DRILL job that reported: the job id is the idempotency key of
-- api.report_verification.
create table verification (
    verification_id   bigint generated always as identity primary key,
    job_id            bigint not null unique,
    bck_id            bigint references backup_catalog on delete cascade,
    kind              text not null check (kind in ('VERIFY', 'DRILL')),
    -- The highest level the job tried: 1 checksums, 2 archive table of contents, 3 restore drill.
    level             smallint not null check (level between 0 and 3),
    -- PASSED / FAILED judge the backup; ERROR means the check could not run (drill node down,
    -- no client tools) and says nothing about the backup.
    state             text not null check (state in ('PASSED', 'FAILED', 'ERROR', 'CANCELLED')),
    started           timestamptz not null,
    finished          timestamptz not null,
    duration          interval generated always as (finished - started) stored,
    restore_duration  interval,          -- drills: pg_restore into the scratch database
    drill_node_id     bigint references pgsql_node on delete set null,
    scratch_dbname    text,
    error_step        text,
    error_message     text,
    error_stderr_tail text,
    details           jsonb not null default '{}',   -- row count comparison, TOC entries, notes
    registered        timestamptz not null default now()
);
create index verification_bck_idx on verification (bck_id, finished desc);
create index verification_finished_idx on verification (finished desc);

-- The newest drill instant already fired per definition (set when a drill schedule is set, so
-- that setting one does not fire an instant from the past). A drill instant fires once.
create table drill_schedule_state (
    def_id      bigint primary key references backup_definition on delete cascade,
    last_fire   timestamptz not null
);

insert into backup_server_default_config (parameter, value, description) values
    ('drill_node', '', 'PgSQL node (NodeID, FQDN or fqdn:port) that restore drills of this server''s backups restore into, as a scratch database dropped afterwards; empty = drills need run_restore_drill --node');
