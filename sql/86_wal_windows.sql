-- The recovery questions over the WAL ledger (issue 11; tables in migrations/V15__wal_ledger.sql,
-- upkeep of wal_run in sql/85_wal.sql): holes, recovery windows and the shell's listings. They
-- read wal_run (a handful of rows per node), never a scan of the segments.

-- Missing segments between present ones, per copy (backup server), incarnation and timeline:
-- the gaps between consecutive runs.
create function api.wal_holes(p_node bigint)
returns table (backup_server_id bigint, system_identifier numeric, timeline bigint, first_missing bigint,
               last_missing bigint, missing bigint, first_missing_file text, last_missing_file text,
               after_lsn pg_lsn, before_lsn pg_lsn)
language sql stable as $$
    select r.backup_server_id, r.system_identifier, r.timeline, r.prev_last + 1, r.first_segno - 1,
           r.first_segno - r.prev_last - 1,
           api.wal_file_name(r.timeline, r.prev_last + 1, r.seg_size, 'full', null),
           api.wal_file_name(r.timeline, r.first_segno - 1, r.seg_size, 'full', null),
           r.prev_end, r.start_lsn
      from (select w.*, lag(w.last_segno) over k as prev_last, lag(w.end_lsn) over k as prev_end
              from public.wal_run w where w.pgsql_node_id = p_node
            window k as (partition by w.backup_server_id, w.system_identifier, w.timeline order by w.first_segno)) r
     where r.prev_last is not null
     order by 1, 2, 3, 4
$$;

-- Recovery windows: for each run of present segments, how far back the WAL reaches without a
-- gap along the timeline's history (a run that reaches the start of its timeline continues on
-- the parent below the switch point; the segment holding the switch point comes from the child).
-- One row per run: its copy, incarnation, timeline, the LSN range from_lsn..to_lsn replayable
-- without a gap, arrival times of its first and last segments, the timelines it spans, its
-- segment count and stored bytes, and why it starts where it does (a hole, a missing history
-- file, or the first segment archived). A restore additionally needs a base backup taken
-- inside the window (base backups come with their own table; they join here by LSN).
create function api.recovery_window(p_node bigint)
returns table (backup_server_id bigint, system_identifier numeric, timeline bigint, from_lsn pg_lsn, to_lsn pg_lsn,
               from_arrived timestamptz, to_arrived timestamptz, timelines text, segments bigint, stored_bytes bigint,
               starts_at text)
language plpgsql stable as $$
#variable_conflict use_column
declare
    top record;
    r record;
    h record;
    p record;
    v_seg_size integer;
    v_cur bigint;
    v_hi bigint;
    v_from pg_lsn;
    v_from_at timestamptz;
    v_path text;
    v_segs bigint;
    v_bytes bigint;
    v_why text;
    v_need bigint;
    v_begin bigint;
