-- WAL archives and the WAL ledger (issue 11; tables in migrations/V15__wal_ledger.sql).
-- After 80_triggers.sql: the triggers below use its audit and notification functions.
--
-- A WAL archive is registered here and run by the agent of its backup server; every object it
-- stores is reported with report_wal_objects (idempotent: the spool may replay a batch). The
-- ledger answers the recovery questions (sql/86_wal_windows.sql: wal_holes, recovery_window,
-- show_wal_segments, show_wal_archives).
-- Segment numbers are integers (XLogSegNo) and positions pg_lsn; file names are formatted here
-- for display only.

-- The segment that holds p_lsn.
create function api.wal_segno(p_lsn pg_lsn, p_seg_size integer) returns bigint
language sql immutable as $$
    select floor((p_lsn - '0/0'::pg_lsn) / p_seg_size)::bigint
$$;

-- The file name PostgreSQL gives an object (TTTTTTTTXXXXXXXXYYYYYYYY[.partial|.OFFSET.backup]
-- or TTTTTTTT.history).
create function api.wal_file_name(p_timeline bigint, p_segno bigint, p_seg_size integer, p_kind text,
                                  p_start_lsn pg_lsn)
returns text language sql immutable as $$
    select case when p_kind = 'history' then lpad(upper(to_hex(p_timeline)), 8, '0') || '.history'
           else lpad(upper(to_hex(p_timeline)), 8, '0')
                || lpad(upper(to_hex(p_segno / (4294967296 / p_seg_size))), 8, '0')
                || lpad(upper(to_hex(p_segno % (4294967296 / p_seg_size))), 8, '0')
                || case p_kind when 'partial' then '.partial'
                               when 'backup_history' then '.' || lpad(upper(to_hex(((p_start_lsn - '0/0'::pg_lsn) % p_seg_size)::bigint)), 8, '0') || '.backup'
                               else '' end
           end
$$;

-- `register_wal_archive SERVER NODE [--slot NAME] [--synchronous] [--max-lag SIZE]`. The slot
-- name defaults to pgbackman_<server host name> (one slot per archiving server on a node).
-- `--intake push` (V17): no slot and no receiver; the node's archive_command runs
-- `pgbackman-agent wal-push %p`, which delivers each file to this server's agent over TLS with the
-- credential create_wal_push_credential makes.
create function api.register_wal_archive(p_server text, p_node text, p_slot text, p_synchronous boolean,
                                         p_max_lag text, p_intake text default 'stream')
returns bigint language plpgsql as $$
declare
    v_server bigint := api.server_id(p_server);
    v_node bigint := api.node_id(p_node);
    v_slot text := nullif(btrim(coalesce(p_slot, '')), '');
    v_intake text := lower(coalesce(nullif(btrim(p_intake), ''), 'stream'));
    v_lag bigint;
    v_other record;
    v_id bigint;
