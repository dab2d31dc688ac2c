-- WAL retention (issue 11): the WAL the kept base backups need stays, what is older goes, in two
-- phases like the sets (sql/60_retention.sql). The tombstone is migrations/V20__wal_retention.sql.
--
-- The rule, per node, copy (backup server) and incarnation (system identifier): a kept base
-- backup needs every segment from its start LSN on, along its timeline's history; so everything
-- below the lowest start LSN of the kept base backups (the floor) is needed by none. LSNs decide,
-- never file names (F8: names order by timeline first): a segment is below the floor when its
-- segment number is, on every timeline. Nothing is deleted for a copy with no kept base backup,
-- nor while a base backup of the node runs (its start LSN is not in the catalog until it ends).
-- Timeline history files are always kept (a few bytes each; every restore along a timeline
-- needs them).

-- The ancestors of a timeline, itself first, from timeline_history.
create function api.timeline_lineage(p_node bigint, p_sysid numeric, p_timeline bigint) returns bigint[]
language sql stable as $$
    with recursive up(tl) as (
        select p_timeline
        union
        select h.parent from up join public.timeline_history h
            on h.pgsql_node_id = p_node and h.system_identifier = p_sysid and h.timeline = up.tl
    )
    select array_agg(tl order by tl desc) from up
$$;

-- The floor of each copy and incarnation of a node's ledger, or why there is none (held).
create function api.wal_retention_floors(p_node bigint)
returns table (backup_server_id bigint, system_identifier numeric, seg_size integer, floor_segno bigint,
               floor_lsn pg_lsn, bck_id bigint, held text)
language sql stable as $$
    with copies as (
        select r.backup_server_id, r.system_identifier, max(r.seg_size) as seg_size
          from public.wal_run r where r.pgsql_node_id = p_node
         group by 1, 2
    )
    select c.backup_server_id, c.system_identifier, c.seg_size,
           case when j.job_id is null and k.bck_id is not null then api.wal_segno(k.start_lsn, c.seg_size) end,
           case when j.job_id is null then k.start_lsn end,
           k.bck_id,
           case when j.job_id is not null
                then format('nothing is deleted while base backup job %s runs (its start LSN is not known yet)', j.job_id)
                when k.bck_id is null
                then format('nothing is deleted: no kept base backup of this node (system identifier %s) on this backup server, '
                            'so the WAL archive is kept whole until one succeeds', c.system_identifier)
           end
      from copies c
      left join lateral (
            -- The lowest start LSN among the base backups retention keeps (any state but FAILED:
            -- one waiting for its WAL needs it most).
            select b.bck_id, b.start_lsn from public.base_backup b
              join public.backup_catalog bc on bc.bck_id = b.bck_id
             where b.pgsql_node_id = p_node and b.backup_server_id = c.backup_server_id
               and b.system_identifier = c.system_identifier and b.start_lsn is not null
               and bc.retention_state = 'KEPT' and b.state <> 'FAILED'
             order by b.start_lsn, b.bck_id limit 1) k on true
      left join lateral (
            select j.job_id from public.job j join public.backup_definition d on d.def_id = j.def_id
             where j.state = 'RUNNING' and d.backup_code = 'BASEBACKUP' and d.pgsql_node_id = p_node
               and j.backup_server_id = c.backup_server_id
             order by j.job_id limit 1) j on true
     order by 1, 2
$$;

-- show_retention_plan --wal: per copy, incarnation and timeline, the WAL ranges retention deletes
-- (below the floor), keeps (each kept base backup's part, up to the next one's start) or holds,
-- with why. Read from wal_run (a handful of rows per node), never the segments.
create function api.wal_retention_plan(p_node bigint)
returns table (backup_server_id bigint, system_identifier numeric, timeline bigint, action text, first_file text,
               last_file text, from_lsn pg_lsn, to_lsn pg_lsn, segments bigint, stored_bytes bigint, reason text)