begin
    for top in select w.* from public.wal_run w where w.pgsql_node_id = p_node
                order by w.backup_server_id, w.system_identifier, w.timeline, w.first_segno loop
        v_seg_size := top.seg_size;
        r := top;
        v_cur := top.timeline;
        v_hi := top.last_segno;
        v_path := top.timeline::text;
        v_segs := 0;
        v_bytes := 0;
        loop
            -- r is a run of timeline v_cur, used up to segment v_hi.
            v_segs := v_segs + (v_hi - r.first_segno + 1);
            v_bytes := v_bytes + case when v_hi = r.last_segno then r.stored_bytes
                                      else (select coalesce(sum(o.stored_size), 0) from public.wal_object o
                                             where o.pgsql_node_id = p_node and o.backup_server_id = r.backup_server_id
                                               and o.system_identifier = r.system_identifier and o.timeline = v_cur
                                               and o.segno between r.first_segno and v_hi and o.kind in ('full', 'partial'))::bigint end;
            v_from := r.start_lsn;
            v_from_at := r.first_arrived;
            select th.* into h from public.timeline_history th
             where th.pgsql_node_id = p_node and th.system_identifier = top.system_identifier and th.timeline = v_cur;
            v_begin := case when found then api.wal_segno(h.switch_lsn, v_seg_size) end;
            if exists (select 1 from public.wal_run w
                        where w.pgsql_node_id = p_node and w.backup_server_id = r.backup_server_id
                          and w.system_identifier = r.system_identifier and w.timeline = v_cur
                          and w.last_segno < r.first_segno and (v_begin is null or w.last_segno >= v_begin)) then
                v_why := format('hole: timeline %s, %s to %s missing (show_wal_segments lists the ledger)', v_cur,
                                api.wal_file_name(v_cur, (select max(w.last_segno) from public.wal_run w
                                                           where w.pgsql_node_id = p_node and w.backup_server_id = r.backup_server_id
                                                             and w.system_identifier = r.system_identifier and w.timeline = v_cur
                                                             and w.last_segno < r.first_segno) + 1, v_seg_size, 'full', null),
                                api.wal_file_name(v_cur, r.first_segno - 1, v_seg_size, 'full', null));
                exit;
            end if;
            -- The WAL before it was deleted by retention (sql/88_wal_retention.sql): not a hole.
            if exists (select 1 from public.wal_retention t
                        where t.pgsql_node_id = p_node and t.backup_server_id = r.backup_server_id
                          and t.system_identifier = r.system_identifier and t.below_segno >= r.first_segno) then
                v_why := 'WAL before it deleted by retention (show_retention_plan --wal)';
                exit;
            end if;
            if h.timeline is null then
                v_why := case when v_cur = 1 then 'first segment archived'
                              else format('history file of timeline %s not in the ledger: its parent is unknown', v_cur) end;
                exit;
            end if;
            if r.first_segno > v_begin then
                v_why := format('first segment archived on timeline %s (it began in %s)', v_cur,
                                api.wal_file_name(v_cur, v_begin, v_seg_size, 'full', null));
                exit;
            end if;
            -- The parent is needed up to the segment before the one that holds the switch point.
            v_need := v_begin - 1;
            if v_need < 0 then
                v_why := 'first segment archived';
                exit;
            end if;
            select w.* into p from public.wal_run w
             where w.pgsql_node_id = p_node and w.backup_server_id = r.backup_server_id
               and w.system_identifier = r.system_identifier and w.timeline = h.parent
               and w.first_segno <= v_need and w.last_segno >= v_need;
            if not found then
                v_why := format('hole: timeline %s, %s missing (needed before the switch to timeline %s at %s)', h.parent,
                                api.wal_file_name(h.parent, v_need, v_seg_size, 'full', null), v_cur, h.switch_lsn);
                exit;
            end if;
            r := p;
            v_cur := h.parent;
            v_hi := v_need;
            v_path := v_cur::text || ' → ' || v_path;
        end loop;
        return query select top.backup_server_id, top.system_identifier, top.timeline, v_from, top.end_lsn, v_from_at,
                            top.last_arrived, v_path, v_segs, v_bytes, v_why;
    end loop;
end $$;

-- show_wal_archives: per archive, what the agent reported and what the ledger holds.
create view api.show_wal_archives as
select a.archive_id as "ArchiveID", a.backup_server_id as "SrvID", s.fqdn as "Backup server",
       a.pgsql_node_id as "NodeID", n.fqdn as "PgSQL node", a.intake as "Intake", a.slot_name as "Slot", a.synchronous as "Synchronous",
       pg_catalog.pg_size_pretty(a.max_lag_bytes) as "Max lag", a.status as "Status",
       case when a.intake = 'push' then coalesce(to_char(a.push_token_created, 'YYYY-MM-DD HH24:MI:SS TZ'), 'none') end as "Credential",
       case when a.status = 'DELETING' then format('stopping: the agent stops the receiver and drops slot %s', a.slot_name)
            when a.status = 'DELETED' then coalesce(a.receiver_state, 'stopped')
            when a.intake = 'push' and a.push_token_sha256 is null
                then format('push: no credential yet (create_wal_push_credential %s %s --file PATH)', s.fqdn, n.fqdn)
            when a.intake = 'push' and a.receiver_state is null then 'push: the agent has not reported its listener yet'
            when a.receiver_state is null then 'not started: the agent of the backup server has not reported it yet (is it running? show_backup_servers)'
            else a.receiver_state end as "Receiver",
       a.slot_wal_status as "Slot WAL status",
       api.wal_file_name(lr.timeline, lr.last_segno, lr.seg_size, 'full', null) as "Last segment",
       lr.last_arrived as "Last arrival",
       case when a.node_lsn is not null and lr.end_lsn is not null then pg_catalog.pg_size_pretty(a.node_lsn - lr.end_lsn) end as "Lag",
       date_trunc('second', now() - lr.last_arrived)::text as "Since last segment",
       rw.from_lsn::text as "Restorable from", rw.to_lsn::text as "Restorable to",
       a.created as "Created", a.deleted as "Deleted"
  from public.wal_archive a
  join public.backup_server s on s.server_id = a.backup_server_id
  join public.pgsql_node n on n.node_id = a.pgsql_node_id
  left join lateral (select w.* from public.wal_run w
                      where w.pgsql_node_id = a.pgsql_node_id and w.backup_server_id = a.backup_server_id
                      order by w.end_lsn desc limit 1) lr on true
  left join lateral (select w.from_lsn, w.to_lsn from api.recovery_window(a.pgsql_node_id) w
                      where w.backup_server_id = a.backup_server_id order by w.to_lsn desc limit 1) rw on true;

