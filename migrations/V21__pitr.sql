-- Point-in-time recovery into clones (issue 12): a CLONE job restores a base backup and the WAL
-- after it into a new instance on the backup server; the clone row is its catalog record (what
-- was asked, what was reached, the phases, where it runs).

-- The job kind, added to whatever list the earlier migrations left (other issues add kinds in
-- parallel: the check is rebuilt from the current one instead of restated).
do $$
declare
    v_kinds text[];
begin
    select array_agg(m[1] order by ord) into v_kinds
      from pg_catalog.pg_constraint c,
           regexp_matches(pg_catalog.pg_get_constraintdef(c.oid), '''([A-Z_]+)''', 'g') with ordinality as t(m, ord)
     where c.conrelid = 'public.job'::regclass and c.conname = 'job_kind_check';
    if not 'CLONE' = any (coalesce(v_kinds, '{}')) then
        v_kinds := coalesce(v_kinds, '{}') || 'CLONE'::text;
    end if;
    alter table job drop constraint if exists job_kind_check;
    execute format('alter table job add constraint job_kind_check check (kind in (%s))',
                   (select string_agg(quote_literal(t), ', ' order by o) from unnest(v_kinds) with ordinality u(t, o)));
end $$;

-- One row per clone. name: a safe charset only (it becomes a directory and a cluster_name);
-- unique per backup server among the live clones (not FAILED nor DELETED), like the port. state: QUEUED (job
-- registered), RESTORING (the agent extracts and recovers), RUNNING (recovery reached the target;
-- paused or promoted), STOPPED (shut down: target_action shutdown, or stop_clone), FAILED
-- (error_* say where; nothing of it is left on disk), DELETED. target: kind (time, lsn, xid,
-- name, immediate), value, timeline, action. plan: the catalog's plan when registered (without
-- the WAL list, which the agent asks for again at start).
create table clone (
    clone_id            bigint generated always as identity primary key,
    backup_server_id    bigint not null references backup_server,
    pgsql_node_id       bigint not null references pgsql_node,
    bck_id              bigint references backup_catalog on delete set null,
    job_id              bigint unique references job on delete set null,
    name                text not null check (name ~ '^[a-z][a-z0-9_-]{0,39}$'),
    port                integer not null check (port between 1024 and 65535),
    state               text not null default 'QUEUED'
                          check (state in ('QUEUED', 'RESTORING', 'RUNNING', 'STOPPED', 'FAILED', 'DELETED')),
    target              jsonb not null,
    plan                jsonb not null default '{}',
    data_dir            text,
    conninfo            text,
    reached_lsn         pg_lsn,
    reached_timeline    bigint,
    reached_time        timestamptz,
    recovery_state      text,
    size                bigint,
    phase_timings       jsonb not null default '{}',
    error_step          text,
    error_message       text,
    note                text,
    expires_at          timestamptz,
    registered          timestamptz not null default now(),
    started             timestamptz,
    finished            timestamptz,
    deleted             timestamptz
);
create unique index clone_server_name_key on clone (backup_server_id, name) where state not in ('DELETED', 'FAILED');
create unique index clone_server_port_key on clone (backup_server_id, port) where state not in ('DELETED', 'FAILED');
create index clone_node_idx on clone (pgsql_node_id, registered desc);
create index clone_server_idx on clone (backup_server_id, registered desc);

-- stop_clone / start_clone / delete_clone: each a CLONE job of its own for the agent of the
-- clone's server; this row says which clone and what to do (the restore job is clone.job_id).
create table clone_op (
    job_id              bigint primary key references job on delete cascade,
    clone_id            bigint not null references clone,
    op                  text not null check (op in ('stop', 'start', 'delete'))
);
create index clone_op_clone_idx on clone_op (clone_id);

-- How many clones (not FAILED nor DELETED) a backup server may hold at once.
insert into backup_server_default_config (parameter, value, description) values
    ('max_clones', '5', 'How many clones (point-in-time restores into instances of their own) this backup server may hold at once; 0 = none');
