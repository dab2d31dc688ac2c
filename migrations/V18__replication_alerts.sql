-- Replication status, WAL alerts and their thresholds (issue 11, part M). The agent that archives
-- a node samples the node's replication state (role, standbys, slots, its WAL receiver) with
-- its own receiver's state and reports it (api.report_replication_sample, sql/87_wal_monitor.sql);
-- the catalog keeps the newest sample per node and backup server and opens or clears the WAL
-- conditions it implies. A condition is alerted once when it opens and cleared when its cause
-- goes; a new episode after a clear is a new alert.

create table replication_sample (
    pgsql_node_id       bigint not null references pgsql_node on delete cascade,
    backup_server_id    bigint not null references backup_server on delete cascade,
    -- When the agent read the node (its clock); reported_at is the catalog's.
    sampled_at          timestamptz not null,
    reported_at         timestamptz not null default now(),
    -- primary or standby; NULL when the node did not answer (error says why).
    role                text check (role in ('primary', 'standby')),
    error               text,
    -- {node_lsn, standbys: [...], wal_receiver: {...}, replay: {...}, slots: [...],
    --  receiver: {state, since, error, stalls, last_stall_at}} as sql/87_wal_monitor.sql reads it.
    sample              jsonb not null default '{}',
    primary key (pgsql_node_id, backup_server_id)
);

-- An open (cleared IS NULL) or past WAL condition of a node as seen from one backup server.
-- subject tells two conditions of one code apart (a standby's name, a hole's first file).
create table wal_condition (
    condition_id        bigint generated always as identity primary key,
    pgsql_node_id       bigint not null references pgsql_node on delete cascade,
    backup_server_id    bigint not null references backup_server on delete cascade,
    code                text not null check (code in ('WAL_RECEIVER_DOWN', 'WAL_RECEIVER_LAG', 'WAL_SLOT_RETAINED',
                                                      'WAL_SLOT_LOST', 'WAL_HOLE', 'WAL_VERSION', 'REPLICATION_LAG')),
    subject             text not null default '',
    detail              text not null,
    opened              timestamptz not null default now(),
    -- The alert raised when it opened (alerts are purged once mailed: no foreign key).
    alert_id            bigint,
    cleared             timestamptz
);
create unique index wal_condition_open_key on wal_condition (pgsql_node_id, backup_server_id, code, subject)
    where cleared is null;
create index wal_condition_node_idx on wal_condition (pgsql_node_id, opened desc);

-- The alert types of the conditions, added to whatever list the earlier migrations left (other
-- parts add types in parallel: rebuild the check from the current one).
do $$
declare
    v_types text[];
    v_new text;
begin
    select array_agg(m[1] order by ord) into v_types
      from pg_catalog.pg_constraint c,
           regexp_matches(pg_catalog.pg_get_constraintdef(c.oid), '''([A-Z_]+)''', 'g') with ordinality as t(m, ord)
     where c.conrelid = 'public.alert'::regclass and c.conname = 'alert_alert_type_check';
    foreach v_new in array array['WAL_RECEIVER_DOWN', 'WAL_RECEIVER_LAG', 'WAL_SLOT_RETAINED', 'WAL_SLOT_LOST',
                                 'WAL_HOLE', 'WAL_VERSION', 'REPLICATION_LAG'] loop
        if not v_new = any (coalesce(v_types, '{}')) then
            v_types := coalesce(v_types, '{}') || v_new;
        end if;
    end loop;
    alter table alert drop constraint if exists alert_alert_type_check;
    execute format('alter table alert add constraint alert_alert_type_check check (alert_type in (%s))',
                   (select string_agg(quote_literal(t), ', ' order by o) from unnest(v_types) with ordinality u(t, o)));
end $$;

-- The thresholds, per node (update_pgsql_node_config) with these defaults. The receiver's lag
-- threshold is the archive's own --max-lag (register_wal_archive).
insert into pgsql_node_default_config (parameter, value, description) values
    ('wal_receiver_down_threshold', '5 minutes',
     'How long the WAL receiver of an archive of this node may be down (not streaming: restarting, stalled, no client) before a WAL_RECEIVER_DOWN alert'),
    ('replication_lag_threshold', '1GB',
     'WAL a standby of this node (or this standby''s replay) may be behind before a REPLICATION_LAG alert'),
    ('slot_retained_wal_threshold', '8GB',
     'WAL a replication slot may hold on this node before a WAL_SLOT_RETAINED alert (pg_wal grows behind a slot whose receiver is stalled)')
on conflict (parameter) do nothing;
