-- Restores. A restore definition records the DBA's decisions (backup, target node and database,
-- the existing database renamed out of the way or not, which roles are created — the others of
-- the backup's role list are reused as they are —, jobs, extra pg_restore parameters) and queues
-- a RESTORE job on the backup server that holds the set. The agent runs it, reports it once
-- (api.report_restore: idempotent on the job id, fenced by the attempt) and the restore catalog
-- keeps everything about the run.

create function api.register_restore_definition(
    p_at_time timestamptz, p_bck_id bigint, p_node text, p_target_dbname text, p_renamed_dbname text,
    p_extra text, p_roles_to_restore text[], p_jobs integer, p_decompression text,
    p_acknowledge_nonempty boolean, p_remarks text)
returns bigint language plpgsql as $$
declare
    v_bck public.backup_catalog%rowtype;
    v_node bigint := api.node_id(p_node);
    v_target text := coalesce(p_target_dbname, '');
    v_renamed text := nullif(coalesce(p_renamed_dbname, ''), '');
    v_roles text[] := coalesce(p_roles_to_restore, '{}');
    v_jobs integer := coalesce(p_jobs, 1);
    v_decompression text := lower(coalesce(nullif(btrim(p_decompression), ''), 'auto'));
    v_unknown text[];
    v_id bigint;
