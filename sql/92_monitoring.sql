-- Monitoring (issue 14): what the status probe (`show_pgbackman_status`, Nagios, Zabbix) and the
-- fleet metrics (`pgbackman serve-metrics`) read. Read-only views; the verdicts and the schedule
-- math (overdue, next run) are made in Rust (crates/core/src/monitoring.rs), as the agent's
-- overdue check does. Each lateral subquery reads one index (backup_catalog_def_idx,
-- backup_catalog_passed_idx, job_def_idx, job_open_idx, backup_catalog_server_idx), so a scrape
-- stays cheap with a million catalog rows.

-- One row per definition that is not DELETED: its last run, last success, last verified set
-- and open jobs.
create view api.monitoring_definitions as
with nodes as (
    select n.node_id, n.fqdn, n.status,
           extract(epoch from api.node_config_value(n.node_id, 'overdue_grace_period')::interval)::float8 as grace,
           (select max(l.at) from public.audit_log l
             where l.table_name = 'pgsql_node' and l.object_id = n.node_id::text and l.operation = 'UPDATE'
               and (l.old_row ->> 'status') is distinct from (l.new_row ->> 'status')) as status_changed
      from public.pgsql_node n
)
select d.def_id, d.backup_server_id as server_id, s.fqdn as server_fqdn,
       d.pgsql_node_id as node_id, n.fqdn as node_fqdn, n.status as node_status,
       d.dbname, d.backup_code, d.job_status,
       d.minutes_cron, d.hours_cron, d.day_month_cron, d.month_cron, d.weekday_cron,
       greatest(d.registered, d.status_changed_at, n.status_changed) as since,
       n.grace as grace_seconds,
       lr.execution_status as last_status, lr.finished as last_finished,
       coalesce(lr.error_step || ': ', '') || lr.error_message as last_error,
       ls.finished as last_success,
       extract(epoch from ls.duration)::float8 as last_success_duration,
       ls.total_size as last_success_size,
       lv.verified_at as last_verified,
       coalesce(q.queued, 0) as queued, coalesce(q.running, 0) as running, q.oldest_queued,
       -- The zone the server's agent fires schedules in, from its heartbeat; NULL (never seen):
       -- the reader's $TZ (else UTC), the agent's default.
       (select a.time_zone from public.agent_status a where a.server_id = d.backup_server_id) as time_zone
  from public.backup_definition d
  join nodes n on n.node_id = d.pgsql_node_id
  join public.backup_server s on s.server_id = d.backup_server_id
  left join lateral (select c.execution_status, c.finished, c.error_step, c.error_message
                       from public.backup_catalog c
                      where c.def_id = d.def_id
                      order by c.finished desc limit 1) lr on true
  left join lateral (select c.finished, c.duration, c.total_size
                       from public.backup_catalog c
                      where c.def_id = d.def_id and c.execution_status = 'SUCCEEDED'
                      order by c.finished desc limit 1) ls on true
  -- The newest set that passed a verification (backup_catalog_passed_idx, V12).
  left join lateral (select c.verified_at
                       from public.backup_catalog c
                      where c.def_id = d.def_id and c.verification_state = 'PASSED'
                      order by c.finished desc limit 1) lv on true
  left join lateral (select count(*) filter (where j.state = 'QUEUED') as queued,
                            count(*) filter (where j.state = 'RUNNING') as running,
                            min(j.not_before) filter (where j.state = 'QUEUED') as oldest_queued
                       from public.job j
                      where j.def_id = d.def_id and j.state in ('QUEUED', 'RUNNING')) q on true
 where d.job_status <> 'DELETED';

-- Open jobs (every kind) per backup server and state; the states with no job are filled in by
-- the reader, so a series does not vanish when its queue empties.
create view api.monitoring_queue as
select s.server_id, s.fqdn as server_fqdn, j.kind, j.state, count(*) as jobs,
       min(j.not_before) as oldest
  from public.job j
  join public.backup_server s on s.server_id = j.backup_server_id
 where j.state in ('QUEUED', 'RUNNING')
 group by s.server_id, s.fqdn, j.kind, j.state;

-- Alerts per state and type.
create view api.monitoring_alerts as
select a.state, a.alert_type, count(*) as alerts
  from public.alert a
 group by a.state, a.alert_type;

-- Backup servers, their agent's heartbeat and state, and the last time the agent was heard of
-- through the job table: the newest backup it reported, or the newest lease heartbeat of a job
-- it runs now.
create view api.monitoring_servers as
select s.server_id, s.fqdn as server_fqdn, s.status,
       nullif(greatest(coalesce(lb.registered, '-infinity'), coalesce(hb.at, '-infinity')),
              '-infinity'::timestamptz) as last_report,
       -- The agent's own heartbeat and state (sql/25_agents.sql: online, degraded, offline,
       -- never seen).
       a.last_seen, api.agent_state(s.server_id) as agent_state
  from public.backup_server s
  left join public.agent_status a on a.server_id = s.server_id
  left join lateral (select c.registered from public.backup_catalog c
                      where c.backup_server_id = s.server_id
                      order by c.finished desc limit 1) lb on true
  left join lateral (select max(greatest(j.heartbeat_at, j.claimed_at)) as at from public.job j
                      where j.backup_server_id = s.server_id and j.state in ('QUEUED', 'RUNNING')) hb on true;
