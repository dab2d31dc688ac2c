-- WAL files lost on disk (issue 11): the agent's maintenance pass lists the files it stores for
-- each of its WAL archives and reports them here, compactly; the ledger rows of files that are
-- gone are removed (so wal_run splits and the hole shows in wal_holes / WAL_HOLE) and each is
-- recorded as a MISSING finding (show_reconciliation). Nothing on disk is touched.
--
-- p_present: a JSON array, one item per incarnation and timeline directory found:
--   {"sysid": "7300…", "timeline": 1, "ranges": [[first, last], …], "names": ["00000002.history", …]}
-- ranges are of segment files as the 64-bit number of their name's last 16 hex digits
-- (log * 2^32 + seg), inclusive, so the agent needs no segment size; they break at a log
-- boundary at most (every 4 GB of WAL), a few thousand items for a year of a busy node. names
-- are the other stored files (.history, .partial, .backup), without the codec suffix.
-- Rows recorded at or after p_scan_started are kept (the listing may have run before their file
-- was renamed in); rows below this server's WAL retention tombstone are ignored (retention
-- deletes those on purpose), and so are rows whose stored path is not under p_root, the directory
-- listed (the node's partition moved: the older files are still where they were). Compared through wal_run (a handful of rows) and multiranges, so
-- only the rows in a gap are read. Returns the rows removed.
create function api.reconcile_wal_files(p_server bigint, p_node bigint, p_root text, p_scan_started timestamptz,
                                        p_present jsonb)
returns table (wal_id bigint, stored_path text, file_name text, detail text)
language plpgsql as $$
declare
    v_rows bigint[];
begin
    perform api.acting_for(p_server);
    perform api.tag_maintenance('WAL reconciliation');
    create temporary table if not exists pg_temp.wal_lost (wal_id bigint, name text) on commit drop;
    delete from pg_temp.wal_lost;
    with dirs as (
        select (d->>'sysid')::numeric as sysid, (d->>'timeline')::bigint as tl, d
          from jsonb_array_elements(coalesce(p_present, '[]')) d
    ),
    copies as (
        select r.system_identifier as sysid, r.timeline as tl, max(r.seg_size) as seg_size,
               range_agg(int8range(r.first_segno, r.last_segno, '[]')) as held
          from public.wal_run r
         where r.pgsql_node_id = p_node and r.backup_server_id = p_server
         group by 1, 2
    ),
    present as (
        select c.sysid, c.tl,
               coalesce((select range_agg(int8range(
                                   (x.a >> 32) * (4294967296 / c.seg_size) + (x.a & 4294967295),
                                   (x.b >> 32) * (4294967296 / c.seg_size) + (x.b & 4294967295), '[]'))
                           from dirs d, jsonb_array_elements(d.d->'ranges') e,
                                lateral (select (e->>0)::bigint as a, (e->>1)::bigint as b) x
                          where d.sysid = c.sysid and d.tl = c.tl), '{}'::int8multirange) as have,
               c.held
          from copies c
    ),
    gaps as (
        select p.sysid, p.tl, unnest(p.held - p.have) as g from present p
    )
    insert into pg_temp.wal_lost
    select o.wal_id, api.wal_file_name(o.timeline, o.segno, o.seg_size, o.kind, o.start_lsn)
      from gaps
      join public.wal_object o
        on o.pgsql_node_id = p_node and o.system_identifier = gaps.sysid and o.timeline = gaps.tl
       and o.kind = 'full' and o.backup_server_id = p_server
       and o.segno >= lower(gaps.g) and o.segno < upper(gaps.g);
    -- The few other objects (history, partial, backup history files), by name; one kind at a
    -- time so that each is read through its own index, never the node's segments.
    insert into pg_temp.wal_lost
    select o.wal_id, n.name
      from (select o.* from public.wal_object o
             where o.pgsql_node_id = p_node and o.backup_server_id = p_server and o.kind = 'history'
            union all
            select o.* from public.wal_object o
             where o.pgsql_node_id = p_node and o.backup_server_id = p_server and o.kind = 'backup_history'
            union all
            select o.* from public.wal_object o
             where o.pgsql_node_id = p_node and o.backup_server_id = p_server and o.kind in ('full', 'partial')
               and o.kind = 'partial') o
      cross join lateral (select api.wal_file_name(o.timeline, o.segno, o.seg_size, o.kind, o.start_lsn) as name) n
     where not exists (select 1 from jsonb_array_elements(coalesce(p_present, '[]')) d
                        where (d->>'sysid')::numeric = o.system_identifier and (d->>'timeline')::bigint = o.timeline
                          and d->'names' ? n.name);
    select array_agg(l.wal_id) into v_rows
      from pg_temp.wal_lost l
      join public.wal_object o on o.wal_id = l.wal_id
      left join public.wal_retention t
        on t.pgsql_node_id = o.pgsql_node_id and t.backup_server_id = o.backup_server_id
       and t.system_identifier = o.system_identifier
     where o.recorded_at < p_scan_started
       and left(o.stored_path, length(p_root) + 1) = p_root || '/'
       and not (t.below_segno is not null and o.kind in ('full', 'partial') and o.segno < t.below_segno)
       and not (t.below_lsn is not null and o.kind = 'backup_history' and o.start_lsn < t.below_lsn);
    -- A file found lost earlier and recorded again since (delivered anew): settled.
    delete from public.reconciliation r
     where r.backup_server_id = p_server and r.pgsql_node_id = p_node and r.kind = 'MISSING'
       and exists (select 1 from public.wal_object o where o.backup_server_id = p_server and o.stored_path = r.path);
    if v_rows is null then
        return;
    end if;
    create temporary table if not exists pg_temp.wal_gone (wal_id bigint, stored_path text, name text, detail text)
        on commit drop;
    delete from pg_temp.wal_gone;
    with gone as (
        delete from public.wal_object o where o.wal_id = any (v_rows)
        returning o.wal_id, o.stored_path, o.system_identifier, o.timeline, o.kind, o.recorded_at
    )
    insert into pg_temp.wal_gone
    select g.wal_id, g.stored_path, l.name,
           format('WAL file %s (system identifier %s, timeline %s) of NodeID %s was recorded in the ledger at %s but is no '
                  'longer on this backup server (%s): its row was removed, so the recovery window of the node has a hole '
                  'there (show_recovery_window <node> --holes). Restore the file from another copy if there is one, '
                  'or take a new base backup (register_backup_definition … --code BASEBACKUP) so that recovery does '
                  'not need it',
                  l.name, g.system_identifier, g.timeline, p_node, g.recorded_at, g.stored_path)
      from gone g join pg_temp.wal_lost l on l.wal_id = g.wal_id;
    -- Findings kept across passes (record_reconciliation leaves WAL files alone): the row is
    -- gone, so nothing would find the loss again. One MAINTENANCE alert per file.
    insert into public.alert (alert_type, backup_server_id, pgsql_node_id, execution_status, error_message, sendto)
    select 'MAINTENANCE', p_server, p_node, 'MISSING', g.detail, coalesce(api.node_config_value(p_node, 'logs_email'), '')
      from pg_temp.wal_gone g
     where not exists (select 1 from public.reconciliation r
                        where r.backup_server_id = p_server and r.kind = 'MISSING' and r.path = g.stored_path);
    insert into public.reconciliation as r (backup_server_id, kind, path, pgsql_node_id, detail)
    select p_server, 'MISSING', g.stored_path, p_node, g.detail from pg_temp.wal_gone g
    on conflict (backup_server_id, kind, path) do update set last_seen = now(), detail = excluded.detail;
    return query select g.wal_id, g.stored_path, g.name, g.detail from pg_temp.wal_gone g order by g.name;
end $$;
