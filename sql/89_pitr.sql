-- Point-in-time recovery (issue 12; table clone in migrations/V21__pitr.sql). The plan of a
-- restore comes from the catalog alone: the base backup (base_backup, sql/87_base_backups.sql),
-- the WAL after it along the target timeline's lineage (wal_object / wal_run / timeline_history,
-- sql/85_wal.sql, 86_wal_windows.sql, 88_wal_retention.sql's timeline_lineage), or a refusal with
-- a SQLSTATE and a HINT. The agent asks for the plan again when its job starts, so the WAL list
-- it restores from is the ledger's as it is then.

-- The segment ranges of a lineage: which timeline holds each segment number on the way to
-- p_timeline (the segment holding a switch point comes from the child; the parent is used up
-- to the one before). One row per timeline of the lineage, newest first.
create function api.pitr_path(p_node bigint, p_sysid numeric, p_timeline bigint, p_seg_size integer)
returns table (timeline bigint, lo_seg bigint, hi_seg bigint)
language sql stable as $$
    with l as (
        select t.tl, t.ord, h.switch_lsn
          from unnest(api.timeline_lineage(p_node, p_sysid, p_timeline)) with ordinality t(tl, ord)
          left join public.timeline_history h
            on h.pgsql_node_id = p_node and h.system_identifier = p_sysid and h.timeline = t.tl
    )
    select l.tl,
           coalesce(api.wal_segno(l.switch_lsn, p_seg_size), 0),
           coalesce((select api.wal_segno(c.switch_lsn, p_seg_size) - 1 from l c where c.ord = l.ord - 1),
                    9223372036854775806)
      from l order by l.ord
$$;

-- The plan of a point-in-time restore of node p_node: target kind time | lsn | xid | name |
-- immediate with its value, timeline latest | current | N, from base backup p_bck (NULL: the
-- newest that fits). Raises, with a HINT, when the point cannot be restored from this archive.
-- The WAL list runs from the base backup's start to the segment the target needs (lsn: the
-- target's; time: the first segment that arrived at or after the time, since the catalog knows
-- arrivals, not commit times; xid and name: the end of the archive along the lineage, since
-- the catalog does not know where they are; immediate: the backup's stop). Recovery confirms.
create function api.pitr_plan(p_node bigint, p_bck bigint, p_kind text, p_value text, p_timeline text)
returns jsonb language plpgsql stable as $$
declare
    v_kind text := lower(btrim(coalesce(p_kind, '')));
    v_value text := btrim(coalesce(p_value, ''));
    v_tlreq text := lower(btrim(coalesce(nullif(btrim(p_timeline), ''), 'latest')));
    v_lsn pg_lsn;
    v_time timestamptz;
    v_sysid numeric;
    v_tl bigint;
    v_b record;
    v_first record;
    v_seg integer;
    v_start_seg bigint;
    v_end_seg bigint;
    v_end_lsn pg_lsn;
    v_last record;
    v_missing bigint;
    v_first_missing text;
    v_wal jsonb;
    v_hist jsonb;
    v_wal_bytes bigint;
    v_note text;
