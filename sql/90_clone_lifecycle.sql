-- Clone lifecycle additions (issue 12, part E; columns in migrations/V24__clone_lifecycle.sql;
-- clones, stop_clone / start_clone / delete_clone, expiry and max_clones are in
-- sql/89_clones.sql). Maintenance warns before a clone expires (one CLONE_EXPIRY alert
-- clone_expiry_warning beforehand) and records the clones' disk use; at its start the agent
-- starts again the RUNNING clones whose server is gone and notes it.

-- Clones RUNNING or STOPPED on this server's disk (at agent start: the RUNNING ones it checks;
-- in maintenance: the ones it measures).
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

-- A RUNNING clone whose server was gone at the agent's start: started again (p_error NULL) or
-- not (then it is STOPPED, with why: start_clone tries again).
create function api.clone_started_again(p_server bigint, p_clone bigint, p_error text)
returns void language plpgsql as $$
begin
    perform api.acting_for(p_server);
    update public.clone
       set state = case when p_error is null then 'RUNNING' else 'STOPPED' end,
           note = case when p_error is null then format('its server was gone at the agent''s start; started again at %s', now())
                       else format('its server was gone at the agent''s start and could not be started: %s', p_error) end
     where clone_id = p_clone and backup_server_id = p_server and state = 'RUNNING';
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

-- One CLONE_EXPIRY alert per clone that expires within clone_expiry_warning (a backup server
-- parameter). Returns how many were warned about.
create function api.warn_expiring_clones(p_server bigint) returns integer
language plpgsql as $$
declare
    v_warn interval := coalesce(nullif(api.server_config_value(p_server, 'clone_expiry_warning'), '')::interval, interval '1 day');
    v_n integer;
begin
    perform api.acting_for(p_server);
    with w as (
        update public.clone c set expiry_warned_at = now()
         where c.backup_server_id = p_server and c.state in ('RUNNING', 'STOPPED') and c.expiry_warned_at is null
           and c.expires_at is not null and c.expires_at > now() and c.expires_at - v_warn <= now()
        returning c.*
    )
    insert into public.alert (alert_type, backup_server_id, pgsql_node_id, ref_id, bck_id, execution_status, error_message, sendto)
    select 'CLONE_EXPIRY', w.backup_server_id, w.pgsql_node_id, w.clone_id, w.bck_id, 'WARNING',
           format('clone %s (CloneID %s, port %s) of PgSQL node %s expires at %s and will then be deleted by maintenance',
                  w.name, w.clone_id, w.port, api.node_fqdn(w.pgsql_node_id), w.expires_at),
           coalesce(api.node_config_value(w.pgsql_node_id, 'logs_email'), '')
      from w;
    get diagnostics v_n = row_count;
    return v_n;
end $$;
