-- The job queue and the agent's API. An agent changes the catalog only through these functions.
-- A job is claimed with FOR UPDATE SKIP LOCKED and held by a lease that heartbeats extend; every
-- report carries the attempt number it was claimed with, so a late report of an older attempt
-- can never overwrite a newer state (fencing). Reports are idempotent on the job id.

-- The backup server an agent runs as; refuses unknown or STOPPED servers with a hint.
create function api.agent_server_id(p_fqdn text) returns bigint
language plpgsql stable as $$
declare
    v_id bigint;
    v_status text;
begin
    select server_id, status into v_id, v_status from public.backup_server where lower(fqdn) = lower(btrim(p_fqdn));
    if v_id is null then
        raise exception 'this host (%) is not a registered backup server', p_fqdn
            using errcode = 'P0002',
                  hint = 'Register it with: pgbackman -C "register_backup_server <hostname> <domain> <remarks>", or set backup_server in the agent configuration.';
    end if;
    if v_status = 'STOPPED' then
        raise exception 'backup server % is STOPPED', p_fqdn
            using errcode = '55000', hint = 'Set it RUNNING with: pgbackman -C "update_backup_server <SrvID> \"\" --status RUNNING".';
    end if;
    perform api.acting_for(v_id);   -- an agent role of another server stops here, at its start
    return v_id;
end $$;

