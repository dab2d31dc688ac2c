-- Clone lifecycle (issue 12, part E; columns in migrations/V24__clone_lifecycle.sql; clones
-- are made by register_pitr_restore, sql/89_clones.sql). The shell asks for a state
-- (desired_state) and notifies the agent; the agent stops, starts or removes the instance and
-- says what it reached (clone_action_done). Maintenance expires clones (a CLONE_EXPIRY alert
-- clone_expiry_warning beforehand) and records their disk use. A backup server holds at most
-- max_clones live clones (a trigger, so every way of making one is held to it).

-- The clone named by CloneID (or by name when unique among live clones), locked.
create function api.clone_for_action(p_clone text) returns public.clone
language plpgsql as $$
declare
    c public.clone%rowtype;
    v_ref text := btrim(coalesce(p_clone, ''));
begin
    if v_ref ~ '^[0-9]{1,18}$' then
        select * into c from public.clone where clone_id = v_ref::bigint for update;
    else
        select * into c from public.clone where name = v_ref and state <> 'DELETED'
         order by clone_id desc limit 1 for update;
    end if;
    if not found or c.state = 'DELETED' then
        raise exception 'clone % does not exist', api.q(p_clone)
            using errcode = 'P0002', hint = 'show_clones lists the clones (CloneID or name).';
    end if;
    return c;
end $$;

-- start_clone CLONE: a STOPPED clone started again (it resumes where it stopped: a promoted
-- clone opens read-write, a paused one replays to its target and pauses again).
create function api.start_clone(p_clone text) returns text
language plpgsql as $$
declare
    c public.clone%rowtype := api.clone_for_action(p_clone);
begin
    if c.state = 'RUNNING' and c.desired_state is null then
        return format('clone %s (CloneID %s) is already running on port %s', c.name, c.clone_id, c.port);
    end if;
    if c.state not in ('STOPPED', 'RUNNING') then
        raise exception 'clone % (CloneID %) is %: only a stopped clone can be started', c.name, c.clone_id, c.state
            using errcode = '55000',
                  hint = case c.state when 'FAILED' then 'Its restore failed and nothing of it is left: register_pitr_restore it again.'
                                      else 'Wait until its restore has finished (show_clones).' end;
    end if;
    update public.clone set desired_state = 'RUNNING', action_error = null where clone_id = c.clone_id;
    perform api.notify_server(c.backup_server_id, 'clone');
    return format('clone %s (CloneID %s) will be started by the agent on %s; show_clones shows when it runs',
                  c.name, c.clone_id, api.server_fqdn(c.backup_server_id));
end $$;

-- stop_clone CLONE: a running clone shut down (fast); its data directory stays.
create function api.stop_clone(p_clone text) returns text
language plpgsql as $$
declare
    c public.clone%rowtype := api.clone_for_action(p_clone);
begin
    if c.state = 'STOPPED' and c.desired_state is null then
        return format('clone %s (CloneID %s) is already stopped', c.name, c.clone_id);
    end if;
    if c.state not in ('STOPPED', 'RUNNING') then
        raise exception 'clone % (CloneID %) is %: only a running clone can be stopped', c.name, c.clone_id, c.state
            using errcode = '55000',
                  hint = case when c.state in ('QUEUED', 'RESTORING') then format('cancel_job %s stops its restore (nothing is left of it).', c.job_id)
                              else 'Nothing runs.' end;
    end if;
    update public.clone set desired_state = 'STOPPED', action_error = null where clone_id = c.clone_id;
    perform api.notify_server(c.backup_server_id, 'clone');
    return format('clone %s (CloneID %s) will be stopped by the agent on %s', c.name, c.clone_id,
                  api.server_fqdn(c.backup_server_id));
end $$;

-- delete_clone CLONE: the instance stopped and its directory removed by the agent; a clone that
-- failed (nothing on disk) or whose restore has not started is deleted at once.
create function api.delete_clone(p_clone text) returns text
language plpgsql as $$
declare
    c public.clone%rowtype := api.clone_for_action(p_clone);
begin
    if c.state = 'FAILED' or (c.state = 'QUEUED' and not exists (select 1 from public.job j where j.job_id = c.job_id and j.state = 'RUNNING')) then
        update public.job set state = 'CANCELLED', finished_at = now(), error_message = 'its clone was deleted'
         where job_id = c.job_id and state = 'QUEUED';
        update public.clone set state = 'DELETED', desired_state = null, deleted = now() where clone_id = c.clone_id;
        return format('clone %s (CloneID %s) deleted (nothing of it was on disk)', c.name, c.clone_id);
    end if;
    if c.state not in ('STOPPED', 'RUNNING') then
        raise exception 'clone % (CloneID %) is being restored', c.name, c.clone_id
            using errcode = '55000', hint = format('cancel_job %s stops its restore and removes what it made; or wait and delete it then.', c.job_id);
    end if;
    update public.clone set desired_state = 'DELETED', action_error = null where clone_id = c.clone_id;
    perform api.notify_server(c.backup_server_id, 'clone');
    return format('clone %s (CloneID %s) will be stopped and removed by the agent on %s', c.name, c.clone_id,
                  api.server_fqdn(c.backup_server_id));
end $$;