language sql stable as $$
    with f as materialized (select * from api.wal_retention_floors(p_node)),
    kept as materialized (
        select b.bck_id, b.backup_server_id, b.system_identifier, b.timeline, b.start_lsn,
               api.wal_segno(b.start_lsn, f.seg_size) as lo,
               coalesce(lead(api.wal_segno(b.start_lsn, f.seg_size)) over w - 1, 9223372036854775806) as hi,
               api.timeline_lineage(p_node, b.system_identifier, b.timeline) as lineage
          from public.base_backup b
          join public.backup_catalog bc on bc.bck_id = b.bck_id
          join f on f.backup_server_id = b.backup_server_id and f.system_identifier = b.system_identifier
         where b.pgsql_node_id = p_node and b.start_lsn is not null and bc.retention_state = 'KEPT' and b.state <> 'FAILED'
        window w as (partition by b.backup_server_id, b.system_identifier order by b.start_lsn, b.bck_id)
    ),
    -- Each run cut to a segment range [lo, hi], with its share of the bytes.
    parts as (
        select r.backup_server_id, r.system_identifier, r.timeline, x.action, x.reason,
               greatest(r.first_segno, x.lo) as f_seg, least(r.last_segno, x.hi) as l_seg, r.seg_size,
               r.stored_bytes * (least(r.last_segno, x.hi) - greatest(r.first_segno, x.lo) + 1) / r.segments as bytes,
               x.ord
          from public.wal_run r
          join f on f.backup_server_id = r.backup_server_id and f.system_identifier = r.system_identifier
          cross join lateral (
                select 'hold' as action, f.held as reason, 0::bigint as lo, 9223372036854775806::bigint as hi, 0::numeric as ord
                 where f.held is not null
                union all
                select 'delete', format('before the oldest kept base backup %s (start LSN %s)', f.bck_id, f.floor_lsn),
                       0, f.floor_segno - 1, 0
                 where f.held is null and f.floor_segno > 0
                union all
                select 'keep',
                       case when r.timeline = any (k.lineage) or k.timeline = any (api.timeline_lineage(p_node, r.system_identifier, r.timeline))
                            then format('needed by base backup %s from LSN %s (timeline %s)', k.bck_id, k.start_lsn, k.timeline)
                            else format('after the start of base backup %s (LSN %s), on timeline %s which is not on its lineage: kept, LSNs decide',
                                        k.bck_id, k.start_lsn, r.timeline) end,
                       k.lo, k.hi, k.start_lsn - '0/0'::pg_lsn
                  from kept k
                 where f.held is null and k.backup_server_id = r.backup_server_id and k.system_identifier = r.system_identifier
          ) x
         where r.pgsql_node_id = p_node and r.first_segno <= x.hi and r.last_segno >= x.lo
    )
    select p.backup_server_id, p.system_identifier, p.timeline, p.action,
           api.wal_file_name(p.timeline, min(p.f_seg), max(p.seg_size), 'full', null),
           api.wal_file_name(p.timeline, max(p.l_seg), max(p.seg_size), 'full', null),
           '0/0'::pg_lsn + min(p.f_seg)::numeric * max(p.seg_size), '0/0'::pg_lsn + (max(p.l_seg) + 1)::numeric * max(p.seg_size),
           sum(p.l_seg - p.f_seg + 1)::bigint, sum(p.bytes)::bigint, p.reason
      from parts p
     group by p.backup_server_id, p.system_identifier, p.timeline, p.action, p.reason, p.ord
    union all
    -- Marked earlier, their files not deleted yet (the agent finishes them at its next pass).
    select t.backup_server_id, t.system_identifier, null, 'deleting', null, null, null, t.below_lsn,
           (select count(*) from public.wal_object o
             where o.pgsql_node_id = p_node and o.backup_server_id = t.backup_server_id
               and o.system_identifier = t.system_identifier and o.kind in ('full', 'partial') and o.segno < t.below_segno),
           null,
           format('marked for deletion at %s (below the start of base backup %s): the agent deletes the files at its next maintenance pass',
                  t.marked_at, t.bck_id)
      from public.wal_retention t
     where t.pgsql_node_id = p_node
       and exists (select 1 from public.wal_object o
                    where o.pgsql_node_id = p_node and o.backup_server_id = t.backup_server_id
                      and o.system_identifier = t.system_identifier and o.kind in ('full', 'partial') and o.segno < t.below_segno)
     order by 1, 2, 7 nulls first, 3
