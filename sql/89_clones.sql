-- Clones (issue 12; table clone in migrations/V21__pitr.sql): a point-in-time restore into a new
-- instance on the backup server holding the base backup. register_pitr_restore plans it
-- (sql/89_pitr.sql) and, unless it is a dry run, queues a CLONE job with its clone row in one
-- transaction; the agent asks for the plan again (agent_clone_job), says where it works
-- (clone_restoring) and reports once (report_clone, also reached through report_backup).

-- Ports given to clones when none is asked for: the lowest free one of this range.
create function api.clone_port_range() returns int4range
language sql immutable as $$ select int4range(55432, 55632) $$;

-- register_pitr_restore <BckID|latest> --clone NAME [--port P] [target] [--timeline] [--target-action] [--dry-run].
create function api.register_pitr_restore(p_bck text, p_node text, p_kind text, p_value text, p_timeline text,
                                          p_action text, p_clone text, p_port integer, p_expires text, p_dry_run boolean)
returns jsonb language plpgsql as $$
declare
    v_bck bigint;
    v_node bigint;
    v_plan jsonb;
    -- promote by default: a paused clone keeps the locks of the transactions in flight at the
    -- target (a DROP TABLE not yet committed blocks every read of that table).
    v_action text := lower(btrim(coalesce(nullif(btrim(p_action), ''), 'promote')));
    v_name text := p_clone;
    v_port integer := p_port;
    v_server bigint;
    v_job bigint;
    v_clone bigint;
    v_expires interval;