begin
    if v_intake not in ('stream', 'push') then
        raise exception '--intake % is not an intake', api.q(p_intake)
            using errcode = '22023',
                  hint = 'stream: a replication slot and pg_receivewal run by the agent (the default); push: the node''s archive_command runs pgbackman-agent wal-push %p.';
    end if;
    if v_intake = 'push' and (v_slot is not null or coalesce(p_synchronous, false)) then
        raise exception '--intake push takes no %', case when v_slot is not null then '--slot' else '--synchronous' end
            using errcode = '22023',
                  hint = 'A push archive has no replication slot and no receiver: PostgreSQL''s archive_command delivers each completed file. Leave out --slot and --synchronous, or use --intake stream.';
    end if;
    if v_intake = 'stream' and v_slot is null then
        v_slot := left('pgbackman_' || regexp_replace(lower((select hostname from public.backup_server where server_id = v_server)),
                                                      '[^a-z0-9_]', '_', 'g'), 63);
    end if;
    if v_intake = 'stream' and (v_slot !~ '^[a-z0-9_]+$' or octet_length(v_slot) > 63) then
        raise exception 'replication slot name % is not valid', api.q(v_slot)
            using errcode = '22023',
                  hint = 'A slot name has 1 to 63 characters, each a lower-case letter, a digit or an underscore (PostgreSQL''s rule), e.g. --slot pgbackman_bs01.';
    end if;
    begin
        v_lag := pg_catalog.pg_size_bytes(coalesce(nullif(btrim(p_max_lag), ''), '64MB'));
    exception when invalid_parameter_value or numeric_value_out_of_range then
        raise exception '--max-lag % is not a size', api.q(p_max_lag)
            using errcode = '22023', hint = 'Give bytes or a size with a unit: 16777216, 64MB, 1GB.';
    end;
    if v_lag < 1048576 then
        raise exception '--max-lag % is below 1 MB', api.q(p_max_lag)
            using errcode = '22023', hint = 'A WAL segment is 16MB by default: a threshold below one segment alerts all the time; 64MB (four segments) is the default.';
    end if;
    select a.archive_id, a.status, a.slot_name, a.backup_server_id into v_other from public.wal_archive a
     where a.pgsql_node_id = v_node and a.status <> 'DELETED'
       and (a.backup_server_id = v_server or a.slot_name = v_slot)
     order by a.backup_server_id = v_server desc limit 1;
    if found and v_other.backup_server_id = v_server and v_other.status = 'ACTIVE' then
        raise exception 'PgSQL node % already has a WAL archive on backup server % (ArchiveID %, slot %)',
                        api.node_fqdn(v_node), api.server_fqdn(v_server), v_other.archive_id, v_other.slot_name
            using errcode = '23505', hint = 'show_wal_archives lists it; delete_wal_archive removes it.';
    elsif found and v_other.backup_server_id = v_server then
        raise exception 'the WAL archive of PgSQL node % on backup server % is being deleted (ArchiveID %, slot %)',
                        api.node_fqdn(v_node), api.server_fqdn(v_server), v_other.archive_id, v_other.slot_name
            using errcode = '55006',
                  hint = 'Its agent stops the receiver and drops the slot at its next round (show_wal_archives shows when); register again after that, or now with another --slot.';
    elsif found then
        raise exception 'slot % on PgSQL node % is already used by the WAL archive of backup server %',
                        v_slot, api.node_fqdn(v_node), api.server_fqdn(v_other.backup_server_id)
            using errcode = '23505', hint = 'Give this archive another slot name with --slot.';
    end if;
    insert into public.wal_archive (backup_server_id, pgsql_node_id, slot_name, synchronous, max_lag_bytes, intake)
    values (v_server, v_node, v_slot, coalesce(p_synchronous, false), v_lag, v_intake)
    returning archive_id into v_id;
    return v_id;
end $$;

-- `delete_wal_archive SERVER NODE`: the agent stops the receiver and drops the slot, then marks
-- it DELETED (wal_archive_slot_dropped). The ledger and the stored WAL stay: retention decides.
create function api.delete_wal_archive(p_server text, p_node text) returns bigint
language plpgsql as $$
declare
    v_server bigint := api.server_id(p_server);
    v_node bigint := api.node_id(p_node);
    v_id bigint;
begin
    -- A push archive has no slot to drop: it ends here (its agent stops accepting its pushes
    -- when it reads the list, at once through the notification).
    update public.wal_archive set status = case when intake = 'push' then 'DELETED' else 'DELETING' end,
                                  deleted = now(),
                                  receiver_state = case when intake = 'push' then 'deleted: pushes are refused' else receiver_state end
     where pgsql_node_id = v_node and backup_server_id = v_server and status = 'ACTIVE'
    returning archive_id into v_id;
    if v_id is null then
        if exists (select 1 from public.wal_archive where pgsql_node_id = v_node and backup_server_id = v_server
                      and status = 'DELETING') then
            raise exception 'the WAL archive of PgSQL node % on backup server % is already being deleted',
                            api.node_fqdn(v_node), api.server_fqdn(v_server)
                using errcode = '55006', hint = 'Its agent drops the slot at its next round; show_wal_archives shows when.';
        end if;
        raise exception 'PgSQL node % has no WAL archive on backup server %', api.node_fqdn(v_node), api.server_fqdn(v_server)
            using errcode = 'P0002', hint = 'show_wal_archives lists the WAL archives.';
    end if;
    return v_id;