$$;

-- The runs of one copy, incarnation and timeline no longer cover what is below p_below: runs
-- wholly below go, the run across it starts there. Runs only, never a scan of the ledger beyond
-- the cut part (what the straddling run loses).
create function api.wal_trim_runs(p_node bigint, p_server bigint, p_sysid numeric, p_timeline bigint, p_below bigint)
returns void language plpgsql as $$
begin
    perform pg_advisory_xact_lock(hashtextextended(format('wal_run %s %s %s %s', p_node, p_server, p_sysid, p_timeline), 0));
    delete from public.wal_run r
     where r.pgsql_node_id = p_node and r.backup_server_id = p_server and r.system_identifier = p_sysid
       and r.timeline = p_timeline and r.last_segno < p_below;
    update public.wal_run r
       set stored_bytes = r.stored_bytes - (select coalesce(sum(o.stored_size), 0) from public.wal_object o
                                             where o.pgsql_node_id = p_node and o.system_identifier = p_sysid
                                               and o.timeline = p_timeline and o.backup_server_id = p_server
                                               and o.kind in ('full', 'partial')
                                               and o.segno >= r.first_segno and o.segno < p_below)::bigint,
           segments = r.last_segno - p_below + 1,
           start_lsn = coalesce((select min(o.start_lsn) from public.wal_object o
                                  where o.pgsql_node_id = p_node and o.system_identifier = p_sysid and o.timeline = p_timeline
                                    and o.backup_server_id = p_server and o.kind in ('full', 'partial') and o.segno = p_below),
                                '0/0'::pg_lsn + p_below::numeric * r.seg_size),
           first_arrived = coalesce((select min(o.arrived_at) from public.wal_object o
                                      where o.pgsql_node_id = p_node and o.system_identifier = p_sysid and o.timeline = p_timeline
                                        and o.backup_server_id = p_server and o.kind in ('full', 'partial') and o.segno = p_below),
                                    r.first_arrived),
           first_segno = p_below
     where r.pgsql_node_id = p_node and r.backup_server_id = p_server and r.system_identifier = p_sysid
       and r.timeline = p_timeline and r.first_segno < p_below and r.last_segno >= p_below;
end $$;

-- Phase 1, for the agent of p_server: sets the tombstone of each of its copies of the node's
-- ledger to the floor as it is now (a stale plan can never delete more), and trims the runs at
-- once, so no recovery window or chain counts on a segment about to go. Returns the copies marked.
-- Only this server's agent lists, deletes and forgets below its tombstones, in one pass after
-- this: a tombstone lowered here never races with a deletion.
create function api.wal_retention_mark(p_server bigint, p_node bigint)
returns table (system_identifier numeric, below_segno bigint, below_lsn pg_lsn, bck_id bigint)
language plpgsql as $$
#variable_conflict use_column
declare
    f record;
    t bigint;
    v_old bigint;
