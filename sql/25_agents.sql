-- Agents as the catalog sees them (issue 14): the configuration values an agent takes from the
-- catalog, its heartbeat, its state as shown by the shell, and the AGENT_NOT_SEEN alert.
-- An agent never waits on these: a heartbeat that fails is skipped, the next one tells all.

-- The backup-server configuration values that the agent uses (its file may override each one,
-- and reports so with its heartbeat). Values as they apply now: the server's, else the default.
create function api.agent_config(p_server bigint)
returns table (parameter text, value text)
language sql stable as $$
    select p, api.server_config_value(p_server, p)
      from unnest(array['max_concurrent_jobs', 'pgsql_bin_dir', 'root_backup_partition']) p
$$;

-- The server's threshold: an agent silent for longer is offline.
create function api.agent_not_seen_threshold(p_server bigint) returns interval
language sql stable as $$
    select coalesce(api.server_config_value(p_server, 'agent_not_seen_threshold'), '5 minutes')::interval
$$;

-- online / degraded (as the agent reports itself) / offline (not seen for the threshold) /
-- never seen.
create function api.agent_state(p_server bigint) returns text
language sql stable as $$
    select coalesce((select case when a.last_seen < now() - api.agent_not_seen_threshold(p_server) then 'offline'
                                 else a.health end
                       from public.agent_status a where a.server_id = p_server), 'never seen')
$$;

-- The time zone the server's schedules fire in: the one its agent reported.
create function api.agent_zone(p_server bigint) returns text
language sql stable as $$
    select coalesce((select a.time_zone from public.agent_status a where a.server_id = p_server),
                    'agent zone unknown')
$$;

-- A cron line with the zone it fires in, e.g. "30 2 * * * (Europe/Oslo)"; NULL for no schedule.
create function api.schedule_in_zone(p_line text, p_server bigint) returns text
language sql stable as $$
    select nullif(btrim(p_line), '') || ' (' || api.agent_zone(p_server) || ')'
$$;

-- What to tell whoever queues a job for this server when its agent is not running: NULL when
-- it was seen within the threshold.
create function api.agent_warning(p_server bigint) returns text
language sql stable as $$
    select case
        when a.server_id is null then
            format('the agent of backup server %s has never been seen by the catalog: the job waits until it runs (start it: systemctl start pgbackman-agent on that host; check it: pgbackman-agent --check)',
                   s.fqdn)
        when a.last_seen < now() - api.agent_not_seen_threshold(s.server_id) then
            format('the agent of backup server %s has not been seen since %s: the job waits until it runs again (systemctl status pgbackman-agent on that host; pgbackman-agent --check)',
                   s.fqdn, to_char(a.last_seen at time zone 'UTC', 'YYYY-MM-DD HH24:MI:SS "UTC"'))
        end
      from public.backup_server s
      left join public.agent_status a on a.server_id = s.server_id
     where s.server_id = p_server
$$;

-- The same for a job, by JobID (what the shell asks after queuing one).
create function api.job_agent_warning(p_job_id bigint) returns text
language sql stable as $$
    select api.agent_warning(j.backup_server_id) from public.job j where j.job_id = p_job_id
$$;

-- The heartbeat of the agent of p_server: records what it runs with, then raises an
-- AGENT_NOT_SEEN alert for every other RUNNING server whose agent was seen once and has been
-- silent past its threshold (once per silence: not again until it is seen). Returns the FQDNs
-- of the servers alerted now.
create function api.agent_heartbeat(p_server bigint, p_agent text, p_version text, p_health text,
                                    p_spooled integer, p_time_zone text, p_config jsonb, p_started timestamptz)
returns setof text
language plpgsql as $$
begin
    perform api.acting_for(p_server);
    if p_health not in ('online', 'degraded', 'offline') then
        raise exception 'agent health % is not online, degraded or offline', api.q(p_health)
            using errcode = '22023', hint = 'Upgrade the agent to the version of the catalog.';
    end if;
    insert into public.agent_status as a (server_id, agent_name, last_seen, started_at, version, health, spooled,
                                          time_zone, config)
    values (p_server, p_agent, now(), p_started, coalesce(p_version, ''), p_health, coalesce(p_spooled, 0),
            nullif(btrim(p_time_zone), ''), coalesce(p_config, '{}'))
    on conflict (server_id) do update
       set agent_name = excluded.agent_name, last_seen = excluded.last_seen, started_at = excluded.started_at,
           version = excluded.version, health = excluded.health, spooled = excluded.spooled,
           time_zone = excluded.time_zone, config = excluded.config;
    -- Two agents noticing the same silence: one alert.
    perform pg_advisory_xact_lock(hashtext('pgbackman.agent_not_seen'));
    return query
    with silent as (
        select a.server_id, a.last_seen, s.fqdn
          from public.agent_status a
          join public.backup_server s on s.server_id = a.server_id
         where a.server_id <> p_server and s.status = 'RUNNING'
           and a.last_seen < now() - api.agent_not_seen_threshold(a.server_id)
           and not exists (select 1 from public.alert x
                            where x.alert_type = 'AGENT_NOT_SEEN' and x.backup_server_id = a.server_id
                              and x.registered >= a.last_seen)
    ), raised as (
        insert into public.alert (alert_type, backup_server_id, execution_status, error_message, sendto)
        select 'AGENT_NOT_SEEN', si.server_id, 'NOT SEEN',
               -- No instant in the text: the mail prints times in the sending agent's zone.
               format('the agent of backup server %s (%s) has sent no heartbeat for %s (threshold %s); its scheduled backups do not run and its queued jobs wait',
                      si.fqdn, (select a.agent_name from public.agent_status a where a.server_id = si.server_id),
                      date_trunc('second', now() - si.last_seen), api.agent_not_seen_threshold(si.server_id)),
               coalesce((select string_agg(distinct api.node_config_value(d.pgsql_node_id, 'logs_email'), ', ')
                           from public.backup_definition d
                          where d.backup_server_id = si.server_id and d.job_status <> 'DELETED'),
                        (select value from public.pgsql_node_default_config where parameter = 'logs_email'), '')
          from silent si
        returning backup_server_id
    )
    select s.fqdn from raised r join public.backup_server s on s.server_id = r.backup_server_id;
end $$;