end $$;

-- `create_wal_push_credential SERVER NODE --file PATH`: the shell makes a random token, writes it
-- to the file for the node host and hands only its SHA-256 here. p_replace: an existing
-- credential is replaced (the shell asks first); the old one stops working at once.
create function api.set_wal_push_credential(p_server text, p_node text, p_sha256 text, p_replace boolean)
returns bigint language plpgsql as $$
declare
    v_server bigint := api.server_id(p_server);
    v_node bigint := api.node_id(p_node);
    a public.wal_archive%rowtype;
begin
    if coalesce(p_sha256, '') !~ '^[0-9a-f]{64}$' then
        raise exception 'a WAL push credential is stored as a SHA-256 (64 hexadecimal digits)'
            using errcode = '22023', hint = 'This is a bug of the program that called it: create_wal_push_credential makes the token and its hash.';
    end if;
    select * into a from public.wal_archive
     where pgsql_node_id = v_node and backup_server_id = v_server and status = 'ACTIVE' for update;
    if not found then
        raise exception 'PgSQL node % has no WAL archive on backup server %', api.node_fqdn(v_node), api.server_fqdn(v_server)
            using errcode = 'P0002',
                  hint = format('Register one first: register_wal_archive %s %s --intake push.', api.server_fqdn(v_server), api.node_fqdn(v_node));
    end if;
    if a.intake <> 'push' then
        raise exception 'the WAL archive of PgSQL node % on backup server % receives through replication slot %, not by wal-push',
                        api.node_fqdn(v_node), api.server_fqdn(v_server), a.slot_name
            using errcode = '22023',
                  hint = 'A credential is for a push archive (register_wal_archive ... --intake push). To switch: delete_wal_archive, then register it again with --intake push.';
    end if;
    if a.push_token_sha256 is not null and not coalesce(p_replace, false) then
        raise exception 'the WAL archive of PgSQL node % on backup server % already has a credential (created %)',
                        api.node_fqdn(v_node), api.server_fqdn(v_server), to_char(a.push_token_created, 'YYYY-MM-DD HH24:MI:SS TZ')
            using errcode = '23505',
                  hint = 'Replacing it makes the node''s current credential file stop working: install the new file on the node host right after.';
    end if;
    update public.wal_archive set push_token_sha256 = p_sha256, push_token_created = now()
     where archive_id = a.archive_id;
    return a.archive_id;
end $$;

-- The agent dropped the slot of a deleted archive.
create function api.wal_archive_slot_dropped(p_server bigint, p_archive_id bigint) returns boolean
language plpgsql as $$
begin
    perform api.acting_for(p_server);
    update public.wal_archive set status = 'DELETED', receiver_state = 'stopped, slot dropped', state_reported_at = now()
     where archive_id = p_archive_id and backup_server_id = p_server and status = 'DELETING';
    return found;
end $$;

-- The agent's WAL archives: what it needs to run each receiver (and, for DELETING ones, to drop
-- the slot) without the catalog. The agent caches this list in its state directory.
create function api.agent_wal_archives(p_server bigint)
returns table (archive_id bigint, pgsql_node_id bigint, node_fqdn text, pgport integer, admin_user text,
               admin_dbname text, sslmode text, node_status text, node_backup_partition text,
               slot_name text, synchronous boolean, max_lag_bytes bigint, status text,
               intake text, push_token_sha256 text)
language plpgsql stable as $$
begin
    perform api.acting_for(p_server);
    return query
    select a.archive_id, a.pgsql_node_id, n.fqdn::text, n.pgport::integer, n.admin_user::text, n.admin_dbname::text,
           n.sslmode::text, n.status::text, api.node_config_value(n.node_id, 'pgnode_backup_partition')::text,
           coalesce(a.slot_name, ''), a.synchronous, a.max_lag_bytes, a.status, a.intake, a.push_token_sha256
      from public.wal_archive a
      join public.pgsql_node n on n.node_id = a.pgsql_node_id
     where a.backup_server_id = p_server and a.status <> 'DELETED'
     order by a.archive_id;
end $$;