begin
    if lower(btrim(coalesce(p_bck, ''))) in ('latest', '') then
        if nullif(btrim(p_node), '') is null then
            raise exception 'latest needs the PgSQL node'
                using errcode = '22023', hint = 'Give --node NODE with latest, or a BckID (show_restore_points NODE lists them).';
        end if;
        v_node := api.node_id(p_node);
    else
        if btrim(p_bck) !~ '^[0-9]{1,18}$' then
            raise exception 'base backup % is neither a BckID nor latest', api.q(p_bck)
                using errcode = '22023', hint = 'Give a BckID from show_restore_points NODE, or latest --node NODE.';
        end if;
        v_bck := btrim(p_bck)::bigint;
        select b.pgsql_node_id into v_node from public.base_backup b where b.bck_id = v_bck;
        if not found then
            raise exception 'BckID % is not a base backup', v_bck
                using errcode = 'P0002', hint = 'show_restore_points NODE lists the base backups of a node (show_backup_catalog lists every set).';
        end if;
        if nullif(btrim(p_node), '') is not null and api.node_id(p_node) <> v_node then
            raise exception 'BckID % is a base backup of PgSQL node %, not of %', v_bck, api.node_fqdn(v_node), api.q(p_node)
                using errcode = '22023', hint = 'Leave --node out with a BckID.';
        end if;
    end if;
    perform api.check_choice('target action', v_action, array['promote', 'pause', 'shutdown']);
    -- Hostile input: the name becomes a directory and a cluster_name. No quoting is attempted.
    if v_name is null or v_name !~ '^[a-z][a-z0-9_-]{0,39}$' then
        raise exception 'clone name % is not allowed', api.q(v_name)
            using errcode = '22023',
                  hint = 'Use 1 to 40 characters: lower-case ASCII letters, digits, - and _, starting with a letter (e.g. before-drop).';
    end if;
    if v_port is not null and (v_port < 1024 or v_port > 65535) then
        raise exception 'port % is outside 1024 to 65535', v_port
            using errcode = '22023', hint = 'Leave --port out to take a free one from 55432 on.';
    end if;
    if nullif(btrim(p_expires), '') is not null then
        v_expires := api.check_interval('clone expiry', p_expires);
    end if;
    v_plan := api.pitr_plan(v_node, v_bck, p_kind, p_value, p_timeline);
    v_server := (v_plan ->> 'backup_server_id')::bigint;
    -- The name and the port are the server's: one live clone each.
    perform pg_advisory_xact_lock(hashtext('pgbackman.clone'), v_server::integer);
    if exists (select 1 from public.clone c where c.backup_server_id = v_server and c.name = v_name
                                              and c.state not in ('DELETED', 'FAILED')) then
        raise exception 'backup server % already has a clone named %', api.server_fqdn(v_server), v_name
            using errcode = '23505', hint = 'Give another name, or delete_clone the old one first (show_clones lists them).';
    end if;
    if (select count(*) from public.clone c where c.backup_server_id = v_server and c.state not in ('DELETED', 'FAILED'))
       >= api.server_config_value(v_server, 'max_clones')::integer then
        raise exception 'backup server % holds % clone(s), its limit (max_clones)', api.server_fqdn(v_server),
                        api.server_config_value(v_server, 'max_clones')
            using errcode = '53400',
                  hint = format('delete_clone the clones no longer needed (show_clones), or update_backup_server_config %s max_clones=N.',
                                api.server_fqdn(v_server));
    end if;
    if v_port is null then
        select p into v_port from generate_series(lower(api.clone_port_range()), upper(api.clone_port_range()) - 1) p
         where not exists (select 1 from public.clone c where c.backup_server_id = v_server and c.port = p
                                                          and c.state not in ('DELETED', 'FAILED'))
         order by p limit 1;
        if v_port is null then
            raise exception 'no free clone port left on backup server %', api.server_fqdn(v_server)
                using errcode = '53400', hint = 'delete_clone the clones no longer needed, or give --port P.';
        end if;
    elsif exists (select 1 from public.clone c where c.backup_server_id = v_server and c.port = v_port
                                                 and c.state not in ('DELETED', 'FAILED')) then
        raise exception 'port % is taken by another clone on backup server %', v_port, api.server_fqdn(v_server)
            using errcode = '23505', hint = 'Leave --port out to take a free one.';
    end if;
    v_plan := v_plan || jsonb_build_object('clone', v_name, 'port', v_port, 'target_action', v_action,
                                           'expires', case when v_expires is not null then now() + v_expires end);
    if coalesce(p_dry_run, false) then
        return v_plan || '{"dry_run": true}';
    end if;
    insert into public.job (kind, backup_server_id, pgsql_node_id, bck_id)
    values ('CLONE', v_server, v_node, (v_plan ->> 'bck_id')::bigint)
    returning job_id into v_job;
    insert into public.clone (backup_server_id, pgsql_node_id, bck_id, job_id, name, port, target, plan, expires_at)
    values (v_server, v_node, (v_plan ->> 'bck_id')::bigint, v_job, v_name, v_port,
            jsonb_build_object('kind', v_plan ->> 'target_kind', 'value', v_plan ->> 'target_value',
                               'timeline', (v_plan ->> 'timeline')::bigint, 'timeline_request', v_plan ->> 'timeline_request',
                               'action', v_action),
            v_plan - 'wal' - 'history', now() + v_expires)
    returning clone_id into v_clone;
    return (v_plan - 'wal' - 'history') || jsonb_build_object('clone_id', v_clone, 'job_id', v_job);
end $$;

-- stop_clone / start_clone / delete_clone CloneID: a CLONE job for the agent of the clone's
-- server. A FAILED clone has nothing on disk: deleting it needs no job.
create function api.clone_operation(p_clone bigint, p_op text)
returns bigint language plpgsql as $$
declare
    c public.clone%rowtype;
    v_job bigint;
    v_open bigint;
begin
    perform api.check_choice('clone operation', p_op, array['stop', 'start', 'delete']);
    select * into c from public.clone where clone_id = p_clone for update;
    if not found or c.state = 'DELETED' then
        raise exception 'clone % does not exist', p_clone
            using errcode = 'P0002', hint = 'show_clones lists the clones.';
    end if;
    select j.job_id into v_open from public.job j
     where j.state in ('QUEUED', 'RUNNING')
       and (j.job_id = c.job_id or j.job_id in (select x.job_id from public.clone_op x where x.clone_id = p_clone))
     limit 1;
    if v_open is not null then
        raise exception 'clone % (%) has job % still open', p_clone, c.name, v_open
            using errcode = '55000', hint = format('Wait for it (show_jobs_queue), or cancel_job %s.', v_open);
    end if;
    if p_op = 'delete' and c.state = 'FAILED' then
        update public.clone set state = 'DELETED', deleted = now() where clone_id = p_clone;
        return null;
    end if;
    if (p_op = 'stop' and c.state <> 'RUNNING') or (p_op = 'start' and c.state <> 'STOPPED') then
        raise exception 'clone % (%) is %: it cannot be %ed', p_clone, c.name, c.state,
                        case p_op when 'stop' then 'stopp' else p_op end
            using errcode = '55000', hint = 'stop_clone takes a RUNNING clone, start_clone a STOPPED one (show_clones).';
    end if;
    insert into public.job (kind, backup_server_id, pgsql_node_id, bck_id)
    values ('CLONE', c.backup_server_id, c.pgsql_node_id, c.bck_id)
    returning job_id into v_job;
    insert into public.clone_op (job_id, clone_id, op) values (v_job, p_clone, p_op);
    return v_job;
