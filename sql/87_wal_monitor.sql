-- Replication status and WAL alerts (issue 11, part M; tables in migrations/V18__replication_alerts.sql).
-- The agent that archives a node samples it on every round (role, standbys, slots, the node's
-- own WAL receiver) together with the state of its pg_receivewal, and reports the sample here.
-- The catalog keeps the newest sample per node and backup server, and from it, the ledger and the
-- node's thresholds decides which WAL conditions are open: each is alerted once when it opens
-- and cleared when its cause goes (a later episode is a new alert). The shell reads the sample
-- with its age (show_replication_status): it never asks the node itself.

-- Opens condition p_code/p_subject of a node as seen from p_server unless it is open already;
-- a new one raises its alert. Returns the condition's id.
create function api.open_wal_condition(p_server bigint, p_node bigint, p_code text, p_subject text, p_detail text)
returns bigint language plpgsql as $$
declare
    v_id bigint;
    v_alert bigint;
begin
    select condition_id into v_id from public.wal_condition
     where pgsql_node_id = p_node and backup_server_id = p_server and code = p_code and subject = p_subject
       and cleared is null;
    if found then
        update public.wal_condition set detail = p_detail where condition_id = v_id;
        return v_id;
    end if;
    insert into public.wal_condition (pgsql_node_id, backup_server_id, code, subject, detail)
    values (p_node, p_server, p_code, p_subject, p_detail)
    returning condition_id into v_id;
    insert into public.alert (alert_type, backup_server_id, pgsql_node_id, ref_id, execution_status, error_message, sendto)
    values (p_code, p_server, p_node, v_id, 'OPEN', p_detail, coalesce(api.node_config_value(p_node, 'logs_email'), ''))
    returning alert_id into v_alert;
    update public.wal_condition set alert_id = v_alert where condition_id = v_id;
    return v_id;
end $$;

-- Decides the open conditions of node p_node seen from p_server, from its newest sample, its WAL
-- archive on that server (if any) and the ledger. Conditions that no longer hold are cleared;
-- those the sample cannot tell (the node did not answer) stay as they were. Returns how many
-- conditions are open.
create function api.evaluate_wal_conditions(p_server bigint, p_node bigint)
returns integer language plpgsql as $$
declare
    v_fqdn text := api.node_fqdn(p_node);
    v_srv text := api.server_fqdn(p_server);
    s public.replication_sample%rowtype;
    a public.wal_archive%rowtype;
    v_keep text[] := '{}';          -- code|subject of every condition that holds now
    v_unknown text[] := '{}';       -- codes the sample cannot tell
    v_down interval := api.node_config_value(p_node, 'wal_receiver_down_threshold')::interval;
    v_lag_max bigint := pg_catalog.pg_size_bytes(api.node_config_value(p_node, 'replication_lag_threshold'));
    v_slot_max bigint := pg_catalog.pg_size_bytes(api.node_config_value(p_node, 'slot_retained_wal_threshold'));
    v_rstate text;
    v_down_since timestamptz;
    v_stall timestamptz;
    v_end pg_lsn;
    v_lag numeric;
    x record;
    v_n integer;