-- The agent records the objects it stored. p_batch is a JSON array of objects with: node_id,
-- system_identifier (a string or a number), timeline, segno (not for history), kind, seg_size,
-- start_lsn, end_lsn (not for history), size, stored_size, sha256, stored_sha256, codec,
-- stored_path, arrival, header_check, header_detail, arrived_at, and for a history file
-- history: [{timeline, switch_lsn, reason}, ...] (its lines, parsed). One row per item:
--   recorded   a new ledger row (wal_id)
--   duplicate  the same content under the same key is already recorded: nothing changed
--   refused    different content under a key the ledger holds: not recorded, recorded aside
--              in wal_conflict and alerted once (WAL_CONFLICT); the agent keeps the file aside
-- Idempotent: replaying a batch from the spool gives duplicates (and no second alert).
create function api.report_wal_objects(p_server bigint, p_batch jsonb)
returns table (item integer, outcome text, wal_id bigint, detail text)
language plpgsql as $$
#variable_conflict use_column
declare
    v_x jsonb;
    v_i integer;
    o public.wal_object%rowtype;
    v_name text;
    v_existing public.wal_object%rowtype;
    v_conflict bigint;
    v_new boolean;
    v_id bigint;
    v_lines jsonb;
    v_n integer;
begin
    perform api.acting_for(p_server);
    if p_batch is null or jsonb_typeof(p_batch) <> 'array' then
        raise exception 'a WAL object batch is a JSON array, not %', coalesce(jsonb_typeof(p_batch), 'NULL')
            using errcode = '22023', hint = 'This is a bug of the agent that sent it: report it with the agent''s log.';
    end if;
    for v_x, v_i in select e, ord::integer from jsonb_array_elements(p_batch) with ordinality t(e, ord) loop
        begin
            o.pgsql_node_id := (v_x ->> 'node_id')::bigint;
            o.backup_server_id := p_server;
            o.system_identifier := (v_x ->> 'system_identifier')::numeric;
            o.timeline := (v_x ->> 'timeline')::bigint;
            o.segno := (v_x ->> 'segno')::bigint;
            o.kind := v_x ->> 'kind';
            o.seg_size := (v_x ->> 'seg_size')::integer;
            o.start_lsn := (v_x ->> 'start_lsn')::pg_lsn;
            o.end_lsn := (v_x ->> 'end_lsn')::pg_lsn;
            o.size := (v_x ->> 'size')::bigint;
            o.stored_size := (v_x ->> 'stored_size')::bigint;
            o.sha256 := lower(v_x ->> 'sha256');
            o.stored_sha256 := lower(v_x ->> 'stored_sha256');
            o.codec := v_x ->> 'codec';
            o.stored_path := v_x ->> 'stored_path';
            o.arrival := v_x ->> 'arrival';
            o.header_check := coalesce(v_x ->> 'header_check', 'NOT_CHECKED');
            o.header_detail := v_x ->> 'header_detail';
            o.arrived_at := coalesce((v_x ->> 'arrived_at')::timestamptz, now());
        exception when data_exception then
            raise exception 'WAL object % of the batch is not valid: %', v_i, sqlerrm
                using errcode = '22023', detail = left(v_x::text, 1000),
                      hint = 'This is a bug of the agent that sent it: report it with the agent''s log.';
        end;
        if o.pgsql_node_id is null or not exists (select 1 from public.wal_archive a
                                                   where a.pgsql_node_id = o.pgsql_node_id and a.backup_server_id = p_server) then
            raise exception 'PgSQL node % has no WAL archive on backup server %',
                            coalesce(api.node_fqdn(o.pgsql_node_id), o.pgsql_node_id::text, 'NULL'), api.server_fqdn(p_server)
                using errcode = 'P0002',
                      hint = 'An agent records WAL only for the archives of its server: register_wal_archive SERVER NODE (show_wal_archives lists them).';
        end if;
        v_name := case when o.kind in ('full', 'partial', 'history', 'backup_history') and o.seg_size > 0
                            and (o.kind = 'history' or o.segno is not null)
                       then api.wal_file_name(o.timeline, o.segno, o.seg_size, o.kind, o.start_lsn)
                       else format('item %s', v_i) end;
        -- One key at a time: a concurrent report of the same object waits here.
        perform pg_advisory_xact_lock(hashtextextended(format('wal %s %s %s %s %s %s', o.pgsql_node_id, o.system_identifier,
                                                              o.timeline, o.segno, o.kind, o.start_lsn), 0));
        -- The same key on any backup server: another content is a conflict wherever it is.
        -- (Three forms, each matching one of the key indexes.)
        if o.kind = 'history' then
            select w.* into v_existing from public.wal_object w
             where w.pgsql_node_id = o.pgsql_node_id and w.system_identifier = o.system_identifier
               and w.timeline = o.timeline and w.kind = 'history'
             order by w.sha256 = o.sha256, w.backup_server_id = p_server desc limit 1;
        elsif o.kind = 'backup_history' then
            select w.* into v_existing from public.wal_object w
             where w.pgsql_node_id = o.pgsql_node_id and w.system_identifier = o.system_identifier
               and w.timeline = o.timeline and w.kind = 'backup_history' and w.start_lsn = o.start_lsn
             order by w.sha256 = o.sha256, w.backup_server_id = p_server desc limit 1;
        else
            select w.* into v_existing from public.wal_object w
             where w.pgsql_node_id = o.pgsql_node_id and w.system_identifier = o.system_identifier
               and w.timeline = o.timeline and w.segno = o.segno and w.kind = o.kind and w.kind in ('full', 'partial')
             order by w.sha256 = o.sha256, w.backup_server_id = p_server desc limit 1;
        end if;
        if found and v_existing.sha256 <> o.sha256 then
            insert into public.wal_conflict as c (wal_id, backup_server_id, sha256, size, stored_path, arrival, reported)
            values (v_existing.wal_id, p_server, o.sha256, o.size, o.stored_path, o.arrival, v_x)
            on conflict (wal_id, backup_server_id, sha256)
            do update set last_seen = now(), times_seen = c.times_seen + 1, stored_path = excluded.stored_path
            returning c.conflict_id, (c.xmax = 0) into v_conflict, v_new;
            if v_new then
                insert into public.alert (alert_type, backup_server_id, pgsql_node_id, ref_id, execution_status, error_message, sendto)
                values ('WAL_CONFLICT', p_server, o.pgsql_node_id, v_conflict, 'REFUSED',
                        format('WAL file %s of PgSQL node %s (system identifier %s) arrived on backup server %s by %s with other content '
                               || '(sha256 %s) than the archived one (sha256 %s, on %s at %s). It was refused and kept aside at %s; '
                               || 'nothing was overwritten. Another cluster may be archiving as this node (a clone or a restored copy '
                               || 'with archive_command still set): find it, stop it, then compare the two files before removing the refused one.',
                               v_name, api.node_fqdn(o.pgsql_node_id), o.system_identifier, api.server_fqdn(p_server), o.arrival,
                               left(o.sha256, 16), left(v_existing.sha256, 16), api.server_fqdn(v_existing.backup_server_id),
                               v_existing.stored_path, o.stored_path),
                        coalesce(api.node_config_value(o.pgsql_node_id, 'logs_email'), ''));
            end if;
            return query select v_i, 'refused'::text, v_existing.wal_id,
                                format('%s: other content than the archived one (conflict %s)', v_name, v_conflict);
            continue;
        end if;
        if found and v_existing.backup_server_id = p_server then
            return query select v_i, 'duplicate'::text, v_existing.wal_id, v_name;
            continue;
        end if;
        begin
            insert into public.wal_object (pgsql_node_id, backup_server_id, system_identifier, timeline, segno, kind, seg_size,
                                           start_lsn, end_lsn, size, stored_size, sha256, stored_sha256, codec, stored_path,
                                           arrival, header_check, header_detail, arrived_at)
            values (o.pgsql_node_id, o.backup_server_id, o.system_identifier, o.timeline, o.segno, o.kind, o.seg_size,
                    o.start_lsn, o.end_lsn, o.size, o.stored_size, o.sha256, o.stored_sha256, o.codec, o.stored_path,
                    o.arrival, o.header_check, o.header_detail, o.arrived_at)
            returning wal_id into v_id;
        exception when check_violation or not_null_violation then
            raise exception 'WAL object % of the batch (%) is not valid: %', v_i, v_name,
                            case when sqlerrm ~ 'system_identifier' then 'system_identifier must be a 64-bit unsigned number'
                                 when sqlerrm ~ 'timeline' then 'timeline must be between 1 and 4294967295'
                                 when sqlerrm ~ 'seg_size' then 'seg_size must be a power of two from 1MB to 1GB'
                                 when sqlerrm ~ 'sha256' then 'sha256 and stored_sha256 must be 64 hexadecimal digits'
                                 when sqlerrm ~ 'kind' then 'kind must be full, partial, history or backup_history'
                                 when sqlerrm ~ 'arrival' then 'arrival must be stream, archive_command or backfill'
                                 when sqlerrm ~ 'header_check' then 'header_check must be PASSED, FAILED or NOT_CHECKED'
                                 when sqlerrm ~ 'codec' then 'codec must be a short lower-case name such as zstd or none'
                                 when sqlerrm ~ 'check' then 'segno and start/end LSNs are required (start <= end), except for a history file, which has none'
                                 else 'a required field is missing' end
                using errcode = '22023', detail = left(v_x::text, 1000),
                      hint = 'This is a bug of the agent that sent it: report it with the agent''s log.';
        end;
        if o.kind = 'history' and jsonb_typeof(v_x -> 'history') = 'array' then
            -- Line i says: timeline tli_i ended at switch_lsn_i; the next line's timeline (or
            -- this file's, for the last line) began there.
            v_lines := v_x -> 'history';
            v_n := jsonb_array_length(v_lines);
            insert into public.timeline_history (pgsql_node_id, system_identifier, timeline, parent, switch_lsn, reason)
            select o.pgsql_node_id, o.system_identifier,
                   case when l.ord < v_n then (v_lines -> l.ord::integer ->> 'timeline')::bigint else o.timeline end,
                   (l.e ->> 'timeline')::bigint, (l.e ->> 'switch_lsn')::pg_lsn, coalesce(l.e ->> 'reason', '')
              from jsonb_array_elements(v_lines) with ordinality l(e, ord)
            on conflict do nothing;
        end if;
        return query select v_i, 'recorded'::text, v_id, v_name;
    end loop;