begin
    select * into v_bck from public.backup_catalog where bck_id = p_bck_id;
    if not found then
        raise exception 'BckID % does not exist', p_bck_id
            using errcode = 'P0002', hint = 'show_backup_catalog lists the backups.';
    end if;
    if v_bck.backup_dir is null and v_bck.note like 'imported from PgBackMan%' then
        raise exception 'BckID % is a PgBackMan 1.x backup: pgbackman does not restore it', p_bck_id
            using errcode = '55000',
                  hint = 'Restore it by hand: psql -f its USERS and DBCONFIG files, then pg_restore -d DBNAME its dump directory; show_backup_details lists the files.';
    end if;
    -- A set in a repository (V19) restores from its objects, read by the agent of its server.
    if v_bck.execution_status <> 'SUCCEEDED' or (v_bck.backup_dir is null and v_bck.repository_id is null) then
        raise exception 'BckID % cannot be restored: its backup ended %', p_bck_id, v_bck.execution_status
            using errcode = '55000',
                  hint = format('Pick a SUCCEEDED backup of the same database: show_backup_catalog all all "%s" all SUCCEEDED.', v_bck.dbname);
    end if;
    if v_bck.retention_state = 'DELETING' then
        raise exception 'BckID % is being deleted by retention', p_bck_id
            using errcode = '55000', hint = 'Pick a newer backup: show_backup_catalog lists them.';
    end if;
    if (select status from public.backup_server where server_id = v_bck.backup_server_id) = 'STOPPED' then
        raise exception 'backup server % that holds BckID % is STOPPED', api.server_fqdn(v_bck.backup_server_id), p_bck_id
            using errcode = '55000', hint = 'The restore runs on the server that holds the files: set it RUNNING with update_backup_server.';
    end if;
    if (select status from public.pgsql_node where node_id = v_node) = 'STOPPED' then
        raise exception 'target PgSQL node % is STOPPED', api.node_fqdn(v_node)
            using errcode = '55000', hint = 'Set it RUNNING with update_pgsql_node, or restore onto another node.';
    end if;
    -- A set whose files no longer match their checksums (level 1) or whose archive does not read
    -- back (level 2) is refused now, not after a job was queued for it.
    if v_bck.verification_state = 'FAILED' and v_bck.verification_level in (1, 2) then
        raise exception 'BckID % failed verification level %: %', p_bck_id, v_bck.verification_level,
                        coalesce(v_bck.verification_error, 'see show_backup_details')
            using errcode = '55000',
                  hint = format('Restore another backup of "%s" (show_backup_catalog shows each one''s verification), or run verify_backup %s again if the set was repaired.', v_bck.dbname, p_bck_id);
    end if;
    if v_bck.backup_code = 'BASEBACKUP' then
        raise exception 'BckID % is a base backup: restore_backup restores logical sets only', p_bck_id
            using errcode = '0A000',
                  hint = 'Point-in-time restores of base backups come with the next release; show_backup_details lists its files, LSNs and timeline for a restore by hand.';
    end if;
    if v_bck.backup_code in ('CLUSTER', 'GLOBALS') then
        if v_target <> '' or v_renamed is not null or cardinality(v_roles) > 0 then
            raise exception 'BckID % is a % backup: it restores the whole cluster, with no target database, rename or role choice', p_bck_id, v_bck.backup_code
                using errcode = '22023', hint = 'Leave the target database empty; --acknowledge-nonempty allows a target cluster that already has databases or roles.';
        end if;
    else
        if v_target = '' then
            raise exception 'no target database given for BckID %', p_bck_id
                using errcode = '22023', hint = format('Name the database to create, e.g. "%s".', v_bck.dbname);
        end if;
        if p_acknowledge_nonempty then
            raise exception '--acknowledge-nonempty is for CLUSTER and GLOBALS restores'
                using errcode = '22023', hint = 'A database restore never touches an existing database: rename it out of the way instead.';
        end if;
        if v_renamed = v_target then
            raise exception 'the existing database cannot be renamed to its own name "%"', v_target
                using errcode = '22023', hint = 'Give another name, or leave it empty for <dbname>_<timestamp>.';
        end if;
        select array_agg(r order by r) into v_unknown from unnest(v_roles) r where not (r = any (v_bck.role_list));
        if v_unknown is not null then
            raise exception 'role(s) % are not in the role list of BckID %', array_to_string(v_unknown, ', '), p_bck_id
                using errcode = '22023', hint = format('Roles of BckID %s: %s.', p_bck_id, array_to_string(v_bck.role_list, ', '));
        end if;
    end if;
    if octet_length(v_target) > 63 or octet_length(coalesce(v_renamed, '')) > 63 then
        raise exception 'database name "%" is longer than 63 bytes', case when octet_length(v_target) > 63 then v_target else v_renamed end
            using errcode = '22023', hint = 'PostgreSQL would cut it: use a shorter name.';
    end if;
    if v_jobs not between 1 and 64 then
        raise exception 'restore jobs % is not valid', v_jobs using errcode = '22023', hint = 'Use 1 to 64.';
    end if;
    perform api.check_choice('decompression', v_decompression, array['auto', 'stream', 'file', 'tee']);
    insert into public.restore_definition (backup_server_id, target_pgsql_node_id, bck_id, target_dbname, renamed_dbname,
                                           roles_to_restore, extra_restore_parameters, restore_jobs, acknowledge_nonempty,
                                           at_time, status, remarks, decompression)
    values (v_bck.backup_server_id, v_node, p_bck_id, v_target, v_renamed, v_roles,
            coalesce(p_extra, api.node_config_value(v_node, 'extra_restore_parameters')), v_jobs,
            coalesce(p_acknowledge_nonempty, false), coalesce(p_at_time, now()), 'QUEUED', coalesce(p_remarks, ''),
            v_decompression)
    returning restore_def into v_id;
    insert into public.job (kind, backup_server_id, pgsql_node_id, restore_def, bck_id, not_before)
    values ('RESTORE', v_bck.backup_server_id, v_node, v_id, p_bck_id, coalesce(p_at_time, now()));
    return v_id;
end $$;

-- What the agent needs to run a claimed RESTORE job: the set, the decisions and the target node.
create function api.agent_restore(p_job_id bigint)
returns table (job_id bigint, restore_def bigint, bck_id bigint, backup_code text, backup_dir text,
               source_dbname text, role_list text[], roles_to_restore text[], target_node_id bigint,
               node_fqdn text, pgport integer, admin_user text, admin_dbname text, sslmode text,
               target_dbname text, renamed_dbname text, extra_restore_parameters text, restore_jobs integer,
               decompression text, acknowledge_nonempty boolean, is_drill boolean, backup_pg_release text,
               repository_id bigint, object_prefix text)