-- What an agent caches: its definitions with everything needed to run them without the catalog.
create view api.agent_definitions as
select d.def_id, d.backup_server_id, d.pgsql_node_id, n.fqdn as node_fqdn, n.pgport, n.admin_user, n.admin_dbname,
       n.sslmode, n.status as node_status, api.node_config_value(n.node_id, 'node_profile') as node_profile,
       api.node_config_value(n.node_id, 'pgnode_backup_partition') as node_backup_partition,
       d.dbname, d.minutes_cron, d.hours_cron, d.day_month_cron, d.month_cron, d.weekday_cron,
       d.backup_code, d.retention_period::text as retention_period, d.retention_redundancy,
       d.extra_backup_parameters, d.job_status, d.dump_format, d.dump_jobs, d.compression_level,
       extract(epoch from d.max_runtime)::float8 as max_runtime_seconds,
       extract(epoch from d.lock_wait_timeout)::float8 as lock_wait_timeout_seconds,
       d.client_major, d.updated, d.registered,
       d.checkpoint, d.max_rate, extract(epoch from d.wal_wait_timeout)::float8 as wal_wait_seconds,
       api.node_config_value(n.node_id, 'pause_recovery_on_standby')::boolean as pause_recovery_on_standby,
       extract(epoch from api.node_config_value(n.node_id, 'max_recovery_pause')::interval)::float8 as max_recovery_pause_seconds,
       -- Where its sets go (V19): its own repository, else its server's primary, else NULL
       -- (the server's backup_dir).
       coalesce(d.repository_id, (select s.repository_id from public.backup_server s
                                   where s.server_id = d.backup_server_id)) as repository_id,
       -- What its sets are encrypted to (sql/35_encryption.sql): NULL plain, [] no key (fails).
       api.definition_recipients(d.def_id) as encryption_recipients
  from public.backup_definition d
  join public.pgsql_node n on n.node_id = d.pgsql_node_id;

-- Records that the agent fires a scheduled instant. Returns no row when that instant was already
-- recorded (the agent restarted: a scheduled instant runs once), or when the definition is no
-- longer an ACTIVE definition of this server on a RUNNING node.
create function api.record_scheduled_job(p_server bigint, p_def_id bigint, p_scheduled_for timestamptz,
                                         p_agent text, p_lease interval)
returns table (job_id bigint, attempt integer)
language plpgsql as $$
begin
    perform api.acting_for(p_server);
    return query
    insert into public.job as j (kind, backup_server_id, pgsql_node_id, def_id, scheduled_for, not_before, state,
                                 attempt, claimed_by, claimed_at, lease_expires_at, heartbeat_at)
    select 'BACKUP', p_server, d.pgsql_node_id, d.def_id, p_scheduled_for, p_scheduled_for, 'RUNNING',
           1, p_agent, now(), now() + p_lease, now()
      from public.backup_definition d
      join public.pgsql_node n on n.node_id = d.pgsql_node_id
     -- A stale cache (definition moved, stopped or deleted, node stopped) records nothing.
     where d.def_id = p_def_id and d.backup_server_id = p_server and d.job_status = 'ACTIVE' and n.status = 'RUNNING'
    on conflict (def_id, scheduled_for) where scheduled_for is not null do nothing
    returning j.job_id, j.attempt;
end $$;

-- Claims due ad hoc jobs of this server, of the kinds the agent runs, never more than
-- p_per_node RUNNING jobs of this server against one node (scheduled ones included).
-- SKIP LOCKED: two claimers never get the same row; the per-node count is serialised by a
-- transaction-level advisory lock per server.
create function api.claim_jobs(p_server bigint, p_agent text, p_lease interval, p_limit integer,
                               p_per_node integer, p_kinds text[])
returns table (job_id bigint, kind text, attempt integer, def_id bigint, snapshot_id bigint,
               restore_def bigint, bck_id bigint, pgsql_node_id bigint)
language plpgsql as $$
begin
    perform api.acting_for(p_server);
    perform pg_advisory_xact_lock(hashtext('pgbackman.claim'), p_server::integer);
    return query
    with running as (
        select r.pgsql_node_id, count(*) as n from public.job r
         where r.backup_server_id = p_server and r.state = 'RUNNING' group by r.pgsql_node_id
    ), candidates as (
        select c.job_id from (
            select j.job_id, j.not_before,
                   row_number() over (partition by j.pgsql_node_id order by j.not_before, j.job_id)
                     + coalesce(r.n, 0) as slot
              from public.job j left join running r on r.pgsql_node_id = j.pgsql_node_id
             where j.backup_server_id = p_server and j.state = 'QUEUED' and j.not_before <= now()
               and j.kind = any (p_kinds)
        ) c
         where c.slot <= p_per_node
         order by c.not_before, c.job_id
         limit p_limit
    ), due as (
        select j.job_id from public.job j where j.job_id in (select cd.job_id from candidates cd)
         for update skip locked
    ), claimed as (
        update public.job j set state = 'RUNNING', attempt = j.attempt + 1, claimed_by = p_agent, claimed_at = now(),
                                lease_expires_at = now() + p_lease, heartbeat_at = now()
          from due where j.job_id = due.job_id
        returning j.job_id, j.kind, j.attempt, j.def_id, j.snapshot_id, j.restore_def, j.bck_id, j.pgsql_node_id
    ), snaps as (
        update public.snapshot_definition sd set status = 'RUNNING'
          from claimed c where sd.snapshot_id = c.snapshot_id
    )
    select * from claimed;
end $$;

-- Extends the lease and records progress; returns true when the job should be cancelled.
create function api.heartbeat(p_job_id bigint, p_attempt integer, p_progress_bytes bigint, p_lease interval)
returns boolean language plpgsql as $$
declare
    v_cancel boolean;
begin
    perform api.acting_for_job(p_job_id);
    -- A job marked LOST while its agent could not reach the catalog is still ours if nobody
    -- re-claimed it (same attempt): it goes back to RUNNING instead of being killed.
    update public.job set heartbeat_at = now(), lease_expires_at = now() + p_lease, state = 'RUNNING',
                          finished_at = null, error_message = null,
                          progress_bytes = coalesce(p_progress_bytes, progress_bytes)
     where job_id = p_job_id and attempt = p_attempt and state in ('RUNNING', 'LOST')
    returning cancel_requested into v_cancel;
    if not found then
        -- Lost, cancelled or re-claimed meanwhile: the agent must stop.
        return true;
    end if;
    return v_cancel;
end $$;

-- The next scheduled instant that a definition is expected to have run by (for overdue checks)
-- is computed by the agent; the catalog only stores results.

-- Records the result of a backup job exactly once. p_result is the agent's outcome (see
-- crates/agent/src/job.rs): status, times, files, versions, error fields. Returns the BckID;
-- a replayed report returns the BckID of the first one.
create function api.report_backup(p_job_id bigint, p_attempt integer, p_result jsonb)
returns bigint language plpgsql as $$
declare
    v_job public.job%rowtype;
    v_bck bigint;
    v_status text := p_result ->> 'execution_status';
    v_def public.backup_definition%rowtype;
    v_snap public.snapshot_definition%rowtype;
