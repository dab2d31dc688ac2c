-- Alerts: delivery by the agents, overdue definitions, and the shell's view of them.
-- Rows are created by report_backup (failed backups and snapshots), mark_lost_jobs (lost jobs),
-- raise_overdue_alert (below) and the other engines (restores, drills, quarantine). An agent
-- with mail configured claims due rows (SKIP LOCKED, so two agents never mail the same alert),
-- mails them outside any transaction and reports the outcome, fenced by its name and the
-- attempt number, so a late report of a send that outlived its claim changes nothing.

-- Claims at most p_limit due alerts for mailing. An agent mails the alerts of its own server,
-- alerts of no server, lost jobs and silent agents (AGENT_NOT_SEEN) of any server (their own
-- agent is presumably dead), and any alert that stayed due for p_handover (its own agent is down or has no mail configured).
-- A claim holds the alert for p_lease; QUEUED alerts older than p_max_age are EXPIRED instead
-- (never mailed: enabling mail must not flood anyone with history). Recipients are the node's
-- logs_email as it is now (a corrected address applies to alerts still queued).
create function api.claim_alerts(p_server bigint, p_agent text, p_limit integer, p_lease interval,
                                 p_handover interval, p_max_age interval)
returns table (alert_id bigint, registered timestamptz, alert_type text, ref_id bigint, bck_id bigint,
               restore_id bigint, job_id bigint, backup_server_id bigint, backup_server_fqdn text,
               pgsql_node_id bigint, pgsql_node_fqdn text, dbname text, execution_status text,
               error_message text, stderr_tail text, sendto text, attempts integer)
language plpgsql as $$
#variable_conflict use_column
begin
    perform api.acting_for(p_server);
    if p_max_age is not null then
        update public.alert a
           set state = 'EXPIRED', last_error = format('not mailed within %s of its creation', p_max_age)
         where a.state = 'QUEUED' and a.registered < now() - p_max_age and a.next_attempt_at <= now()
           and (a.backup_server_id = p_server or a.backup_server_id is null or a.alert_type in ('LOST_JOB', 'AGENT_NOT_SEEN')
                or a.next_attempt_at <= now() - p_handover);
    end if;
    return query
    with due as (
        select a.alert_id from public.alert a
         where a.state = 'QUEUED' and a.next_attempt_at <= now()
           and (a.backup_server_id = p_server or a.backup_server_id is null or a.alert_type in ('LOST_JOB', 'AGENT_NOT_SEEN')
                or a.next_attempt_at <= now() - p_handover)
         order by a.next_attempt_at, a.alert_id
         limit p_limit
           for update skip locked
    ), claimed as (
        update public.alert a
           set attempts = a.attempts + 1, claimed_by = p_agent, next_attempt_at = now() + p_lease,
               sendto = coalesce(case when a.pgsql_node_id is not null
                                      and exists (select 1 from public.pgsql_node n where n.node_id = a.pgsql_node_id)
                                 then api.node_config_value(a.pgsql_node_id, 'logs_email') end, a.sendto)
          from due where a.alert_id = due.alert_id
        returning a.*
    )
    select c.alert_id, c.registered, c.alert_type, c.ref_id, c.bck_id, c.restore_id, c.job_id,
           c.backup_server_id, s.fqdn, c.pgsql_node_id, n.fqdn, c.dbname, c.execution_status,
           c.error_message, bc.error_stderr_tail, c.sendto, c.attempts
      from claimed c
      left join public.backup_catalog bc on bc.bck_id = c.bck_id
      left join public.backup_server s on s.server_id = c.backup_server_id
      left join public.pgsql_node n on n.node_id = c.pgsql_node_id
     order by c.registered, c.alert_id;
end $$;