language plpgsql stable as $$
begin
    perform api.acting_for_job(p_job_id);
    return query
    select j.job_id, rd.restore_def, b.bck_id, b.backup_code, b.backup_dir, b.dbname, b.role_list, rd.roles_to_restore,
           n.node_id, n.fqdn, n.pgport, n.admin_user, n.admin_dbname, n.sslmode, rd.target_dbname, rd.renamed_dbname,
           rd.extra_restore_parameters, rd.restore_jobs, rd.decompression, rd.acknowledge_nonempty, rd.is_drill,
           b.pg_dump_release, b.repository_id, b.object_prefix
      from public.job j
      join public.restore_definition rd on rd.restore_def = j.restore_def
      join public.backup_catalog b on b.bck_id = rd.bck_id
      join public.pgsql_node n on n.node_id = rd.target_pgsql_node_id
     where j.job_id = p_job_id and j.kind = 'RESTORE';
    if not found then
        raise exception 'job % is not a restore job, or its restore definition or backup is gone', p_job_id
            using errcode = 'P0002', hint = 'show_jobs_queue and show_restore_definitions show what is left.';
    end if;
end $$;

-- Records the result of a restore job exactly once; returns the RestoreID (of the first report
-- when replayed). p_result is the agent's outcome (crates/agent/src/restore_job.rs).
create function api.report_restore(p_job_id bigint, p_attempt integer, p_result jsonb)
returns bigint language plpgsql as $$
declare
    v_job public.job%rowtype;
    v_rd public.restore_definition%rowtype;
    v_bck public.backup_catalog%rowtype;
    v_id bigint;
    v_status text := p_result ->> 'execution_status';