begin
    perform api.acting_for_job(p_job_id);
    -- Lock first, then look: two concurrent reports of one job both end with its BckID.
    select * into v_job from public.job where job_id = p_job_id for update;
    if not found then
        raise exception 'job % does not exist', p_job_id using errcode = 'P0002';
    end if;
    -- Generic failure reports (interrupted or unclaimable jobs) of restore jobs go where they belong.
    if v_job.kind = 'RESTORE' then
        return api.report_restore(p_job_id, p_attempt, p_result);
    end if;
    if v_job.kind = 'CLONE' then   -- sql/89_clones.sql
        return api.report_clone(p_job_id, p_attempt, p_result);
    end if;
    if v_job.kind in ('VERIFY', 'DRILL') then   -- sql/55_verify.sql
        perform api.report_verification(p_job_id, p_attempt, p_result || '{"state": "ERROR", "level": 0}');
        return v_job.bck_id;
    end if;
    select bck_id into v_bck from public.backup_catalog where job_id = p_job_id;
    if found then
        return v_bck;   -- replayed report: already recorded
    end if;
    if v_job.attempt <> p_attempt or v_job.state not in ('RUNNING', 'LOST') or v_job.kind not in ('BACKUP', 'SNAPSHOT') then
        -- PB001: a report that must be dropped, not retried.
        raise exception 'stale report for job % (attempt %, state %; current attempt %)', p_job_id, p_attempt, v_job.state, v_job.attempt
            using errcode = 'PB001', hint = 'Another attempt owns this job, or it is not running; the report is discarded.';
    end if;
    perform api.check_choice('execution status', v_status, array['SUCCEEDED', 'ERROR', 'CANCELLED']);
    if v_job.def_id is not null then
        select * into v_def from public.backup_definition where def_id = v_job.def_id;
    end if;
    if v_job.snapshot_id is not null then
        select * into v_snap from public.snapshot_definition where snapshot_id = v_job.snapshot_id;
    end if;
    insert into public.backup_catalog (
        job_id, def_id, snapshot_id, backup_server_id, pgsql_node_id, dbname, backup_code, procpid, started, finished,
        backup_dir, pg_dump_file, pg_dump_file_size, pg_dump_log_file, pg_dump_roles_file, pg_dump_roles_file_size,
        pg_dump_dbconfig_file, pg_dump_dbconfig_file_size, manifest_file, total_size, files, checksum, dbname_size,
        execution_status, execution_method, error_step, error_exit_status, error_message, error_stderr_tail,
        role_list, pgsql_node_release, pg_dump_release, client_version, server_version, dump_format, compression,
        command, phase_timings, table_row_counts, verification_level, verification_state, verified_at,
        verification_error, note, repository_id, object_prefix, encrypted_with)
    values (
        p_job_id, v_job.def_id, v_job.snapshot_id, v_job.backup_server_id,
        coalesce(v_job.pgsql_node_id, v_def.pgsql_node_id, v_snap.pgsql_node_id),
        coalesce(v_def.dbname, v_snap.dbname, ''), coalesce(v_def.backup_code, v_snap.backup_code),
        (p_result ->> 'procpid')::integer,
        (p_result ->> 'started')::timestamptz, (p_result ->> 'finished')::timestamptz,
        p_result ->> 'backup_dir', p_result ->> 'dump_file', (p_result ->> 'dump_file_size')::bigint, p_result ->> 'log_file',
        p_result ->> 'roles_file', (p_result ->> 'roles_file_size')::bigint,
        p_result ->> 'dbconfig_file', (p_result ->> 'dbconfig_file_size')::bigint, p_result ->> 'manifest_file',
        coalesce((p_result ->> 'total_size')::bigint, 0), coalesce(p_result -> 'files', '[]'),
        p_result ->> 'checksum', (p_result ->> 'database_size')::bigint,
        v_status,
        case when v_job.snapshot_id is not null then 'AT' when v_job.scheduled_for is not null then 'CRON' else 'MANUAL' end,
        p_result ->> 'error_step', (p_result ->> 'error_exit_status')::integer, p_result ->> 'error_message',
        p_result ->> 'error_stderr_tail',
        coalesce(array(select jsonb_array_elements_text(p_result -> 'role_list')), '{}'),
        p_result ->> 'server_major', p_result ->> 'client_major', p_result ->> 'client_version', p_result ->> 'server_version',
        p_result ->> 'dump_format', p_result ->> 'compression', p_result ->> 'command',
        coalesce(p_result -> 'phase_timings', '{}'), p_result -> 'table_row_counts',
        coalesce((p_result ->> 'verification_level')::smallint, 0),
        coalesce(p_result ->> 'verification_state', 'UNVERIFIED'),
        case when (p_result ->> 'verification_level')::int > 0 then (p_result ->> 'finished')::timestamptz end,
        p_result ->> 'verification_error', p_result ->> 'note',
        (p_result ->> 'repository_id')::bigint, p_result ->> 'object_prefix',
        api.reported_encryption(p_result))
    returning bck_id into v_bck;
    perform api.after_backup_verification(v_bck);   -- sql/55_verify.sql: alert when levels 1/2 failed
    if coalesce(v_def.backup_code, '') = 'BASEBACKUP' and p_result ? 'base_backup' then
        perform api.record_base_backup(v_bck, p_result -> 'base_backup');   -- sql/87_base_backups.sql
    end if;
    update public.job set state = case v_status when 'SUCCEEDED' then 'SUCCEEDED' when 'CANCELLED' then 'CANCELLED' else 'FAILED' end,
                          finished_at = (p_result ->> 'finished')::timestamptz, error_message = p_result ->> 'error_message',
                          progress_bytes = coalesce((p_result ->> 'total_size')::bigint, progress_bytes)
     where job_id = p_job_id;
    if v_job.snapshot_id is not null then
        update public.snapshot_definition set status = case v_status when 'SUCCEEDED' then 'SUCCEEDED' when 'CANCELLED' then 'CANCELLED' else 'ERROR' end
         where snapshot_id = v_job.snapshot_id;
    end if;
    if v_job.state = 'LOST' then
        -- Not lost after all: its agent could not reach the catalog in time (or ran the fire
        -- offline after a recording that timed out but committed). An alert saying it was lost
        -- that nobody has mailed yet is withdrawn; the result says what happened.
        delete from public.alert a where a.job_id = p_job_id and a.alert_type = 'LOST_JOB' and a.state = 'QUEUED';
    end if;
    if v_status = 'ERROR' then
        insert into public.alert (alert_type, backup_server_id, pgsql_node_id, ref_id, bck_id, job_id, dbname,
                                  execution_status, error_message, sendto)
        select case when v_job.snapshot_id is not null then 'SNAPSHOT' else 'BACKUP' end, c.backup_server_id, c.pgsql_node_id,
               coalesce(c.def_id, c.snapshot_id), c.bck_id, p_job_id, c.dbname, c.execution_status,
               concat_ws(': ', c.error_step, c.error_message), api.node_config_value(c.pgsql_node_id, 'logs_email')
          from public.backup_catalog c where c.bck_id = v_bck;
    end if;
    return v_bck;