begin
    perform api.acting_for(p_server);
    perform api.tag_maintenance('WAL retention');
    -- Two passes on the same node (a second agent process) take turns.
    perform pg_advisory_xact_lock(hashtext('pgbackman.wal_retention'), p_node::integer);
    for f in select * from api.wal_retention_floors(p_node) x
              where x.backup_server_id = p_server and x.held is null and x.floor_segno > 0 loop
        select w.below_segno into v_old from public.wal_retention w
         where w.pgsql_node_id = p_node and w.backup_server_id = p_server and w.system_identifier = f.system_identifier;
        insert into public.wal_retention as w (pgsql_node_id, backup_server_id, system_identifier, below_segno, below_lsn, bck_id)
        values (p_node, p_server, f.system_identifier, f.floor_segno, '0/0'::pg_lsn + f.floor_segno::numeric * f.seg_size, f.bck_id)
        on conflict (pgsql_node_id, backup_server_id, system_identifier) do update
            set below_segno = excluded.below_segno, below_lsn = excluded.below_lsn, bck_id = excluded.bck_id, marked_at = now()
          where w.below_segno <> excluded.below_segno;
        if v_old > f.floor_segno then
            -- Lowered: a kept base backup starts below the old tombstone (one on a timeline that
            -- branched off earlier, after a point-in-time recovery of the node). What is left
            -- between the two is kept again: the runs are rebuilt from the ledger (rare).
            for t in select distinct o.timeline from public.wal_object o
                      where o.pgsql_node_id = p_node and o.backup_server_id = p_server
                        and o.system_identifier = f.system_identifier and o.kind in ('full', 'partial') loop
                perform api.rebuild_wal_runs(p_node, p_server, f.system_identifier, t);
            end loop;
        end if;
        for t in select distinct r.timeline from public.wal_run r
                  where r.pgsql_node_id = p_node and r.backup_server_id = p_server
                    and r.system_identifier = f.system_identifier and r.first_segno < f.floor_segno loop
            perform api.wal_trim_runs(p_node, p_server, f.system_identifier, t, f.floor_segno);
        end loop;
        return query select w.system_identifier, w.below_segno, w.below_lsn, w.bck_id from public.wal_retention w
                      where w.pgsql_node_id = p_node and w.backup_server_id = p_server and w.system_identifier = f.system_identifier;
    end loop;
end $$;

-- Phase 2's list: up to p_limit objects of p_server below a tombstone (marked in an earlier
-- pass too: a crash in between is resumed), with their files.
create function api.wal_retention_marked(p_server bigint, p_limit integer)
returns table (wal_id bigint, pgsql_node_id bigint, stored_path text)
language sql stable as $$
    select api.acting_for(p_server);
    (select o.wal_id, o.pgsql_node_id, o.stored_path
       from public.wal_retention t
       join public.wal_object o on o.pgsql_node_id = t.pgsql_node_id and o.system_identifier = t.system_identifier
                               and o.backup_server_id = t.backup_server_id
      where t.backup_server_id = p_server and o.kind in ('full', 'partial') and o.segno < t.below_segno
      limit p_limit)
    union all
    (select o.wal_id, o.pgsql_node_id, o.stored_path
       from public.wal_retention t
       join public.wal_object o on o.pgsql_node_id = t.pgsql_node_id and o.system_identifier = t.system_identifier
                               and o.backup_server_id = t.backup_server_id
      where t.backup_server_id = p_server and o.kind = 'backup_history' and o.start_lsn < t.below_lsn
      limit p_limit)
$$;

-- Phase 3: the files of p_ids are gone; their rows go (only those still below a tombstone of
-- p_server). Returns how many.
create function api.wal_retention_forget(p_server bigint, p_ids bigint[]) returns integer
language plpgsql as $$
declare
    v integer;
begin
    perform api.acting_for(p_server);
    perform api.tag_maintenance('WAL retention');
    delete from public.wal_object o
     using public.wal_retention t
     where o.wal_id = any (p_ids) and o.backup_server_id = p_server
       and t.pgsql_node_id = o.pgsql_node_id and t.backup_server_id = o.backup_server_id
       and t.system_identifier = o.system_identifier
       and ((o.kind in ('full', 'partial') and o.segno < t.below_segno)
            or (o.kind = 'backup_history' and o.start_lsn < t.below_lsn));
    get diagnostics v = row_count;
    return v;
end $$;

-- The nodes whose WAL this server holds, for its maintenance pass.
create function api.wal_retention_nodes(p_server bigint) returns setof bigint
language sql stable as $$
    select api.acting_for(p_server);
    select distinct r.pgsql_node_id from public.wal_run r where r.backup_server_id = p_server
    union
    select t.pgsql_node_id from public.wal_retention t where t.backup_server_id = p_server
    order by 1
$$;