begin
    perform api.acting_for_job(p_job_id);
    select * into v_job from public.job where job_id = p_job_id for update;
    if not found then
        raise exception 'job % does not exist', p_job_id using errcode = 'P0002';
    end if;
    select restore_id into v_id from public.restore_catalog where job_id = p_job_id;
    if found then
        return v_id;   -- replayed report
    end if;
    if v_job.attempt <> p_attempt or v_job.state not in ('RUNNING', 'LOST') or v_job.kind <> 'RESTORE' then
        raise exception 'stale report for job % (attempt %, state %; current attempt %)', p_job_id, p_attempt, v_job.state, v_job.attempt
            using errcode = 'PB001', hint = 'Another attempt owns this job, or it is not running; the report is discarded.';
    end if;
    perform api.check_choice('execution status', v_status, array['SUCCEEDED', 'ERROR', 'CANCELLED']);
    select * into v_rd from public.restore_definition where restore_def = v_job.restore_def;
    select * into v_bck from public.backup_catalog where bck_id = coalesce(v_rd.bck_id, v_job.bck_id);
    insert into public.restore_catalog (
        job_id, restore_def, bck_id, backup_server_id, target_pgsql_node_id, procpid, source_dbname, target_dbname,
        renamed_dbname, started, finished, restore_log_file, execution_status, error_step, error_exit_status,
        error_message, error_stderr_tail, role_list, roles_created, roles_reused, target_pgsql_node_release,
        backup_pg_release, client_version, flags, is_drill, row_count_check, backup_code, command, phase_timings,
        restored_size, cleanup)
    values (
        p_job_id, v_job.restore_def, v_bck.bck_id, v_job.backup_server_id,
        coalesce(v_rd.target_pgsql_node_id, v_job.pgsql_node_id),
        (p_result ->> 'procpid')::integer, coalesce(v_bck.dbname, ''), coalesce(v_rd.target_dbname, ''),
        coalesce(p_result ->> 'renamed_dbname', v_rd.renamed_dbname),
        (p_result ->> 'started')::timestamptz, (p_result ->> 'finished')::timestamptz, p_result ->> 'log_file',
        v_status, p_result ->> 'error_step', (p_result ->> 'error_exit_status')::integer, p_result ->> 'error_message',
        p_result ->> 'error_stderr_tail', coalesce(v_bck.role_list, '{}'),
        coalesce(array(select jsonb_array_elements_text(p_result -> 'roles_created')), '{}'),
        coalesce(array(select jsonb_array_elements_text(p_result -> 'roles_reused')), '{}'),
        p_result ->> 'target_server_version', coalesce(p_result ->> 'backup_client_version', v_bck.pg_dump_release),
        p_result ->> 'client_version', coalesce(p_result -> 'flags', '{}'), coalesce(v_rd.is_drill, false),
        p_result -> 'row_count_check', v_bck.backup_code, p_result ->> 'command',
        coalesce(p_result -> 'phase_timings', '{}'), (p_result ->> 'restored_size')::bigint, p_result ->> 'cleanup')
    returning restore_id into v_id;
    update public.job set state = case v_status when 'SUCCEEDED' then 'SUCCEEDED' when 'CANCELLED' then 'CANCELLED' else 'FAILED' end,
                          finished_at = (p_result ->> 'finished')::timestamptz, error_message = p_result ->> 'error_message',
                          progress_bytes = coalesce((p_result ->> 'bytes_restored')::bigint, progress_bytes)
     where job_id = p_job_id;
    update public.restore_definition
       set status = case v_status when 'SUCCEEDED' then 'SUCCEEDED' when 'CANCELLED' then 'CANCELLED' else 'ERROR' end
     where restore_def = v_job.restore_def;
    -- A set found damaged (verification level 1) is the backup's verdict, not only this job's.
    if v_status = 'ERROR' and v_bck.bck_id is not null then
        perform api.record_restore_verification(p_job_id, v_bck.bck_id, (p_result ->> 'started')::timestamptz,
                                                (p_result ->> 'finished')::timestamptz, p_result -> 'verification');
    end if;
    if v_status = 'ERROR' then
        insert into public.alert (alert_type, backup_server_id, pgsql_node_id, ref_id, bck_id, restore_id, job_id, dbname,
                                  execution_status, error_message, sendto)
        select 'RESTORE', c.backup_server_id, c.target_pgsql_node_id, c.restore_def, c.bck_id, c.restore_id, p_job_id,
               c.target_dbname, c.execution_status, concat_ws(': ', c.error_step, c.error_message),
               api.node_config_value(c.target_pgsql_node_id, 'logs_email')
          from public.restore_catalog c where c.restore_id = v_id;
    end if;
    return v_id;
end $$;

-- The state of a restore definition follows its job (a job cancelled while queued, or lost
-- with its agent, never reports).
create function api.restore_status(p_def_status text, p_job_state text) returns text
language sql immutable as $$
    select case p_job_state
               when 'QUEUED' then 'WAITING'
               when 'RUNNING' then 'RUNNING'
               when 'SUCCEEDED' then 'SUCCEEDED'
               when 'FAILED' then 'ERROR'
               when 'CANCELLED' then 'CANCELLED'
               when 'LOST' then 'LOST'
               else p_def_status
           end
$$;

create view api.show_restore_definitions as
select rd.restore_def as "RestoreDef", rd.registered as "Registered", rd.bck_id as "BckID",
       rd.backup_server_id as "SrvID", s.fqdn as "Backup server",
       rd.target_pgsql_node_id as "NodeID", n.fqdn as "Target PgSQL node", rd.target_dbname as "Target DBname",
       rd.renamed_dbname as "Renamed database", rd.roles_to_restore as "Roles to create", rd.at_time as "AT time",
       rd.restore_jobs as "Jobs", rd.decompression as "Decompression",
       rd.extra_restore_parameters as "Extra parameters", rd.acknowledge_nonempty as "Non-empty acknowledged",
       j.job_id as "JobID", api.restore_status(rd.status, j.state) as "Status", rd.remarks as "Remarks"
  from public.restore_definition rd
  join public.backup_server s on s.server_id = rd.backup_server_id
  join public.pgsql_node n on n.node_id = rd.target_pgsql_node_id
  left join lateral (select j.job_id, j.state from public.job j where j.restore_def = rd.restore_def
                      order by j.job_id desc limit 1) j on true;

