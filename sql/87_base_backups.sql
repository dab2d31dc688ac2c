-- Base backups (issue 11; table base_backup in migrations/V16__base_backups.sql). A BASEBACKUP
-- definition runs as a BACKUP job like the logical ones and its set is a backup_catalog row; the
-- physical facts (incarnation, timeline, LSNs, manifest check, WAL state) are recorded here by
-- report_backup, and join the WAL ledger by node, incarnation, timeline and LSN.

-- pg_basebackup options of a BASEBACKUP definition (NULL keeps the current value).
create function api.set_base_backup_options(p_def_id bigint, p_checkpoint text, p_max_rate text, p_wal_wait text)
returns bigint language plpgsql as $$
declare
    v_code text;
    v_rate text := nullif(btrim(p_max_rate), '');
    v_kb bigint;
begin
    select backup_code into v_code from public.backup_definition where def_id = p_def_id;
    if not found then
        raise exception 'backup definition DefID % does not exist', p_def_id
            using errcode = 'P0002', hint = 'show_backup_definitions lists the definitions.';
    end if;
    if v_code <> 'BASEBACKUP' and (p_checkpoint is not null or v_rate is not null or p_wal_wait is not null) then
        raise exception 'DefID % makes % backups: --checkpoint, --max-rate and --wal-wait apply to BASEBACKUP definitions only', p_def_id, v_code
            using errcode = '22023', hint = 'Register a definition with backup code BASEBACKUP for a base backup of the node.';
    end if;
    if p_checkpoint is not null then
        perform api.check_choice('checkpoint', lower(btrim(p_checkpoint)), array['fast', 'spread']);
    end if;
    -- pg_basebackup's own rule: 32 kB/s to 1 GB/s, in kB/s or with a k / M suffix.
    if v_rate is not null and lower(v_rate) not in ('0', 'none') then
        if v_rate !~ '^[0-9]{1,7}[kM]?$' then
            raise exception 'maximum rate % is not a transfer rate', api.q(v_rate)
                using errcode = '22023', hint = 'Give kB per second (e.g. 10000), or a number with k or M (e.g. 50M); none removes the limit.';
        end if;
        v_kb := substring(v_rate from '^[0-9]+')::bigint * case when v_rate like '%M' then 1024 else 1 end;
        if v_kb < 32 or v_kb > 1048576 then
            raise exception 'maximum rate % is outside 32k to 1024M', api.q(v_rate)
                using errcode = '22023', hint = 'pg_basebackup accepts 32 kB/s to 1 GB/s; none removes the limit.';
        end if;
    end if;
    update public.backup_definition set
        checkpoint = coalesce(lower(btrim(p_checkpoint)), checkpoint),
        max_rate = case when v_rate is null then max_rate when lower(v_rate) in ('0', 'none') then null else v_rate end,
        wal_wait_timeout = coalesce(case when nullif(btrim(p_wal_wait), '') is null then null
                                         else api.check_interval('WAL wait', p_wal_wait) end, wal_wait_timeout)
     where def_id = p_def_id;
    return p_def_id;
exception when check_violation then
    raise exception 'WAL wait % is outside 10 seconds to 7 days', api.q(p_wal_wait)
        using errcode = '22023', hint = 'Give an interval such as ''15 minutes''.';
end $$;

-- The segments of start..stop on one timeline that this server's copy of the ledger does not
-- hold yet, by name, in order (F2, F4: a .partial counts when it reaches stop). The segment size
-- is the incarnation's in the ledger, else the one the agent read.
create function api.base_backup_missing_wal(p_server bigint, p_node bigint, p_system_identifier numeric,
                                            p_timeline bigint, p_start pg_lsn, p_stop pg_lsn, p_seg_size integer)
returns text[] language plpgsql stable as $$
declare
    v_seg integer;
    v_missing text[];
begin
    perform api.acting_for(p_server);
    select o.seg_size into v_seg from public.wal_object o
     where o.pgsql_node_id = p_node and o.system_identifier = p_system_identifier and o.kind <> 'history'
     limit 1;
    v_seg := coalesce(v_seg, p_seg_size);
    select coalesce(array_agg(api.wal_file_name(p_timeline, s, v_seg, 'full', null) order by s), '{}') into v_missing
      from generate_series(api.wal_segno(p_start, v_seg), api.wal_segno(p_stop, v_seg)) s
     where not exists (select 1 from public.wal_run r
                        where r.pgsql_node_id = p_node and r.backup_server_id = p_server
                          and r.system_identifier = p_system_identifier and r.timeline = p_timeline
                          and s between r.first_segno and r.last_segno
                          -- a run ending in a .partial covers its last segment only up to its end
                          and (s < r.last_segno or r.end_lsn >= p_stop
                               or not exists (select 1 from public.wal_object o
                                               where o.pgsql_node_id = p_node and o.backup_server_id = p_server
                                                 and o.system_identifier = p_system_identifier and o.timeline = p_timeline
                                                 and o.segno = s and o.kind = 'partial')));
    return v_missing;
end $$;