end $$;

-- The agent's view of a claimed CLONE job: the clone and a fresh plan for its target.
create function api.agent_clone_job(p_server bigint, p_job_id bigint)
returns jsonb language plpgsql as $$
declare
    c public.clone%rowtype;
    o public.clone_op%rowtype;
begin
    perform api.acting_for(p_server);
    select * into o from public.clone_op where job_id = p_job_id;
    if found then
        select * into c from public.clone where clone_id = o.clone_id and backup_server_id = p_server;
        return jsonb_build_object('clone_id', c.clone_id, 'name', c.name, 'port', c.port, 'target', c.target,
                                  'op', o.op, 'data_dir', c.data_dir,
                                  'admin_user', (select n.admin_user from public.pgsql_node n where n.node_id = c.pgsql_node_id),
                                  'node_major', (select split_part(bc.pgsql_node_release, '.', 1) from public.backup_catalog bc where bc.bck_id = c.bck_id),
                                  'plan', jsonb_build_object('node_id', c.pgsql_node_id));
    end if;
    select * into c from public.clone where job_id = p_job_id and backup_server_id = p_server;
    if not found then
        raise exception 'job % is not a clone restore of backup server %', p_job_id, api.server_fqdn(p_server)
            using errcode = 'P0002', hint = 'The clone was deleted meanwhile; nothing to do.';
    end if;
    return jsonb_build_object('clone_id', c.clone_id, 'name', c.name, 'port', c.port, 'target', c.target,
                              'admin_user', (select n.admin_user from public.pgsql_node n where n.node_id = c.pgsql_node_id),
                              'node_major', (select split_part(bc.pgsql_node_release, '.', 1) from public.backup_catalog bc where bc.bck_id = c.bck_id),
                              'plan', api.pitr_plan(c.pgsql_node_id, c.bck_id, c.target ->> 'kind', c.target ->> 'value',
                                                    c.target ->> 'timeline'));
end $$;

-- The agent starts working in p_data_dir (so a clone whose agent died says where it was).
create function api.clone_restoring(p_server bigint, p_clone bigint, p_data_dir text)
returns void language plpgsql as $$
begin
    perform api.acting_for(p_server);
    update public.clone set state = 'RESTORING', data_dir = p_data_dir, started = coalesce(started, now())
     where clone_id = p_clone and backup_server_id = p_server and state in ('QUEUED', 'RESTORING');
end $$;

-- The result of a CLONE job, once (a replay finds the job finished and changes nothing).
-- p_result: execution_status, clone_state, phase_timings, reached_*, recovery_state, conninfo,
-- size, error_step, error_message, note, started, finished.
create function api.report_clone(p_job_id bigint, p_attempt integer, p_result jsonb)
returns bigint language plpgsql as $$
declare
    v_job public.job%rowtype;
    v_status text := coalesce(p_result ->> 'execution_status', 'ERROR');
    v_clone bigint;