create view api.show_restore_catalog as
select c.restore_id as "RestoreID", c.restore_def as "RestoreDef", c.bck_id as "BckID", c.finished as "Finished",
       c.backup_server_id as "SrvID", s.fqdn as "Backup server", c.target_pgsql_node_id as "NodeID",
       n.fqdn as "Target PgSQL node", c.target_dbname as "Target DBname", c.backup_code as "Code",
       c.duration::text as "Duration", c.execution_status as "Status"
  from public.restore_catalog c
  join public.backup_server s on s.server_id = c.backup_server_id
  join public.pgsql_node n on n.node_id = c.target_pgsql_node_id;

create view api.show_restores_in_progress as
select rd.restore_def as "RestoreDef", rd.registered as "Registered", rd.bck_id as "BckID",
       rd.backup_server_id as "SrvID", s.fqdn as "Backup server", rd.target_pgsql_node_id as "NodeID",
       n.fqdn as "Target PgSQL node", rd.target_dbname as "Target DBname", rd.at_time as "AT time",
       j.job_id as "JobID", j.claimed_by as "Agent", date_trunc('second', now() - j.claimed_at)::text as "Elapsed",
       j.progress_bytes as "Bytes restored"
  from public.restore_definition rd
  join public.job j on j.restore_def = rd.restore_def and j.state = 'RUNNING'
  join public.backup_server s on s.server_id = rd.backup_server_id
  join public.pgsql_node n on n.node_id = rd.target_pgsql_node_id;

create function api.show_restore_details(p_restore_id bigint)
returns table ("RestoreID" bigint, "JobID" bigint, "RestoreDef" bigint, "BckID" bigint, "Code" text,
               "Source DBname" text, "Target DBname" text, "Renamed DBname" text, "Backup server" text,
               "Target PgSQL node" text, "Execution status" text, "ProcPID" integer, "Registered" timestamptz,
               "Started" timestamptz, "Finished" timestamptz, "Duration" text, "Role list" text[],
               "Roles created" text[], "Roles reused" text[], "pg_dump release of the backup" text,
               "Target PgSQL node release" text, "Client version" text, "Flags" jsonb, "Command" text,
               "Phase timings" jsonb, "Restored size" bigint, "Row count check" jsonb, "AT time" timestamptz,
               "Extra parameters" text, "Restore log file" text, "Failed step" text, "Exit status" integer,
               "Error message" text, "Stderr tail" text, "Cleanup" text)
language sql stable as $$
    select c.restore_id, c.job_id, c.restore_def, c.bck_id, c.backup_code, c.source_dbname, c.target_dbname,
           c.renamed_dbname, s.fqdn, n.fqdn, c.execution_status, c.procpid, c.registered, c.started, c.finished,
           c.duration::text, c.role_list, c.roles_created, c.roles_reused, c.backup_pg_release,
           c.target_pgsql_node_release, c.client_version, c.flags, c.command, c.phase_timings, c.restored_size,
           c.row_count_check, rd.at_time, rd.extra_restore_parameters, c.restore_log_file, c.error_step,
           c.error_exit_status, c.error_message, c.error_stderr_tail, c.cleanup
      from public.restore_catalog c
      join public.backup_server s on s.server_id = c.backup_server_id
      join public.pgsql_node n on n.node_id = c.target_pgsql_node_id
      left join public.restore_definition rd on rd.restore_def = c.restore_def
     where c.restore_id = p_restore_id
$$;