begin
    select * into s from public.replication_sample where pgsql_node_id = p_node and backup_server_id = p_server;
    select * into a from public.wal_archive
     where pgsql_node_id = p_node and backup_server_id = p_server and status = 'ACTIVE';
    if a.archive_id is not null and s.pgsql_node_id is not null then
        v_rstate := s.sample -> 'receiver' ->> 'state';
        v_down_since := (s.sample -> 'receiver' ->> 'down_since')::timestamptz;
        v_stall := (s.sample -> 'receiver' ->> 'last_stall_at')::timestamptz;
        if v_rstate = 'no_client' then
            v_keep := v_keep || 'WAL_VERSION|'::text;
            perform api.open_wal_condition(p_server, p_node, 'WAL_VERSION', '',
                format('backup server %s has no pg_receivewal for the major version of PgSQL node %s, so its WAL is not archived (%s). '
                       || 'Install the PostgreSQL client programs of that major on %s (or name their directory in pgsql_bin_dir / [agent.bin_dirs]); '
                       || 'the agent retries by itself.',
                       v_srv, v_fqdn, coalesce(s.sample -> 'receiver' ->> 'error', 'no detail'), v_srv));
        end if;
        if v_down_since is not null and (v_down_since < now() - v_down or v_stall >= v_down_since) then
            v_keep := v_keep || 'WAL_RECEIVER_DOWN|'::text;
            perform api.open_wal_condition(p_server, p_node, 'WAL_RECEIVER_DOWN', '',
                format('the WAL receiver of PgSQL node %s on backup server %s is %s since %s%s (threshold %s): no WAL of the node is archived meanwhile, '
                       || 'and its slot %s holds the node''s WAL (pg_wal grows). Last error: %s. '
                       || 'Check that the node answers (connections, replication entry in pg_hba.conf) and the agent''s log; the agent restarts the receiver with backoff.',
                       v_fqdn, v_srv, coalesce(v_rstate, 'down'), to_char(v_down_since at time zone 'UTC', 'YYYY-MM-DD HH24:MI:SS "UTC"'),
                       case when v_stall >= v_down_since then ', after a stall (no WAL received while the node did not answer or was ahead)' else '' end,
                       v_down, a.slot_name, coalesce(s.sample -> 'receiver' ->> 'error', 'none')));
        end if;
        -- The receiver's lag: the node's position against the end of the ledger.
        select max(w.end_lsn) into v_end from public.wal_run w
         where w.pgsql_node_id = p_node and w.backup_server_id = p_server;
        if s.role is null then
            v_unknown := v_unknown || 'WAL_RECEIVER_LAG'::text;
        elsif v_end is not null and (s.sample ->> 'node_lsn') is not null then
            v_lag := (s.sample ->> 'node_lsn')::pg_lsn - v_end;
            if v_lag > a.max_lag_bytes then
                v_keep := v_keep || 'WAL_RECEIVER_LAG|'::text;
                perform api.open_wal_condition(p_server, p_node, 'WAL_RECEIVER_LAG', '',
                    format('the WAL archive of PgSQL node %s on backup server %s is %s behind the node (node at %s, archived to %s; threshold %s, the archive''s --max-lag). '
                           || 'A point in time after %s cannot be restored yet. Check the receiver (show_replication_status %s) and the network to the node.',
                           v_fqdn, v_srv, pg_catalog.pg_size_pretty(v_lag), s.sample ->> 'node_lsn', v_end,
                           pg_catalog.pg_size_pretty(a.max_lag_bytes), v_end, v_fqdn));
            end if;
        end if;
        -- Holes in this server's copy of the ledger.
        for x in select h.* from api.wal_holes(p_node) h where h.backup_server_id = p_server loop
            v_keep := v_keep || ('WAL_HOLE|' || x.first_missing_file);
            perform api.open_wal_condition(p_server, p_node, 'WAL_HOLE', x.first_missing_file,
                format('the WAL archive of PgSQL node %s on backup server %s misses %s segment(s) of timeline %s, %s to %s, between two archived ones: '
                       || 'no point in time from %s to %s can be restored through them. '
                       || 'Take a new base backup of the node (recovery starts after the hole), and look for the files in the node''s pg_wal or another archive.',
                       v_fqdn, v_srv, x.missing, x.timeline, x.first_missing_file, x.last_missing_file, x.after_lsn, x.before_lsn));
        end loop;
    end if;
    if s.pgsql_node_id is not null and s.role is null then
        v_unknown := v_unknown || array['WAL_SLOT_LOST', 'WAL_SLOT_RETAINED', 'REPLICATION_LAG'];
    elsif s.pgsql_node_id is not null then
        -- Every slot of the node: a slot nobody reads makes pg_wal grow until the disk is full.
        for x in select e ->> 'slot_name' as slot, e ->> 'wal_status' as st, (e ->> 'retained_bytes')::numeric as kept,
                        (e ->> 'safe_wal_size')::numeric as safe, coalesce((e ->> 'active')::boolean, false) as active
                   from jsonb_array_elements(coalesce(s.sample -> 'slots', '[]')) e loop
            if x.st = 'lost' then
                v_keep := v_keep || ('WAL_SLOT_LOST|' || x.slot);
                perform api.open_wal_condition(p_server, p_node, 'WAL_SLOT_LOST', x.slot,
                    format('replication slot %s on PgSQL node %s has lost WAL (wal_status lost, max_slot_wal_keep_size reached): whoever reads it cannot continue%s. '
                           || 'Drop and recreate the slot (for a WAL archive: delete_wal_archive and register_wal_archive), then take a new base backup; the archive has a hole from here.',
                           x.slot, v_fqdn, case when x.slot = a.slot_name then format(', and it is the slot of the WAL archive on %s', v_srv) else '' end));
            elsif x.st = 'unreserved' or x.kept > v_slot_max then
                v_keep := v_keep || ('WAL_SLOT_RETAINED|' || x.slot);
                perform api.open_wal_condition(p_server, p_node, 'WAL_SLOT_RETAINED', x.slot,
                    format('replication slot %s on PgSQL node %s holds %s of WAL (threshold %s, wal_status %s%s; %s): pg_wal grows behind it. '
                           || 'Find why its reader does not keep up (show_replication_status %s); drop the slot if nobody reads it any more.',
                           x.slot, v_fqdn, pg_catalog.pg_size_pretty(x.kept), pg_catalog.pg_size_pretty(v_slot_max), coalesce(x.st, '?'),
                           coalesce(', ' || pg_catalog.pg_size_pretty(x.safe) || ' left before it is lost', ''),
                           case when x.active then 'its reader is connected' else 'nobody reads it now' end, v_fqdn));
            end if;
        end loop;
        for x in select coalesce(nullif(e ->> 'application_name', ''), 'standby') || coalesce('@' || (e ->> 'client_addr'), '') as who,
                        (e ->> 'replay_lag_bytes')::numeric as lag, e ->> 'replay_lag' as lag_time
                   from jsonb_array_elements(coalesce(s.sample -> 'standbys', '[]')) e
                  where coalesce(e ->> 'application_name', '') <> 'pgbackman_walreceiver' loop
            if x.lag > v_lag_max then
                v_keep := v_keep || ('REPLICATION_LAG|' || x.who);
                perform api.open_wal_condition(p_server, p_node, 'REPLICATION_LAG', x.who,
                    format('standby %s of PgSQL node %s has replayed %s less than the node (threshold %s%s). '
                           || 'Check the standby (replay paused? long queries conflicting? its disk?) with show_replication_status.',
                           x.who, v_fqdn, pg_catalog.pg_size_pretty(x.lag), pg_catalog.pg_size_pretty(v_lag_max),
                           coalesce(', replay lag ' || x.lag_time, '')));
            end if;
        end loop;
        v_lag := (s.sample -> 'replay' ->> 'lag_bytes')::numeric;
        if v_lag > v_lag_max then
            v_keep := v_keep || 'REPLICATION_LAG|replay'::text;
            perform api.open_wal_condition(p_server, p_node, 'REPLICATION_LAG', 'replay',
                format('standby PgSQL node %s has received %s of WAL it has not replayed (threshold %s%s). '
                       || 'Check whether replay is paused (pg_is_wal_replay_paused) or blocked by a conflicting query.',
                       v_fqdn, pg_catalog.pg_size_pretty(v_lag), pg_catalog.pg_size_pretty(v_lag_max),
                       case when (s.sample -> 'replay' ->> 'paused')::boolean then ', replay is paused' else '' end));
        end if;
    end if;
    update public.wal_condition c set cleared = now()
     where c.pgsql_node_id = p_node and c.backup_server_id = p_server and c.cleared is null
       and not (c.code || '|' || c.subject) = any (v_keep)
       and not c.code = any (v_unknown);
    select count(*) into v_n from public.wal_condition c
     where c.pgsql_node_id = p_node and c.backup_server_id = p_server and c.cleared is null;
    return v_n;