-- The alert was mailed. False when the claim was no longer ours (the report is dropped).
create function api.alert_sent(p_alert_id bigint, p_agent text, p_attempt integer, p_message_id text)
returns boolean language plpgsql as $$
begin
    update public.alert set state = 'SENT', alert_sent = true, sent_at = now(), message_id = p_message_id,
                            last_error = null
     where alert_id = p_alert_id and claimed_by = p_agent and attempts = p_attempt and state = 'QUEUED';
    return found;
end $$;

-- Mailing failed: retry after p_retry_in, or give up (FAILED stays visible in show_alerts until
-- retry_alerts queues it again). Returns the new state, NULL when the claim was no longer ours.
create function api.alert_failed(p_alert_id bigint, p_agent text, p_attempt integer, p_error text,
                                 p_retry_in interval, p_give_up boolean)
returns text language plpgsql as $$
declare
    v_state text;
begin
    update public.alert set state = case when p_give_up then 'FAILED' else 'QUEUED' end,
                            last_error = left(p_error, 2000), next_attempt_at = now() + p_retry_in
     where alert_id = p_alert_id and claimed_by = p_agent and attempts = p_attempt and state = 'QUEUED'
    returning state into v_state;
    return v_state;
end $$;

-- Queues FAILED or EXPIRED alerts again (all of them when p_ids is NULL), with fresh attempts.
create function api.retry_alerts(p_ids bigint[]) returns integer
language plpgsql as $$
declare
    v integer;
    v_missing bigint[];
begin
    if p_ids is not null then
        select array_agg(i order by i) into v_missing
          from unnest(p_ids) i where not exists (select 1 from public.alert a where a.alert_id = i);
        if v_missing is not null then
            raise exception 'AlertID % does not exist', array_to_string(v_missing, ', ')
                using errcode = 'P0002', hint = 'show_alerts lists the alerts.';
        end if;
    end if;
    update public.alert set state = 'QUEUED', attempts = 0, next_attempt_at = now(), last_error = null
     where state in ('FAILED', 'EXPIRED') and (p_ids is null or alert_id = any (p_ids));
    get diagnostics v = row_count;
    return v;
end $$;

-- Mailed alerts older than p_keep, of this server (or of none). Undelivered ones are kept.
-- Called by the maintenance pass of each agent; p_keep defaults to the server's
-- sent_alerts_retention (PgBackMan never purged alerts: reference §8.2 item 26).
create function api.purge_sent_alerts(p_server bigint, p_keep interval default null) returns integer
language plpgsql as $$
declare
    v integer;
    v_keep interval := coalesce(p_keep, api.server_config_value(p_server, 'sent_alerts_retention')::interval);
begin
    perform api.acting_for(p_server);
    delete from public.alert
     where (state = 'SENT' or alert_sent) and coalesce(sent_at, registered) < now() - v_keep
       and (backup_server_id = p_server or backup_server_id is null);
    get diagnostics v = row_count;
    return v;
end $$;

-- What the overdue check of an agent needs, per ACTIVE definition of a RUNNING node of its
-- server: the schedule, since when it has been expected to run (creation or last status change
-- of the definition, last status change of the node as the audit log has it: instants before
-- that were never promised), the newest successful backup, the node's grace period, and whether
-- the current overdue episode (no success since the last alert) was already alerted. The
-- schedule math is the agent's.
create function api.overdue_candidates(p_server bigint)
returns table (def_id bigint, pgsql_node_id bigint, node_fqdn text, dbname text, backup_code text,
               minutes_cron text, hours_cron text, day_month_cron text, month_cron text, weekday_cron text,
               since timestamptz, last_success timestamptz, grace_seconds float8, alerted boolean)