-- The per-server limit, checked when a clone row is made (register_pitr_restore holds the
-- server's clone lock, so two registrations cannot both take the last place).
create function api.clone_limit_check() returns trigger
language plpgsql as $$
declare
    v_max integer := coalesce(nullif(api.server_config_value(new.backup_server_id, 'max_clones'), '')::integer, 5);
    v_live bigint;
begin
    select count(*) into v_live from public.clone c
     where c.backup_server_id = new.backup_server_id and c.state not in ('DELETED', 'FAILED');
    if v_live >= v_max then
        raise exception 'backup server % holds % clone(s), its limit (max_clones %)', api.server_fqdn(new.backup_server_id), v_live, v_max
            using errcode = '53400',
                  hint = format('delete_clone the clones no longer needed (show_clones --server %s), or raise the limit: update_backup_server_config %s max_clones=N.',
                                api.server_fqdn(new.backup_server_id), api.server_fqdn(new.backup_server_id));
    end if;
    return new;
end $$;

create trigger clone_limit before insert on public.clone
    for each row execute function api.clone_limit_check();

-- ---- the agent ------------------------------------------------------------------------------

-- Clones whose asked-for state the agent must reach, with what it needs to.
create function api.agent_clone_actions(p_server bigint)
returns table (clone_id bigint, name text, state text, desired_state text, data_dir text, port integer,
               admin_user text, node_major text)
language plpgsql stable as $$
begin
    perform api.acting_for(p_server);
    return query
    select c.clone_id, c.name, c.state, c.desired_state, c.data_dir, c.port, n.admin_user,
           split_part(bc.pgsql_node_release, '.', 1)
      from public.clone c
      join public.pgsql_node n on n.node_id = c.pgsql_node_id
      left join public.backup_catalog bc on bc.bck_id = c.bck_id
     where c.backup_server_id = p_server and c.state in ('RUNNING', 'STOPPED') and c.desired_state is not null
     order by c.clone_id;
end $$;

-- Clones that should be running or stopped on disk (at agent start: RUNNING ones it restarts
-- when their server is gone; in maintenance: the ones it measures).
create function api.agent_live_clones(p_server bigint)
returns table (clone_id bigint, name text, state text, data_dir text, port integer, admin_user text, node_major text)
language plpgsql stable as $$
begin
    perform api.acting_for(p_server);
    return query
    select c.clone_id, c.name, c.state, c.data_dir, c.port, n.admin_user, split_part(bc.pgsql_node_release, '.', 1)
      from public.clone c
      join public.pgsql_node n on n.node_id = c.pgsql_node_id
      left join public.backup_catalog bc on bc.bck_id = c.bck_id
     where c.backup_server_id = p_server and c.state in ('RUNNING', 'STOPPED') and c.data_dir is not null
     order by c.clone_id;
end $$;

-- What the agent reached for a clone: p_state (RUNNING, STOPPED, DELETED), or p_error when it
-- could not (the asked-for state is kept, so the next pass tries again). p_note: what it did.
create function api.clone_action_done(p_server bigint, p_clone bigint, p_state text, p_error text, p_note text)
returns void language plpgsql as $$
begin
    perform api.acting_for(p_server);
    if p_error is not null then
        update public.clone set action_error = p_error where clone_id = p_clone and backup_server_id = p_server;
        return;
    end if;
    perform api.check_choice('clone state', p_state, array['RUNNING', 'STOPPED', 'DELETED']);
    update public.clone
       set state = p_state, desired_state = case when desired_state = p_state then null else desired_state end,
           action_error = null, note = coalesce(p_note, note),
           deleted = case when p_state = 'DELETED' then now() else deleted end
     where clone_id = p_clone and backup_server_id = p_server and state in ('RUNNING', 'STOPPED');
end $$;

-- The disk use of the server's clones as measured by the agent: [{clone_id, bytes}].
create function api.report_clone_disk(p_server bigint, p_sizes jsonb) returns void
language plpgsql as $$
begin
    perform api.acting_for(p_server);
    update public.clone c set disk_bytes = (x ->> 'bytes')::bigint, disk_measured_at = now()
      from jsonb_array_elements(coalesce(p_sizes, '[]')) x
     where c.clone_id = (x ->> 'clone_id')::bigint and c.backup_server_id = p_server;
end $$;

-- Expiry, once per maintenance pass: clones whose time has come are asked to be deleted (a
-- failed one is marked DELETED at once: nothing is on disk), and those within
-- clone_expiry_warning of it get one CLONE_EXPIRY alert. Returns how many were asked to go.
create function api.expire_clones(p_server bigint) returns integer
language plpgsql as $$
declare
    v_warn interval := coalesce(nullif(api.server_config_value(p_server, 'clone_expiry_warning'), '')::interval, interval '1 day');
    v_n integer;
begin
    perform api.acting_for(p_server);
    update public.clone set state = 'DELETED', deleted = now()
     where backup_server_id = p_server and state = 'FAILED' and expires_at <= now();
    with w as (
        update public.clone c set expiry_warned_at = now()
         where c.backup_server_id = p_server and c.state in ('RUNNING', 'STOPPED') and c.expiry_warned_at is null
           and c.expires_at is not null and c.expires_at - v_warn <= now()
        returning c.*
    )
    insert into public.alert (alert_type, backup_server_id, pgsql_node_id, ref_id, bck_id, execution_status, error_message, sendto)
    select 'CLONE_EXPIRY', w.backup_server_id, w.pgsql_node_id, w.clone_id, w.bck_id, 'WARNING',
           format('clone %s (CloneID %s, port %s) of PgSQL node %s expires at %s and will then be deleted by maintenance',
                  w.name, w.clone_id, w.port, api.node_fqdn(w.pgsql_node_id), w.expires_at),
           coalesce(api.node_config_value(w.pgsql_node_id, 'logs_email'), '')
      from w;
    update public.clone set desired_state = 'DELETED', action_error = null
     where backup_server_id = p_server and state in ('RUNNING', 'STOPPED') and expires_at <= now()
       and desired_state is distinct from 'DELETED';
    get diagnostics v_n = row_count;
    return v_n;
end $$;