end $$;

-- The agent reports what it sampled of node p_node (archived by p_server) at p_sampled_at: role
-- (NULL: the node did not answer, p_error says why) and the sample (see V18). Then the node's
-- conditions are decided. Returns how many are open and how many holes this server's copy of the
-- ledger has (for the agent's /metrics). Not audited (one report per round).
create function api.report_replication_sample(p_server bigint, p_node bigint, p_sampled_at timestamptz,
                                              p_role text, p_error text, p_sample jsonb)
returns table (open_conditions integer, holes integer) language plpgsql as $$
begin
    perform api.acting_for(p_server);
    if p_role is not null and p_role not in ('primary', 'standby') then
        raise exception 'replication role % is not primary or standby', api.q(p_role)
            using errcode = '22023', hint = 'Upgrade the agent to the version of the catalog.';
    end if;
    if not exists (select 1 from public.wal_archive where pgsql_node_id = p_node and backup_server_id = p_server
                      and status = 'ACTIVE') then
        return query select 0, 0;
        return;
    end if;
    insert into public.replication_sample as r (pgsql_node_id, backup_server_id, sampled_at, role, error, sample)
    values (p_node, p_server, p_sampled_at, p_role, left(p_error, 2000), coalesce(p_sample, '{}'))
    on conflict (pgsql_node_id, backup_server_id) do update
       set sampled_at = excluded.sampled_at, reported_at = now(), role = excluded.role, error = excluded.error,
           sample = excluded.sample;
    return query select api.evaluate_wal_conditions(p_server, p_node),
                        (select count(*)::integer from api.wal_holes(p_node) h where h.backup_server_id = p_server);
end $$;

-- `show_replication_status NODE`: the newest sample of the node from each backup server that
-- archives it, one row per thing (the node, each standby, its own WAL receiver, each slot,
-- pgbackman's receiver, each open condition), with its age; a sample older than p_stale is
-- marked STALE (the agent stopped reporting: what it shows may no longer be true).
create function api.show_replication_status(p_node bigint, p_stale interval default '2 minutes')
returns table ("Backup server" text, "As of" text, "Section" text, "Name" text, "State" text, "LSN" text,
               "Lag" text, "Lag bytes" bigint, "Lag time" text, "Detail" text)
language sql stable as $$
    with smp as (
        select r.*, s.fqdn as srv,
               format('%s s ago%s', floor(extract(epoch from now() - r.reported_at))::bigint,
                      case when now() - r.reported_at > p_stale then ' (STALE: the agent stopped reporting)' else '' end) as age
          from public.replication_sample r
          join public.backup_server s on s.server_id = r.backup_server_id
         where r.pgsql_node_id = p_node
    ), lines as (
        select srv, age, 1 as ord, 0 as sub, 'node'::text as section, api.node_fqdn(p_node) as name,
               coalesce(role, 'not answering') as state, sample ->> 'node_lsn' as lsn, null::numeric as lag_bytes,
               null::text as lag_time,
               coalesce(error, format('PostgreSQL %s; sampled %s', sample ->> 'server_version',
                                      to_char(sampled_at at time zone 'UTC', 'YYYY-MM-DD HH24:MI:SS "UTC"'))) as detail
          from smp
        union all
        select srv, age, 2, e.ord::integer, 'standby',
               coalesce(nullif(e.v ->> 'application_name', ''), '?') || coalesce('@' || (e.v ->> 'client_addr'), ''),
               concat_ws(' ', e.v ->> 'state', e.v ->> 'sync_state'),
               format('sent %s write %s flush %s replay %s', e.v ->> 'sent_lsn', e.v ->> 'write_lsn', e.v ->> 'flush_lsn', e.v ->> 'replay_lsn'),
               (e.v ->> 'replay_lag_bytes')::numeric,
               e.v ->> 'replay_lag',
               format('write lag %s, flush lag %s', coalesce(e.v ->> 'write_lag', '-'), coalesce(e.v ->> 'flush_lag', '-'))
          from smp, jsonb_array_elements(coalesce(smp.sample -> 'standbys', '[]')) with ordinality e(v, ord)
        union all
        select srv, age, 3, 0, 'wal receiver',
               concat_ws(':', sample -> 'wal_receiver' ->> 'sender_host', sample -> 'wal_receiver' ->> 'sender_port'),
               coalesce(sample -> 'wal_receiver' ->> 'status', 'not running'),
               format('received %s replayed %s', sample -> 'replay' ->> 'receive_lsn', sample -> 'replay' ->> 'replay_lsn'),
               (sample -> 'replay' ->> 'lag_bytes')::numeric,
               sample -> 'replay' ->> 'delay',
               case when (sample -> 'replay' ->> 'paused')::boolean then 'replay is PAUSED' else 'replaying' end
               || coalesce('; last replayed transaction ' || (sample -> 'replay' ->> 'last_replay_at'), '')
          from smp where role = 'standby'
        union all
        select srv, age, 4, e.ord::integer, 'slot',
               format('%s (%s, %s)', e.v ->> 'slot_name', e.v ->> 'slot_type',
                      case when (e.v ->> 'active')::boolean then 'active' else 'inactive' end),
               coalesce(e.v ->> 'wal_status', '-'),
               'restart ' || coalesce(e.v ->> 'restart_lsn', '-'),
               (e.v ->> 'retained_bytes')::numeric, null,
               'safe_wal_size ' || coalesce(pg_catalog.pg_size_pretty((e.v ->> 'safe_wal_size')::numeric), 'unlimited')
          from smp, jsonb_array_elements(coalesce(smp.sample -> 'slots', '[]')) with ordinality e(v, ord)
        union all
        select smp.srv, smp.age, 5, 0, 'pgbackman receiver', a.slot_name,
               coalesce(smp.sample -> 'receiver' ->> 'state', a.receiver_state, '?')
               || case when coalesce((smp.sample -> 'receiver' ->> 'stalls')::integer, 0) > 0
                       then format(' (%s stall(s), last %s)', smp.sample -> 'receiver' ->> 'stalls', smp.sample -> 'receiver' ->> 'last_stall_at')
                       else '' end,
               'archived to ' || coalesce(lr.end_lsn::text, '-'),
               (smp.sample ->> 'node_lsn')::pg_lsn - lr.end_lsn,
               date_trunc('second', now() - lr.last_arrived)::text || ' since the last segment',
               coalesce(smp.sample -> 'receiver' ->> 'error', '')
          from smp
          join public.wal_archive a on a.pgsql_node_id = p_node and a.backup_server_id = smp.backup_server_id and a.status = 'ACTIVE'
          left join lateral (select w.end_lsn, w.last_arrived from public.wal_run w
                              where w.pgsql_node_id = p_node and w.backup_server_id = smp.backup_server_id
                              order by w.end_lsn desc limit 1) lr on true
        union all
        select smp.srv, smp.age, 6, c.condition_id::integer, 'alert', c.code || coalesce(' ' || nullif(c.subject, ''), ''),
               'open since ' || date_trunc('second', now() - c.opened)::text, null, null, null, c.detail
          from smp
          join public.wal_condition c on c.pgsql_node_id = p_node and c.backup_server_id = smp.backup_server_id and c.cleared is null
    )
    select srv, age, section, name, state, lsn, pg_catalog.pg_size_pretty(lag_bytes), lag_bytes::bigint, lag_time, detail
      from lines order by srv, ord, sub
$$;

-- Per WAL archive, for the fleet metrics (pgbackman serve-metrics) and the status probe: the
-- receiver as last reported, lag, holes, open conditions, and the newest recoverable window.
create view api.monitoring_wal as
select a.archive_id, a.pgsql_node_id as node_id, n.fqdn as node_fqdn, a.backup_server_id as server_id,
       s.fqdn as server_fqdn, a.receiver_state, a.state_reported_at,
       case when a.node_lsn is not null and lr.end_lsn is not null then a.node_lsn - lr.end_lsn end as lag_bytes,
       lr.last_arrived,
       (select count(*) from api.wal_holes(a.pgsql_node_id) h where h.backup_server_id = a.backup_server_id) as holes,
       array(select c.code from public.wal_condition c
              where c.pgsql_node_id = a.pgsql_node_id and c.backup_server_id = a.backup_server_id and c.cleared is null
              order by c.code, c.subject) as open_codes,
       rw.from_lsn - '0/0'::pg_lsn as window_from_lsn, rw.to_lsn - '0/0'::pg_lsn as window_to_lsn,
       rw.from_arrived as window_from, rw.to_arrived as window_to
  from public.wal_archive a
  join public.backup_server s on s.server_id = a.backup_server_id
  join public.pgsql_node n on n.node_id = a.pgsql_node_id
  left join lateral (select w.end_lsn, w.last_arrived from public.wal_run w
                      where w.pgsql_node_id = a.pgsql_node_id and w.backup_server_id = a.backup_server_id
                      order by w.end_lsn desc limit 1) lr on true
  left join lateral (select w.from_lsn, w.to_lsn, w.from_arrived, w.to_arrived from api.recovery_window(a.pgsql_node_id) w
                      where w.backup_server_id = a.backup_server_id order by w.to_lsn desc limit 1) rw on true
 where a.status = 'ACTIVE';