-- show_wal_segments NODE [--from X] [--to Y] [--timeline N]: X and Y are LSNs (0/3000000) or
-- times (arrival); at most p_limit rows, in timeline and segment order.
create function api.show_wal_segments(p_node bigint, p_from text, p_to text, p_timeline bigint, p_limit integer)
returns table ("WAL file" text, "Kind" text, "Timeline" bigint, "System identifier" text, "Start LSN" text,
               "End LSN" text, "Size" bigint, "Stored size" bigint, "Codec" text, "SHA-256" text, "Arrival" text,
               "Header check" text, "Arrived" timestamptz, "Backup server" text, "Stored path" text)
language plpgsql stable as $$
declare
    v_from_lsn pg_lsn;
    v_to_lsn pg_lsn;
    v_from_at timestamptz;
    v_to_at timestamptz;
    v_from_floor pg_lsn;
begin
    if nullif(btrim(p_from), '') is not null then
        if btrim(p_from) ~ '^[0-9A-Fa-f]{1,8}/[0-9A-Fa-f]{1,8}$' then
            v_from_lsn := btrim(p_from)::pg_lsn;
            -- An index bound: no segment is longer than 1 GB.
            v_from_floor := case when v_from_lsn - '0/0'::pg_lsn > 1073741824 then v_from_lsn - 1073741824::numeric
                                 else '0/0'::pg_lsn end;
        else
            begin
                v_from_at := btrim(p_from)::timestamptz;
            exception when data_exception then
                raise exception '--from % is neither an LSN nor a time', api.q(p_from)
                    using errcode = '22007', hint = 'Give an LSN such as 0/3000000 or a time such as ''2026-05-01 12:00''.';
            end;
        end if;
    end if;
    if nullif(btrim(p_to), '') is not null then
        if btrim(p_to) ~ '^[0-9A-Fa-f]{1,8}/[0-9A-Fa-f]{1,8}$' then
            v_to_lsn := btrim(p_to)::pg_lsn;
        else
            begin
                v_to_at := btrim(p_to)::timestamptz;
            exception when data_exception then
                raise exception '--to % is neither an LSN nor a time', api.q(p_to)
                    using errcode = '22007', hint = 'Give an LSN such as 0/5000000 or a time such as ''2026-05-01 13:00''.';
            end;
        end if;
    end if;
    return query
    select api.wal_file_name(o.timeline, o.segno, o.seg_size, o.kind, o.start_lsn), o.kind, o.timeline, o.system_identifier::text,
           o.start_lsn::text, o.end_lsn::text, o.size, o.stored_size, o.codec, o.sha256, o.arrival,
           o.header_check || coalesce(': ' || o.header_detail, ''), o.arrived_at, s.fqdn, o.stored_path
      from public.wal_object o
      join public.backup_server s on s.server_id = o.backup_server_id
     where o.pgsql_node_id = p_node
       and (p_timeline is null or o.timeline = p_timeline)
       and (v_from_lsn is null or (o.end_lsn > v_from_lsn and o.start_lsn >= v_from_floor))
       and (v_to_lsn is null or o.start_lsn <= v_to_lsn)
       and (v_from_at is null or o.arrived_at >= v_from_at)
       and (v_to_at is null or o.arrived_at <= v_to_at)
     order by o.start_lsn, o.timeline, o.kind, s.fqdn
     limit p_limit;
end $$;