end $$;

-- Jobs whose agent stopped heartbeating: whoever notices first marks them lost.
create function api.mark_lost_jobs() returns integer
language plpgsql as $$
declare
    v integer;
begin
    with lost as (
        update public.job set state = 'LOST', finished_at = now(),
                              error_message = format('lease expired at %s: agent %s stopped heartbeating', lease_expires_at, claimed_by)
         where state = 'RUNNING' and lease_expires_at < now()
        returning job_id, backup_server_id, pgsql_node_id, def_id, snapshot_id, error_message
    ), snaps as (
        update public.snapshot_definition sd set status = 'ERROR' from lost where sd.snapshot_id = lost.snapshot_id
    ), alerts as (
        insert into public.alert (alert_type, backup_server_id, pgsql_node_id, ref_id, job_id, execution_status, error_message, sendto)
        select 'LOST_JOB', backup_server_id, pgsql_node_id, coalesce(def_id, snapshot_id), job_id, 'LOST', error_message,
               coalesce(api.node_config_value(pgsql_node_id, 'logs_email'), '')
          from lost
    )
    select count(*) into v from lost;
    return v;
end $$;

create function api.run_backup_definition_now(p_def_id bigint) returns bigint
language plpgsql as $$
declare
    v_def public.backup_definition%rowtype;
    v_id bigint;