begin
    if v_kind not in ('time', 'lsn', 'xid', 'name', 'immediate') then
        raise exception 'recovery target kind % is not one of time, lsn, xid, name, immediate', api.q(p_kind)
            using errcode = '22023', hint = 'Give --target-time T, --target-lsn L, --target-xid X, --target-name N or --immediate.';
    end if;
    if v_kind = 'lsn' then
        if v_value !~ '^[0-9A-Fa-f]{1,8}/[0-9A-Fa-f]{1,8}$' then
            raise exception 'target LSN % is not an LSN', api.q(p_value)
                using errcode = '22023', hint = 'Give an LSN such as 0/5000028 (pg_current_wal_lsn() on the node shows the form).';
        end if;
        v_lsn := v_value::pg_lsn;
    elsif v_kind = 'time' then
        begin
            v_time := v_value::timestamptz;
        exception when others then
            raise exception 'target time % is not a time', api.q(p_value)
                using errcode = '22007', hint = 'Give a time such as ''2026-05-01 12:00:00+00''.';
        end;
    elsif v_kind = 'xid' and v_value !~ '^[0-9]{1,19}$' then
        raise exception 'target transaction id % is not a transaction id', api.q(p_value)
            using errcode = '22023', hint = 'Give the number txid_current() returned (e.g. 7513).';
    elsif v_kind = 'name' and (v_value = '' or octet_length(v_value) > 63 or v_value ~ '[[:cntrl:]]') then
        raise exception 'restore point name % is not a restore point name', api.q(p_value)
            using errcode = '22023', hint = 'Give the name passed to pg_create_restore_point() (at most 63 bytes).';
    end if;
    if v_tlreq !~ '^(latest|current|[0-9]{1,10})$' then
        raise exception 'timeline % is not latest, current or a number', api.q(p_timeline)
            using errcode = '22023', hint = 'Give --timeline latest (the newest in the archive), current (the base backup''s) or a timeline number.';
    end if;

    -- The incarnation: the given base backup's, else the newest succeeded one's.
    if p_bck is not null then
        select b.*, c.backup_dir, c.total_size, c.retention_state into v_b
          from public.base_backup b join public.backup_catalog c using (bck_id)
         where b.bck_id = p_bck;
        if not found or v_b.pgsql_node_id <> p_node then
            raise exception 'BckID % is not a base backup of PgSQL node %', p_bck, api.node_fqdn(p_node)
                using errcode = 'P0002', hint = format('show_restore_points %s lists the base backups of the node.', api.node_fqdn(p_node));
        end if;
        if v_b.state <> 'SUCCEEDED' or v_b.retention_state <> 'KEPT' then
            raise exception 'base backup BckID % is % (retention %): it cannot be restored', p_bck, v_b.state, v_b.retention_state
                using errcode = '22023', hint = format('Give latest, or another BckID from show_restore_points %s.', api.node_fqdn(p_node));
        end if;
        v_sysid := v_b.system_identifier;
    else
        select b.system_identifier into v_sysid
          from public.base_backup b join public.backup_catalog c using (bck_id)
         where b.pgsql_node_id = p_node and b.state = 'SUCCEEDED' and c.retention_state = 'KEPT'
         order by b.stop_time desc nulls last, b.bck_id desc limit 1;
        if not found then
            raise exception 'PgSQL node % has no succeeded base backup', api.node_fqdn(p_node)
                using errcode = 'P0002', hint = 'Register a BASEBACKUP definition for it and run it (run_backup_definition_now DefID); show_recovery_window lists what the archive holds.';
        end if;
    end if;

    -- The target timeline, which must be in the archive.
    if v_tlreq = 'latest' then
        select greatest((select max(r.timeline) from public.wal_run r
                          where r.pgsql_node_id = p_node and r.system_identifier = v_sysid),
                        (select max(h.timeline) from public.timeline_history h
                          where h.pgsql_node_id = p_node and h.system_identifier = v_sysid)) into v_tl;
    elsif v_tlreq = 'current' then
        v_tl := coalesce(v_b.timeline, (select b.timeline from public.base_backup b join public.backup_catalog c using (bck_id)
                                         where b.pgsql_node_id = p_node and b.system_identifier = v_sysid
                                           and b.state = 'SUCCEEDED' and c.retention_state = 'KEPT'
                                         order by b.stop_time desc nulls last, b.bck_id desc limit 1));
    else
        v_tl := v_tlreq::bigint;
        if not exists (select 1 from public.wal_run r where r.pgsql_node_id = p_node and r.system_identifier = v_sysid and r.timeline = v_tl)
           and not exists (select 1 from public.timeline_history h where h.pgsql_node_id = p_node and h.system_identifier = v_sysid and h.timeline = v_tl) then
            raise exception 'timeline % of PgSQL node % is not in the archive', v_tl, api.node_fqdn(p_node)
                using errcode = 'P0002',
                      hint = format('show_wal_segments %s lists the timelines archived; --timeline latest takes the newest.', api.node_fqdn(p_node));
        end if;
    end if;
    if v_tl is null then
        raise exception 'the archive holds no WAL of PgSQL node %', api.node_fqdn(p_node)
            using errcode = 'P0002', hint = 'register_wal_archive starts archiving it; show_wal_archives follows it.';
    end if;

    -- The base backup: the given one, else the newest whose end is before the target and whose
    -- timeline is on the target's lineage, ending before the lineage leaves its timeline.
    select b.*, c.backup_dir, c.total_size, c.retention_state into v_b
      from public.base_backup b join public.backup_catalog c using (bck_id)
     where b.pgsql_node_id = p_node and b.system_identifier = v_sysid and b.state = 'SUCCEEDED' and c.retention_state = 'KEPT'
       and (p_bck is null or b.bck_id = p_bck)
       and (v_lsn is null or b.stop_lsn <= v_lsn)
       and (v_time is null or b.stop_time <= v_time)
       and b.timeline = any (api.timeline_lineage(p_node, v_sysid, v_tl))
       and not exists (select 1 from public.timeline_history h
                        where h.pgsql_node_id = p_node and h.system_identifier = v_sysid and h.parent = b.timeline
                          and h.timeline = any (api.timeline_lineage(p_node, v_sysid, v_tl)) and h.switch_lsn < b.stop_lsn)
     order by b.stop_lsn desc, b.bck_id desc limit 1;
    if not found then
        select b.bck_id, b.stop_lsn, b.stop_time, b.timeline into v_first
          from public.base_backup b join public.backup_catalog c using (bck_id)
         where b.pgsql_node_id = p_node and b.system_identifier = v_sysid and b.state = 'SUCCEEDED' and c.retention_state = 'KEPT'
           and (p_bck is null or b.bck_id = p_bck)
         order by b.stop_lsn limit 1;
        if v_first.bck_id is not null and ((v_lsn is not null and v_lsn < v_first.stop_lsn) or (v_time is not null and v_time < v_first.stop_time)) then
            raise exception 'the target % is before the end of % base backup of PgSQL node % (BckID %, consistent at % / LSN %)',
                            v_value, case when p_bck is null then 'the first' else 'the given' end, api.node_fqdn(p_node),
                            v_first.bck_id, v_first.stop_time, v_first.stop_lsn
                using errcode = '22023',
                      hint = format('A point after %s is restorable (show_restore_points %s); %s',
                                    v_first.stop_time, api.node_fqdn(p_node),
                                    case when p_bck is null then 'nothing older than the first base backup can be restored.'
                                         else 'latest picks the newest base backup before the target.' end);
        end if;
        raise exception 'no base backup of PgSQL node % is on the lineage of timeline % (%)', api.node_fqdn(p_node), v_tl,
                        array_to_string(api.timeline_lineage(p_node, v_sysid, v_tl), ' ← ')
            using errcode = '22023',
                  hint = format('Give --timeline current or the timeline of a base backup (show_restore_points %s), or take a base backup on timeline %s.',
                                api.node_fqdn(p_node), v_tl);
    end if;

    v_seg := v_b.seg_size;
    v_start_seg := api.wal_segno(v_b.start_lsn, v_seg);
    -- The newest segment of the lineage on the base backup's copy.
    select p.timeline, o.segno, o.end_lsn, o.arrived_at into v_last
      from api.pitr_path(p_node, v_sysid, v_tl, v_seg) p
      join public.wal_object o on o.pgsql_node_id = p_node and o.backup_server_id = v_b.backup_server_id
                              and o.system_identifier = v_sysid and o.timeline = p.timeline
                              and o.kind in ('full', 'partial') and o.segno between p.lo_seg and p.hi_seg
     order by o.segno desc, o.kind limit 1;
    if v_kind = 'lsn' then
        v_end_seg := api.wal_segno(v_lsn, v_seg);
        v_end_lsn := v_lsn;
    elsif v_kind = 'immediate' then
        v_end_seg := api.wal_segno(v_b.stop_lsn, v_seg);
        v_end_lsn := v_b.stop_lsn;
    elsif v_kind = 'time' then
        select o.segno, o.end_lsn into v_end_seg, v_end_lsn
          from api.pitr_path(p_node, v_sysid, v_tl, v_seg) p
          join public.wal_object o on o.pgsql_node_id = p_node and o.backup_server_id = v_b.backup_server_id
                                  and o.system_identifier = v_sysid and o.timeline = p.timeline
                                  and o.kind in ('full', 'partial') and o.segno between p.lo_seg and p.hi_seg
         where o.segno >= v_start_seg and o.arrived_at >= v_time
         order by o.segno limit 1;
        if v_end_seg is null then
            raise exception 'the target time % is after the newest WAL of PgSQL node % on timeline % in the archive (last segment arrived %)',
                            v_value, api.node_fqdn(p_node), v_tl, v_last.arrived_at
                using errcode = '22023',
                      hint = 'A later time is restorable once its WAL is archived (pg_switch_wal() on the node completes the current segment); show_wal_archives shows the lag.';
        end if;
        v_note := 'time target: the WAL is planned up to the first segment that arrived at or after it; recovery confirms the point';
    else
        v_end_seg := v_last.segno;
        v_end_lsn := v_last.end_lsn;
        v_note := format('%s target: the catalog does not know where it lies; the WAL to the end of the archive is planned and recovery confirms it',
                         v_kind);
    end if;
    if v_end_seg is null or v_end_seg < v_start_seg then
        v_end_seg := greatest(coalesce(v_end_seg, v_start_seg), api.wal_segno(v_b.stop_lsn, v_seg));
    end if;

    -- Every segment from the start to the end, on the timeline that holds it (a .partial only
    -- as the last one, when it reaches the end).
    with want as (
        select s, (select p.timeline from api.pitr_path(p_node, v_sysid, v_tl, v_seg) p
                    where s between p.lo_seg and p.hi_seg order by p.timeline desc limit 1) as tl
          from generate_series(v_start_seg, v_end_seg) s
    ), got as (
        select w.s, w.tl, o.*
          from want w
          left join lateral (select o.* from public.wal_object o
                              where o.pgsql_node_id = p_node and o.backup_server_id = v_b.backup_server_id
                                and o.system_identifier = v_sysid and o.timeline = w.tl and o.segno = w.s
                                and (o.kind = 'full' or (o.kind = 'partial' and w.s = v_end_seg and o.end_lsn >= v_end_lsn))
                              order by o.kind limit 1) o on true
    )
    select count(*) filter (where g.wal_id is null),
           min(api.wal_file_name(g.tl, g.s, v_seg, 'full', null)) filter (where g.wal_id is null),
           coalesce(jsonb_agg(jsonb_build_object(
               'name', api.wal_file_name(g.tl, g.s, v_seg, 'full', null), 'kind', g.kind, 'timeline', g.tl, 'segno', g.s,
               'size', g.size, 'stored_size', g.stored_size, 'sha256', g.sha256, 'stored_sha256', g.stored_sha256,
               'codec', g.codec, 'stored_path', g.stored_path, 'end_lsn', g.end_lsn::text) order by g.s)
               filter (where g.wal_id is not null), '[]'),
           coalesce(sum(g.stored_size), 0)
      into v_missing, v_first_missing, v_wal, v_wal_bytes
      from got g;
    if v_missing > 0 then
        if v_last.segno is null or v_end_seg > v_last.segno then
            raise exception 'the target % is after the end of the WAL archive of PgSQL node % on timeline % (% segment(s) missing from %)',
                            coalesce(nullif(v_value, ''), v_kind), api.node_fqdn(p_node), v_tl, v_missing, v_first_missing
                using errcode = '22023',
                      hint = format('The archive reaches %s; a later point is restorable once its WAL is archived (show_wal_archives %s shows the lag).',
                                    coalesce(v_last.end_lsn::text, 'nothing after the base backup'), api.node_fqdn(p_node));
        end if;
        raise exception 'the WAL needed to reach % from BckID % falls in a hole: % segment(s) missing in the archive of % on %, the first %',
                        coalesce(nullif(v_value, ''), v_kind), v_b.bck_id, v_missing, api.node_fqdn(p_node),
                        api.server_fqdn(v_b.backup_server_id), v_first_missing
            using errcode = '22023',
                  hint = format('show_recovery_window %s --holes lists the holes; a point before the hole, or after a base backup taken after it, is restorable.',
                                api.node_fqdn(p_node));
    end if;

    -- The history files of the lineage (every timeline above 1).
    select coalesce(jsonb_agg(jsonb_build_object(
               'name', api.wal_file_name(t.tl, null, v_seg, 'history', null), 'kind', 'history', 'timeline', t.tl,
               'size', o.size, 'stored_size', o.stored_size, 'sha256', o.sha256, 'stored_sha256', o.stored_sha256,
               'codec', o.codec, 'stored_path', o.stored_path) order by t.tl), '[]'),
           count(*) filter (where o.wal_id is null),
           min(t.tl) filter (where o.wal_id is null)
      into v_hist, v_missing, v_end_seg
      from unnest(api.timeline_lineage(p_node, v_sysid, v_tl)) t(tl)
      left join public.wal_object o on o.pgsql_node_id = p_node and o.backup_server_id = v_b.backup_server_id
                                   and o.system_identifier = v_sysid and o.timeline = t.tl and o.kind = 'history'
     where t.tl > 1;
    if v_missing > 0 then
        raise exception 'the history file of timeline % of PgSQL node % is not in the archive of %', v_end_seg,
                        api.node_fqdn(p_node), api.server_fqdn(v_b.backup_server_id)
            using errcode = 'P0002', hint = 'Recovery along the timeline needs it; give --timeline current, or restore on the server that archived the promotion.';
    end if;

    return jsonb_build_object(
        'node_id', p_node, 'node', api.node_fqdn(p_node),
        'backup_server_id', v_b.backup_server_id, 'backup_server', api.server_fqdn(v_b.backup_server_id),
        'bck_id', v_b.bck_id, 'backup_dir', v_b.backup_dir, 'base_bytes', v_b.total_size,
        'system_identifier', v_sysid::text, 'base_timeline', v_b.timeline, 'seg_size', v_seg,
        'start_lsn', v_b.start_lsn::text, 'stop_lsn', v_b.stop_lsn::text, 'stop_time', v_b.stop_time,
        'target_kind', v_kind, 'target_value', nullif(v_value, ''), 'timeline', v_tl, 'timeline_request', v_tlreq,
        'lineage', to_jsonb(api.timeline_lineage(p_node, v_sysid, v_tl)),
        'end_lsn', v_end_lsn::text, 'archive_end_lsn', v_last.end_lsn::text, 'archive_end_arrived', v_last.arrived_at,
        'wal_segments', jsonb_array_length(v_wal), 'history_files', jsonb_array_length(v_hist),
        'wal_bytes', v_wal_bytes, 'fetch_bytes', coalesce(v_b.total_size, 0) + v_wal_bytes,
        'note', v_note, 'wal', v_wal, 'history', v_hist);