end $$;

-- wal_run upkeep. Inserted segments merge with the runs they touch (an advisory lock per copy
-- and timeline serialises two reports; each statement then sees the other's committed runs).
create function api.wal_runs_after_insert() returns trigger
language plpgsql as $$
declare
    k record;
begin
    for k in select distinct n.pgsql_node_id, n.backup_server_id, n.system_identifier, n.timeline
               from new_objects n where n.kind in ('full', 'partial') order by 1, 2, 3, 4 loop
        perform pg_advisory_xact_lock(hashtextextended(format('wal_run %s %s %s %s', k.pgsql_node_id, k.backup_server_id,
                                                              k.system_identifier, k.timeline), 0));
        with new_segs as (
            select n.segno, n.seg_size, n.start_lsn, n.end_lsn, n.stored_size, n.arrived_at from new_objects n
             where n.kind in ('full', 'partial') and n.pgsql_node_id = k.pgsql_node_id
               and n.backup_server_id = k.backup_server_id and n.system_identifier = k.system_identifier
               and n.timeline = k.timeline
        ), islands as (
            select max(seg_size) as z, min(segno) as f, max(segno) as l, min(start_lsn) as s, max(end_lsn) as e,
                   sum(stored_size) as b, min(arrived_at) as fa, max(arrived_at) as la
              from (select d.*, d.segno - dense_rank() over (order by d.segno) as g from new_segs d) x
             group by g
        ), touching as (
            delete from public.wal_run r
             using (select distinct r2.first_segno from public.wal_run r2, islands i
                     where r2.pgsql_node_id = k.pgsql_node_id and r2.backup_server_id = k.backup_server_id
                       and r2.system_identifier = k.system_identifier and r2.timeline = k.timeline
                       and r2.first_segno <= i.l + 1 and r2.last_segno >= i.f - 1) t
             where r.pgsql_node_id = k.pgsql_node_id and r.backup_server_id = k.backup_server_id
               and r.system_identifier = k.system_identifier and r.timeline = k.timeline and r.first_segno = t.first_segno
            returning r.seg_size as z, r.first_segno as f, r.last_segno as l, r.start_lsn as s, r.end_lsn as e, r.stored_bytes as b,
                      r.first_arrived as fa, r.last_arrived as la
        ), ivals as (
            select * from islands union all select * from touching
        ), grouped as (
            select v.*, sum(case when v.f > coalesce(v.prev_l, v.f - 2) + 1 then 1 else 0 end) over (order by v.f, v.l) as grp
              from (select i.*, max(i.l) over (order by i.f, i.l rows between unbounded preceding and 1 preceding) as prev_l
                      from ivals i) v
        )
        insert into public.wal_run (pgsql_node_id, backup_server_id, system_identifier, timeline, seg_size, first_segno,
                                    last_segno, segments, stored_bytes, start_lsn, end_lsn, first_arrived, last_arrived)
        select k.pgsql_node_id, k.backup_server_id, k.system_identifier, k.timeline, max(z), min(f), max(l), max(l) - min(f) + 1,
               sum(b), min(s), max(e), min(fa), max(la)
          from grouped group by grp;
    end loop;
    return null;
end $$;

-- Rebuilds the runs of one copy and timeline from the ledger (after deletions; also a repair).
create function api.rebuild_wal_runs(p_node bigint, p_server bigint, p_sysid numeric, p_timeline bigint) returns integer
language plpgsql as $$
declare
    v integer;
begin
    perform pg_advisory_xact_lock(hashtextextended(format('wal_run %s %s %s %s', p_node, p_server, p_sysid, p_timeline), 0));
    delete from public.wal_run where pgsql_node_id = p_node and backup_server_id = p_server
                                 and system_identifier = p_sysid and timeline = p_timeline;
    insert into public.wal_run (pgsql_node_id, backup_server_id, system_identifier, timeline, seg_size, first_segno,
                                last_segno, segments, stored_bytes, start_lsn, end_lsn, first_arrived, last_arrived)
    select p_node, p_server, p_sysid, p_timeline, max(seg_size), min(segno), max(segno), max(segno) - min(segno) + 1, sum(stored_size),
           min(start_lsn), max(end_lsn), min(arrived_at), max(arrived_at)
      from (select w.*, w.segno - dense_rank() over (order by w.segno) as g from public.wal_object w
             where w.pgsql_node_id = p_node and w.backup_server_id = p_server and w.system_identifier = p_sysid
               and w.timeline = p_timeline and w.kind in ('full', 'partial')) x
     group by g;
    get diagnostics v = row_count;
    return v;
end $$;

-- Deletions below a WAL retention tombstone (sql/88_wal_retention.sql) only trim the runs at it:
-- rebuilding from a year of segments at every batch the agent forgets would not scale.
create function api.wal_runs_after_delete() returns trigger
language plpgsql as $$
declare
    k record;
    v_below bigint;
begin
    for k in select distinct o.pgsql_node_id, o.backup_server_id, o.system_identifier, o.timeline
               from old_objects o where o.kind in ('full', 'partial') order by 1, 2, 3, 4 loop
        select t.below_segno into v_below from public.wal_retention t
         where t.pgsql_node_id = k.pgsql_node_id and t.backup_server_id = k.backup_server_id
           and t.system_identifier = k.system_identifier;
        if v_below is not null
           and not exists (select 1 from old_objects o
                            where o.pgsql_node_id = k.pgsql_node_id and o.backup_server_id = k.backup_server_id
                              and o.system_identifier = k.system_identifier and o.timeline = k.timeline
                              and o.kind in ('full', 'partial') and o.segno >= v_below) then
            perform api.wal_trim_runs(k.pgsql_node_id, k.backup_server_id, k.system_identifier, k.timeline, v_below);
        else
            perform api.rebuild_wal_runs(k.pgsql_node_id, k.backup_server_id, k.system_identifier, k.timeline);
        end if;
    end loop;
    return null;
end $$;

create trigger wal_runs after insert on public.wal_object referencing new table as new_objects
    for each statement execute function api.wal_runs_after_insert();
create trigger wal_runs_delete after delete on public.wal_object referencing old table as old_objects
    for each statement execute function api.wal_runs_after_delete();

-- The agent's view of an archive: receiver state (e.g. "streaming", "restarting in 30 s: <why>"),
-- the slot's wal_status and retained bytes on the node, and the node's current WAL position (the
-- lag is that minus the ledger's end). Not audited; a DELETED archive takes no report.
create function api.report_wal_archive_state(p_server bigint, p_archive_id bigint, p_receiver_state text,
                                             p_receiver_error text, p_slot_wal_status text,
                                             p_slot_retained_bytes bigint, p_node_lsn pg_lsn)
returns boolean language plpgsql as $$
begin
    perform api.acting_for(p_server);
    update public.wal_archive
       set receiver_state = left(p_receiver_state, 200), receiver_error = left(p_receiver_error, 2000),
           slot_wal_status = left(p_slot_wal_status, 32), slot_retained_bytes = p_slot_retained_bytes,
           node_lsn = p_node_lsn, state_reported_at = now()
     where archive_id = p_archive_id and backup_server_id = p_server and status <> 'DELETED';
    return found;
end $$;

-- A node or a backup server with a live WAL archive is not deleted (its slot would stay on the
-- node, holding WAL); once the archive is DELETED the ledger of a deleted node goes with it.
create function api.wal_before_owner_delete() returns trigger
language plpgsql as $$
declare
    v_archive record;
begin
    if tg_table_name = 'pgsql_node' then
        select a.* into v_archive from public.wal_archive a where a.pgsql_node_id = old.node_id and a.status <> 'DELETED' limit 1;
    else
        select a.* into v_archive from public.wal_archive a where a.backup_server_id = old.server_id and a.status <> 'DELETED' limit 1;
    end if;
    if found then
        raise exception '% % still has a WAL archive (ArchiveID %, node %, backup server %, %)',
                        case when tg_table_name = 'pgsql_node' then 'PgSQL node' else 'backup server' end, old.fqdn,
                        v_archive.archive_id, api.node_fqdn(v_archive.pgsql_node_id), api.server_fqdn(v_archive.backup_server_id),
                        v_archive.status
            using errcode = '23503',
                  hint = case when v_archive.status = 'ACTIVE'
                              then format('Delete it first: delete_wal_archive %s %s%s.',
                                          api.server_fqdn(v_archive.backup_server_id), api.node_fqdn(v_archive.pgsql_node_id),
                                          case when v_archive.slot_name is not null
                                               then format(' (its agent then drops slot %s)', v_archive.slot_name) else '' end)
                              else format('Its agent has not dropped slot %s yet; show_wal_archives shows when it has.', v_archive.slot_name) end;
    end if;
    if tg_table_name = 'pgsql_node' then
        delete from public.wal_object where pgsql_node_id = old.node_id;
        delete from public.wal_run where pgsql_node_id = old.node_id;
        delete from public.timeline_history where pgsql_node_id = old.node_id;
        delete from public.wal_archive where pgsql_node_id = old.node_id;
    else
        delete from public.wal_conflict where backup_server_id = old.server_id;
        delete from public.wal_object where backup_server_id = old.server_id;
        delete from public.wal_run where backup_server_id = old.server_id;
        delete from public.wal_archive where backup_server_id = old.server_id;
    end if;
    return old;
end $$;

create trigger wal_before_delete before delete on public.pgsql_node
    for each row execute function api.wal_before_owner_delete();
create trigger wal_before_delete before delete on public.backup_server
    for each row execute function api.wal_before_owner_delete();

-- Changes of an archive reach its agent at once; administrative changes are audited (the
-- agent's state reports are not: they would flood the audit log).
create trigger notify_owner after insert or update or delete on public.wal_archive
    for each row execute function api.notify_owner();
create trigger audit after insert or delete or update of status, slot_name, synchronous, max_lag_bytes, push_token_created
    on public.wal_archive for each row execute function api.audit_row();