begin
    select * into v_def from public.backup_definition where def_id = p_def_id;
    if not found then
        raise exception 'backup definition DefID % does not exist', p_def_id
            using errcode = 'P0002', hint = 'show_backup_definitions lists the definitions.';
    end if;
    if v_def.job_status = 'DELETED' then
        raise exception 'backup definition DefID % is DELETED', p_def_id
            using errcode = '55000', hint = 'Set it ACTIVE with update_backup_definition first.';
    end if;
    if (select status from public.pgsql_node where node_id = v_def.pgsql_node_id) = 'STOPPED' then
        raise exception 'PgSQL node % is STOPPED', api.node_fqdn(v_def.pgsql_node_id)
            using errcode = '55000', hint = 'Set it RUNNING with update_pgsql_node to back it up.';
    end if;
    insert into public.job (kind, backup_server_id, pgsql_node_id, def_id, not_before)
    values ('BACKUP', v_def.backup_server_id, v_def.pgsql_node_id, p_def_id, now())
    returning job_id into v_id;
    return v_id;
end $$;

create function api.register_snapshot_definition(
    p_server text, p_node text, p_dbname text, p_at_time timestamptz, p_code text, p_retention_period text,
    p_extra text, p_tag text, p_client_major integer, p_remarks text)
returns bigint language plpgsql as $$
declare
    v_server bigint := api.server_id(p_server);
    v_node bigint := api.node_id(p_node);
    v_code text := upper(coalesce(nullif(btrim(p_code), ''), api.node_config_value(v_node, 'backup_code')));
    v_id bigint;
begin
    perform api.check_choice('backup code', v_code, array['FULL', 'SCHEMA', 'DATA', 'CLUSTER', 'GLOBALS']);
    if (select status from public.pgsql_node where node_id = v_node) = 'STOPPED' then
        raise exception 'PgSQL node % is STOPPED', api.node_fqdn(v_node)
            using errcode = '55000', hint = 'Set it RUNNING with update_pgsql_node to take snapshots of it.';
    end if;
    if v_code not in ('CLUSTER', 'GLOBALS') and coalesce(p_dbname, '') = '' then
        raise exception 'no database given for a % snapshot', v_code
            using errcode = '22023', hint = 'Name a database, or use backup code CLUSTER / GLOBALS for the whole cluster.';
    end if;
    if p_client_major is not null and p_client_major not between 9 and 99 then
        raise exception 'pg_dump release % is not a PostgreSQL major version', p_client_major
            using errcode = '22023', hint = 'Give a major version such as 15 or 16, at least the node''s own.';
    end if;
    insert into public.snapshot_definition (backup_server_id, pgsql_node_id, dbname, at_time, backup_code,
                                            retention_period, extra_backup_parameters, tag, client_major, remarks, status)
    values (v_server, v_node, case when v_code in ('CLUSTER', 'GLOBALS') then '' else coalesce(p_dbname, '') end,
            coalesce(p_at_time, now()), v_code,
            api.check_interval('retention period', coalesce(nullif(btrim(p_retention_period), ''), api.node_config_value(v_node, 'retention_period'))),
            coalesce(p_extra, api.node_config_value(v_node, 'extra_backup_parameters')),
            coalesce(nullif(p_tag, ''), upper(substr(md5(random()::text), 1, 9))), p_client_major, coalesce(p_remarks, ''), 'QUEUED')
    returning snapshot_id into v_id;
    insert into public.job (kind, backup_server_id, pgsql_node_id, snapshot_id, not_before)
    values ('SNAPSHOT', v_server, v_node, v_id, coalesce(p_at_time, now()));
    return v_id;
end $$;

create function api.cancel_job(p_job_id bigint) returns text
language plpgsql as $$
declare
    v_state text;
begin
    select state into v_state from public.job where job_id = p_job_id for update;
    if not found then
        raise exception 'job % does not exist', p_job_id using errcode = 'P0002', hint = 'show_jobs_queue lists the jobs.';
    end if;
    if v_state = 'QUEUED' then
        update public.job set state = 'CANCELLED', finished_at = now(), error_message = 'cancelled before it started' where job_id = p_job_id;
        update public.snapshot_definition s set status = 'CANCELLED' from public.job j where j.job_id = p_job_id and s.snapshot_id = j.snapshot_id;
        return 'CANCELLED';
    elsif v_state = 'RUNNING' then
        update public.job set cancel_requested = true where job_id = p_job_id;
        return 'CANCELLING';
    end if;
    raise exception 'job % has already ended (%)', p_job_id, v_state
        using errcode = '55000', hint = 'Only QUEUED or RUNNING jobs can be cancelled.';
end $$;