begin
    perform api.acting_for_job(p_job_id);
    select * into v_job from public.job where job_id = p_job_id for update;
    if not found then
        raise exception 'job % does not exist', p_job_id using errcode = 'P0002';
    end if;
    select clone_id into v_clone from public.clone where job_id = p_job_id;
    if v_job.state in ('SUCCEEDED', 'FAILED', 'CANCELLED') then
        return v_clone;
    end if;
    if v_job.attempt <> p_attempt then
        raise exception 'stale report for job % (attempt %; current attempt %)', p_job_id, p_attempt, v_job.attempt
            using errcode = 'PB001', hint = 'Another attempt owns this job; the report is discarded.';
    end if;
    perform api.check_choice('execution status', v_status, array['SUCCEEDED', 'ERROR', 'CANCELLED']);
    if exists (select 1 from public.clone_op where job_id = p_job_id) then
        -- stop / start / delete: the state it left, nothing else.
        select clone_id into v_clone from public.clone_op where job_id = p_job_id;
        update public.clone set state = case when v_status = 'SUCCEEDED' then coalesce(p_result ->> 'clone_state', state) else state end,
                                deleted = case when v_status = 'SUCCEEDED' and p_result ->> 'clone_state' = 'DELETED' then now() end,
                                note = coalesce(p_result ->> 'note', note)
         where clone_id = v_clone;
        update public.job set state = case v_status when 'SUCCEEDED' then 'SUCCEEDED' when 'CANCELLED' then 'CANCELLED' else 'FAILED' end,
                              finished_at = coalesce((p_result ->> 'finished')::timestamptz, now()),
                              error_message = concat_ws(': ', p_result ->> 'error_step', p_result ->> 'error_message')
         where job_id = p_job_id;
        return v_clone;
    end if;
    update public.clone set
        state = case when v_status = 'SUCCEEDED' then coalesce(p_result ->> 'clone_state', 'RUNNING') else 'FAILED' end,
        data_dir = coalesce(p_result ->> 'data_dir', data_dir),
        conninfo = p_result ->> 'conninfo',
        reached_lsn = (p_result ->> 'reached_lsn')::pg_lsn,
        reached_timeline = (p_result ->> 'reached_timeline')::bigint,
        reached_time = (p_result ->> 'reached_time')::timestamptz,
        recovery_state = p_result ->> 'recovery_state',
        size = (p_result ->> 'size')::bigint,
        phase_timings = coalesce(p_result -> 'phase_timings', '{}'),
        error_step = p_result ->> 'error_step',
        error_message = p_result ->> 'error_message',
        note = p_result ->> 'note',
        started = coalesce(started, (p_result ->> 'started')::timestamptz),
        finished = coalesce((p_result ->> 'finished')::timestamptz, now())
     where job_id = p_job_id;
    update public.job set state = case v_status when 'SUCCEEDED' then 'SUCCEEDED' when 'CANCELLED' then 'CANCELLED' else 'FAILED' end,
                          finished_at = coalesce((p_result ->> 'finished')::timestamptz, now()),
                          error_message = concat_ws(': ', p_result ->> 'error_step', p_result ->> 'error_message')
     where job_id = p_job_id;
    if v_status = 'ERROR' then
        insert into public.alert (alert_type, backup_server_id, pgsql_node_id, ref_id, bck_id, job_id,
                                  execution_status, error_message, sendto)
        values ('RESTORE', v_job.backup_server_id, v_job.pgsql_node_id, v_clone, v_job.bck_id, p_job_id, 'ERROR',
                concat_ws(': ', 'clone ' || (select name from public.clone where clone_id = v_clone),
                          p_result ->> 'error_step', p_result ->> 'error_message'),
                coalesce(api.node_config_value(v_job.pgsql_node_id, 'logs_email'), ''));
    end if;
    return v_clone;
end $$;