-- What a running job waits for (shown by show_jobs_queue); NULL clears it. Fenced by the attempt.
create function api.job_wait_note(p_server bigint, p_job_id bigint, p_attempt integer, p_note text)
returns boolean language plpgsql as $$
begin
    perform api.acting_for(p_server);
    update public.job set wait_note = p_note
     where job_id = p_job_id and attempt = p_attempt and state = 'RUNNING' and backup_server_id = p_server;
    return found;
end $$;

-- Called by report_backup for a BASEBACKUP set: its physical facts as the agent reports them.
create function api.record_base_backup(p_bck bigint, p_facts jsonb)
returns void language plpgsql as $$
begin
    insert into public.base_backup (bck_id, pgsql_node_id, backup_server_id, system_identifier, timeline, start_lsn,
                                    stop_lsn, start_time, stop_time, start_wal_file, seg_size, wal_method, tablespaces,
                                    manifest_state, manifest_detail, files_checked, state, missing_wal, wal_deadline)
    select c.bck_id, c.pgsql_node_id, c.backup_server_id, (p_facts ->> 'system_identifier')::numeric,
           (p_facts ->> 'timeline')::bigint, (p_facts ->> 'start_lsn')::pg_lsn, (p_facts ->> 'stop_lsn')::pg_lsn,
           (p_facts ->> 'start_time')::timestamptz, (p_facts ->> 'stop_time')::timestamptz, p_facts ->> 'start_wal_file',
           (p_facts ->> 'seg_size')::integer, coalesce(p_facts ->> 'wal_method', 'none'),
           coalesce(p_facts -> 'tablespaces', '[]'), coalesce(p_facts ->> 'manifest_state', 'NOT_CHECKED'),
           p_facts ->> 'manifest_detail', (p_facts ->> 'files_checked')::integer,
           case when c.execution_status = 'SUCCEEDED' then 'SUCCEEDED' else 'FAILED' end,
           coalesce(array(select jsonb_array_elements_text(p_facts -> 'missing_wal')), '{}'),
           (p_facts ->> 'wal_deadline')::timestamptz
      from public.backup_catalog c where c.bck_id = p_bck
    on conflict (bck_id) do nothing;
end $$;

-- Recovery chains (PGCHAIN's list-chains): each succeeded base backup of the node with the
-- recovery window of the same copy that covers it (from its start to its stop LSN, along its
-- timeline), the WAL after it in that window, the total size (set + WAL) and the last point it
-- restores to. A base backup no window covers is listed with why (its WAL is not all there).
create function api.recovery_chains(p_node bigint)
returns table (bck_id bigint, backup_server_id bigint, system_identifier numeric, timeline bigint, start_lsn pg_lsn,
               stop_lsn pg_lsn, stop_time timestamptz, base_size bigint, wal_segments bigint, wal_bytes bigint,
               total_size bigint, restorable_to_lsn pg_lsn, last_restore_point timestamptz, note text)
language sql stable as $$
    with rw as materialized (select * from api.recovery_window(p_node))
    select b.bck_id, b.backup_server_id, b.system_identifier, b.timeline, b.start_lsn, b.stop_lsn, b.stop_time,
           c.total_size, w.segs, w.bytes, c.total_size + coalesce(w.bytes, 0), w.to_lsn, w.to_arrived,
           case when w.to_lsn is null then 'no recovery window covers its WAL (show_recovery_window --holes)' end
      from public.base_backup b
      join public.backup_catalog c on c.bck_id = b.bck_id
      left join lateral (
            -- WAL after the backup from the runs (a handful of rows, never the segments): the
            -- part of each run from the backup's start segment to the window's end; bytes
            -- pro rata of a run's segments.
            select x.to_lsn, x.to_arrived,
                   (select coalesce(sum(least(r.last_segno, api.wal_segno(x.to_lsn, r.seg_size))
                                        - greatest(r.first_segno, api.wal_segno(b.start_lsn, r.seg_size)) + 1), 0)::bigint
                      from public.wal_run r
                     where r.pgsql_node_id = p_node and r.backup_server_id = b.backup_server_id
                       and r.system_identifier = b.system_identifier
                       and r.end_lsn > b.start_lsn and r.start_lsn <= x.to_lsn) as segs,
                   (select coalesce(sum(r.stored_bytes
                                        * (least(r.last_segno, api.wal_segno(x.to_lsn, r.seg_size))
                                           - greatest(r.first_segno, api.wal_segno(b.start_lsn, r.seg_size)) + 1)
                                        / r.segments), 0)::bigint
                      from public.wal_run r
                     where r.pgsql_node_id = p_node and r.backup_server_id = b.backup_server_id
                       and r.system_identifier = b.system_identifier
                       and r.end_lsn > b.start_lsn and r.start_lsn <= x.to_lsn) as bytes
              from rw x
             where x.backup_server_id = b.backup_server_id and x.system_identifier = b.system_identifier
               and x.from_lsn <= b.start_lsn and x.to_lsn >= b.stop_lsn
               and b.timeline::text = any (string_to_array(x.timelines, ' → '))
             order by x.to_lsn desc limit 1) w on true
     where b.pgsql_node_id = p_node and b.state = 'SUCCEEDED'
     order by b.backup_server_id, b.system_identifier, b.start_lsn
$$;
