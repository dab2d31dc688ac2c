-- Clone lifecycle additions (issue 12, part E; columns in migrations/V24__clone_lifecycle.sql;
-- clones, stop_clone / start_clone / delete_clone, expiry and max_clones are in
-- sql/89_clones.sql, as are the CLONE_EXPIRY alerts, raised clone_expiry_warning beforehand).
-- Maintenance records the clones' disk use; at its start the agent starts again the RUNNING
-- clones whose server is gone and notes it.

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

-- How long before a clone's expiry its CLONE_EXPIRY alert is raised (api.expire_clones,
-- sql/89_clones.sql): the backup server parameter clone_expiry_warning, default 1 day.
create function api.clone_expiry_warning(p_server bigint) returns interval
language sql stable as $$
    select coalesce(nullif(api.server_config_value(p_server, 'clone_expiry_warning'), '')::interval, interval '1 day')
$$;