-- wal-get's question for a file the plan does not list: the object of this copy under that name
-- (a full segment, else a .partial; a history file), or NULL when the ledger has none: the
-- file does not exist in the archive (restore_command's exit 1).
create function api.wal_get_lookup(p_server bigint, p_node bigint, p_sysid numeric, p_name text)
returns jsonb language plpgsql stable as $$
declare
    v_seg integer;
    v_tl bigint;
    v_segno bigint;
    o public.wal_object%rowtype;
begin
    perform api.acting_for(p_server);
    if p_name ~ '^[0-9A-F]{8}\.history$' then
        v_tl := ('x' || substr(p_name, 1, 8))::bit(32)::bigint;
        select * into o from public.wal_object w
         where w.pgsql_node_id = p_node and w.backup_server_id = p_server and w.system_identifier = p_sysid
           and w.timeline = v_tl and w.kind = 'history';
    elsif p_name ~ '^[0-9A-F]{24}$' then
        select w.seg_size into v_seg from public.wal_object w
         where w.pgsql_node_id = p_node and w.system_identifier = p_sysid limit 1;
        if v_seg is null then
            return null;
        end if;
        v_tl := ('x' || substr(p_name, 1, 8))::bit(32)::bigint;
        v_segno := ('x' || substr(p_name, 9, 8))::bit(32)::bigint * (4294967296 / v_seg)
                   + ('x' || substr(p_name, 17, 8))::bit(32)::bigint;
        select * into o from public.wal_object w
         where w.pgsql_node_id = p_node and w.backup_server_id = p_server and w.system_identifier = p_sysid
           and w.timeline = v_tl and w.segno = v_segno and w.kind in ('full', 'partial')
         order by w.kind limit 1;
    else
        raise exception 'WAL file name % is not a segment or history file name', api.q(p_name)
            using errcode = '22023', hint = 'restore_command passes %f: a name such as 000000010000000000000003 or 00000002.history.';
    end if;
    if o.wal_id is null then
        return null;
    end if;
    return jsonb_build_object('name', p_name, 'kind', o.kind, 'timeline', o.timeline, 'segno', o.segno, 'size', o.size,
                              'stored_size', o.stored_size, 'sha256', o.sha256, 'stored_sha256', o.stored_sha256,
                              'codec', o.codec, 'stored_path', o.stored_path, 'end_lsn', o.end_lsn::text);
end $$;

-- The agent's maintenance pass: a delete job for each clone of this server past its expiry
-- (a FAILED one, with nothing on disk, is marked deleted at once). Returns how many.
create function api.expire_clones(p_server bigint)
returns integer language plpgsql as $$
declare
    c record;
    v_job bigint;
    v_n integer := 0;
begin
    perform api.acting_for(p_server);
    update public.clone set state = 'DELETED', deleted = now(), note = 'expired'
     where backup_server_id = p_server and state = 'FAILED' and expires_at <= now();
    for c in select k.* from public.clone k
              where k.backup_server_id = p_server and k.state in ('RUNNING', 'STOPPED') and k.expires_at <= now()
                and not exists (select 1 from public.clone_op o join public.job j on j.job_id = o.job_id
                                 where o.clone_id = k.clone_id and j.state in ('QUEUED', 'RUNNING'))
              for update of k skip locked loop
        insert into public.job (kind, backup_server_id, pgsql_node_id, bck_id)
        values ('CLONE', c.backup_server_id, c.pgsql_node_id, c.bck_id)
        returning job_id into v_job;
        insert into public.clone_op (job_id, clone_id, op) values (v_job, c.clone_id, 'delete');
        v_n := v_n + 1;
    end loop;
    return v_n;
end $$;

-- show_clones [--server S] [--node N]: clones not deleted, newest first.
create view api.show_clones as
select c.clone_id as "CloneID", c.name as "Name", s.fqdn as "Backup server", n.fqdn as "PgSQL node",
       c.bck_id as "BckID", c.port as "Port", c.state as "State",
       c.target ->> 'kind' || coalesce(' ' || (c.target ->> 'value'), '') as "Target",
       c.reached_lsn::text as "Reached LSN", c.reached_time as "Reached time",
       pg_catalog.pg_size_pretty(c.size) as "Size", c.expires_at as "Expires", c.registered as "Registered",
       c.backup_server_id as "SrvID", c.pgsql_node_id as "NodeID", c.job_id as "JobID",
       c.conninfo as "Conninfo", c.data_dir as "Data directory", c.recovery_state as "Recovery",
       c.phase_timings as "Phases", c.error_step as "Error step", c.error_message as "Error", c.note as "Note",
       c.target as "Target (all)", c.plan ->> 'end_lsn' as "Planned end LSN"
  from public.clone c
  join public.backup_server s on s.server_id = c.backup_server_id
  join public.pgsql_node n on n.node_id = c.pgsql_node_id
 where c.state <> 'DELETED';