language sql stable as $$
    select api.acting_for(p_server);
    with nodes as (
        select n.node_id, n.fqdn,
               extract(epoch from api.node_config_value(n.node_id, 'overdue_grace_period')::interval)::float8 as grace,
               (select max(l.at) from public.audit_log l
                 where l.table_name = 'pgsql_node' and l.object_id = n.node_id::text and l.operation = 'UPDATE'
                   and (l.old_row ->> 'status') is distinct from (l.new_row ->> 'status')) as status_changed
          from public.pgsql_node n
         where n.status = 'RUNNING'
           and exists (select 1 from public.backup_definition d
                        where d.pgsql_node_id = n.node_id and d.backup_server_id = p_server)
    )
    select d.def_id, d.pgsql_node_id, n.fqdn, d.dbname, d.backup_code,
           d.minutes_cron, d.hours_cron, d.day_month_cron, d.month_cron, d.weekday_cron,
           greatest(d.registered, d.status_changed_at, n.status_changed), ls.finished, n.grace,
           exists (select 1 from public.alert a
                    where a.alert_type = 'OVERDUE' and a.ref_id = d.def_id
                      and a.registered >= coalesce(ls.finished, '-infinity'))
      from public.backup_definition d
      join nodes n on n.node_id = d.pgsql_node_id
      left join lateral (select c.finished from public.backup_catalog c
                          where c.def_id = d.def_id and c.execution_status = 'SUCCEEDED'
                          order by c.finished desc limit 1) ls on true
     where d.backup_server_id = p_server and d.job_status = 'ACTIVE'
$$;

-- Raises the OVERDUE alert of a definition whose scheduled backup of p_expected has no success,
-- once per episode: nothing when a success arrived meanwhile, when an OVERDUE alert was raised
-- since the last success, or when the definition is no longer an ACTIVE one of this server on
-- a RUNNING node. Returns the AlertID, or NULL.
create function api.raise_overdue_alert(p_server bigint, p_def_id bigint, p_expected timestamptz, p_message text)
returns bigint language plpgsql as $$
declare
    v_def public.backup_definition%rowtype;
    v_last timestamptz;
    v_id bigint;
begin
    perform api.acting_for(p_server);
    -- Two agents of one server check the same definitions: one episode, one alert.
    perform pg_advisory_xact_lock(hashtext('pgbackman.overdue'), p_def_id::integer);
    select d.* into v_def from public.backup_definition d join public.pgsql_node n on n.node_id = d.pgsql_node_id
     where d.def_id = p_def_id and d.backup_server_id = p_server and d.job_status = 'ACTIVE' and n.status = 'RUNNING';
    if not found then
        return null;
    end if;
    select max(finished) into v_last from public.backup_catalog
     where def_id = p_def_id and execution_status = 'SUCCEEDED';
    if v_last >= p_expected then
        return null;
    end if;
    if exists (select 1 from public.alert where alert_type = 'OVERDUE' and ref_id = p_def_id
                  and registered >= coalesce(v_last, '-infinity')) then
        return null;
    end if;
    insert into public.alert (alert_type, backup_server_id, pgsql_node_id, ref_id, dbname, execution_status,
                              error_message, sendto)
    values ('OVERDUE', p_server, v_def.pgsql_node_id, p_def_id, v_def.dbname, 'OVERDUE', p_message,
            api.node_config_value(v_def.pgsql_node_id, 'logs_email'))
    returning alert_id into v_id;
    return v_id;
end $$;

create view api.show_alerts as
select a.alert_id as "AlertID", a.registered as "Registered", a.alert_type as "Type", a.state as "State",
       a.backup_server_id as "SrvID", s.fqdn as "Backup server", a.pgsql_node_id as "NodeID", n.fqdn as "PgSQL node",
       a.dbname as "DBname", a.ref_id as "Ref ID", a.bck_id as "BckID", a.job_id as "JobID",
       a.execution_status as "Status", a.error_message as "Error", a.sendto as "Send to",
       a.attempts as "Attempts", case when a.state = 'QUEUED' then a.next_attempt_at end as "Next attempt",
       a.sent_at as "Sent at", a.last_error as "Last error", a.claimed_by as "Agent", a.message_id as "Message-ID"
  from public.alert a
  left join public.backup_server s on s.server_id = a.backup_server_id
  left join public.pgsql_node n on n.node_id = a.pgsql_node_id;