end $$;

-- show_restore_points NODE --time T | --lsn L: restorable or why not, as one row (the refusal's
-- message and hint are the answer, not an error).
create function api.restore_point_check(p_node bigint, p_kind text, p_value text)
returns table ("Restorable" text, "BckID" bigint, "Backup server" text, "Base backup consistent at" timestamptz,
               "Timeline" bigint, "WAL segments" bigint, "History files" bigint, "Bytes to fetch" text, "Why" text)
language plpgsql stable as $$
declare
    v jsonb;
    v_msg text;
    v_hint text;
begin
    begin
        v := api.pitr_plan(p_node, null, p_kind, p_value, 'latest');
    exception when sqlstate '22023' or sqlstate 'P0002' or sqlstate '22007' then
        get stacked diagnostics v_msg = message_text, v_hint = pg_exception_hint;
        return query select 'no'::text, null::bigint, null::text, null::timestamptz, null::bigint, null::bigint, null::bigint,
                            null::text, v_msg || coalesce(nullif(E'\nHINT: ' || v_hint, E'\nHINT: '), '');
        return;
    end;
    return query select case when p_kind = 'time' then 'yes, if the WAL holds it (recovery confirms)' else 'yes' end,
                        (v ->> 'bck_id')::bigint, v ->> 'backup_server', (v ->> 'stop_time')::timestamptz,
                        (v ->> 'timeline')::bigint, (v ->> 'wal_segments')::bigint, (v ->> 'history_files')::bigint,
                        pg_catalog.pg_size_pretty((v ->> 'fetch_bytes')::bigint),
                        coalesce(v ->> 'note', format('base backup BckID %s and the WAL to %s', v ->> 'bck_id', v ->> 'end_lsn'));
end $$;
