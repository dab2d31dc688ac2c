-- Verification levels and restore drills.
--
-- Levels: 1 = every file matches the manifest's size and sha256 (and the manifest matches the
-- sha256 the catalog recorded), 2 = the archive's table of contents parses (pg_restore --list;
-- SQL sets: the zstd stream decodes with its checksum), 3 = a restore drill: the set restored
-- into a scratch database on a drill node, row counts compared with the counts taken at backup
-- time, the scratch database dropped. Levels 1 and 2 run after every backup (report_backup
-- records them); VERIFY jobs re-run them on demand; DRILL jobs run level 3 (after level 1).
--
-- backup_catalog keeps the latest verification that judged the backup (PASSED or FAILED) in
-- verification_level / verification_state / verified_at / verification_error; a drill that
-- could not run (ERROR: drill node down, ...) leaves it alone. public.verification keeps every
-- VERIFY and DRILL job's result.

-- The node drills of a backup restore into: the one asked for, else the backup server's
-- drill_node parameter.
create function api.drill_node_id(p_server bigint, p_node text) returns bigint
language plpgsql stable as $$
declare
    v_ref text := coalesce(nullif(btrim(p_node), ''), api.server_config_value(p_server, 'drill_node'));
    v_id bigint;
begin
    if coalesce(v_ref, '') = '' then
        raise exception 'no drill node for backup server %', api.server_fqdn(p_server)
            using errcode = '22023',
                  hint = format('Name the PgSQL node drills restore into: update_backup_server_config %s drill_node=<NodeID|FQDN>, or run_restore_drill <BckID> --node <NodeID|FQDN>.', api.server_fqdn(p_server));
    end if;
    v_id := api.node_id(v_ref);
    if (select status from public.pgsql_node where node_id = v_id) = 'STOPPED' then
        raise exception 'drill node % is STOPPED', api.node_fqdn(v_id)
            using errcode = '55000', hint = 'Set it RUNNING with update_pgsql_node, or name another drill node.';
    end if;
    return v_id;
end $$;

-- A backup that can be verified: it exists and succeeded (a failed run has no files).
create function api.verifiable_backup(p_bck_id bigint) returns public.backup_catalog
language plpgsql stable as $$
declare
    v public.backup_catalog%rowtype;
begin
    select * into v from public.backup_catalog where bck_id = p_bck_id;
    if not found then
        raise exception 'BckID % does not exist', p_bck_id
            using errcode = 'P0002', hint = 'show_backup_catalog lists the backups.';
    end if;
    if v.backup_dir is null and v.note like 'imported from PgBackMan%' then
        raise exception 'BckID % is a PgBackMan 1.x backup: it has no manifest to verify against', p_bck_id
            using errcode = '55000', hint = 'Verify a backup taken by pgbackman; pg_restore --list on its dump directory checks it by hand.';
    end if;
    if v.execution_status <> 'SUCCEEDED' or (v.backup_dir is null and v.repository_id is null) then
        raise exception 'BckID % has no backup set to verify (its run ended %)', p_bck_id, v.execution_status
            using errcode = '55000', hint = 'Only SUCCEEDED backups have files; show_backup_details shows why this one failed.';
    end if;
    if v.retention_state = 'DELETING' then
        raise exception 'BckID % is being deleted by retention', p_bck_id
            using errcode = '55000', hint = 'Verify a newer backup of the same database.';
    end if;
    return v;
end $$;

-- Queues one VERIFY job per backup, on the backup server that holds it. A backup with a
-- VERIFY job still open gets that job back (created = false), not a second one.
create function api.queue_verifications(p_bck_ids bigint[])
returns table (bck_id bigint, job_id bigint, created boolean)
language plpgsql as $$
declare
    v_id bigint;
    v_bck public.backup_catalog%rowtype;
    v_job bigint;
begin
    foreach v_id in array coalesce(p_bck_ids, '{}') loop
        v_bck := api.verifiable_backup(v_id);
        select j.job_id into v_job from public.job j
         where j.bck_id = v_id and j.kind = 'VERIFY' and j.state in ('QUEUED', 'RUNNING')
         order by j.job_id limit 1;
        if found then
            bck_id := v_id; job_id := v_job; created := false;
            return next;
            continue;
        end if;
        -- No node: a verification reads files on the backup server only, so it takes no slot of
        -- the per-node limit that protects production nodes.
        insert into public.job as nj (kind, backup_server_id, bck_id, not_before)
        values ('VERIFY', v_bck.backup_server_id, v_id, now())
        returning nj.job_id into v_job;
        bck_id := v_id; job_id := v_job; created := true;
        return next;
    end loop;
end $$;

-- Queues a restore drill of one backup on its backup server, restoring into p_node (NodeID or
-- FQDN) or the server's drill_node. Returns the JobID (an open drill of the same backup is
-- returned instead of a second one).
create function api.run_restore_drill(p_bck_id bigint, p_node text)
returns bigint language plpgsql as $$
declare
    v_bck public.backup_catalog%rowtype := api.verifiable_backup(p_bck_id);
    v_node bigint;
    v_job bigint;
begin
    if v_bck.backup_code = 'BASEBACKUP' then
        return api.run_physical_drill(p_bck_id);   -- sql/90_drills.sql: no drill node
    end if;
    if v_bck.backup_code not in ('FULL', 'SCHEMA') then
        raise exception 'BckID % is a % backup: drills restore one database with its schema', p_bck_id, v_bck.backup_code
            using errcode = '22023', hint = 'Drill a FULL or SCHEMA backup; verify_backup checks this one''s files and archive.';
    end if;
    v_node := api.drill_node_id(v_bck.backup_server_id, p_node);
    select j.job_id into v_job from public.job j
     where j.bck_id = p_bck_id and j.kind = 'DRILL' and j.state in ('QUEUED', 'RUNNING')
     order by j.job_id limit 1;
    if found then
        return v_job;
    end if;
    insert into public.job (kind, backup_server_id, pgsql_node_id, bck_id, not_before)
    values ('DRILL', v_bck.backup_server_id, v_node, p_bck_id, now())
    returning job_id into v_job;
    return v_job;
end $$;

-- Sets (or with NULL / '' clears) the drill schedule of a definition: a 5-field cron line,
-- validated by the shell (core::cron) and field by field here. Instants before now never fire.
create function api.update_drill_schedule(p_def_id bigint, p_schedule text)
returns bigint language plpgsql as $$
declare
    v_def public.backup_definition%rowtype;
    v_line text := nullif(regexp_replace(btrim(coalesce(p_schedule, '')), '\s+', ' ', 'g'), '');
    v_fields text[];
begin
    select * into v_def from public.backup_definition where def_id = p_def_id for update;
    if not found then
        raise exception 'backup definition DefID % does not exist', p_def_id
            using errcode = 'P0002', hint = 'show_backup_definitions lists the definitions.';
    end if;
    if v_line is not null then
        if v_def.backup_code not in ('FULL', 'SCHEMA', 'BASEBACKUP') then
            raise exception 'DefID % makes % backups: drills restore one database with its schema, or a base backup', p_def_id, v_def.backup_code
                using errcode = '22023', hint = 'Schedule drills on FULL, SCHEMA or BASEBACKUP definitions; verify_backup checks the others.';
        end if;
        v_fields := string_to_array(v_line, ' ');
        if cardinality(v_fields) <> 5 then
            raise exception 'drill schedule "%" is not a cron line of 5 fields', v_line
                using errcode = '22023', hint = 'Use minute hour day-of-month month day-of-week, e.g. "30 5 * * 0" (Sundays at 05:30).';
        end if;
        if v_def.backup_code <> 'BASEBACKUP' then   -- base backups drill on the backup server
            perform api.drill_node_id(v_def.backup_server_id, null);
        end if;
    end if;
    update public.backup_definition set drill_schedule = v_line, updated = now() where def_id = p_def_id;
    insert into public.drill_schedule_state (def_id, last_fire) values (p_def_id, now())
    on conflict (def_id) do update set last_fire = greatest(public.drill_schedule_state.last_fire, excluded.last_fire);
    return p_def_id;
end $$;

-- Drill schedules of a server's ACTIVE definitions on RUNNING nodes, with the last instant
-- fired. The agent evaluates the cron lines (in its time zone) and calls queue_scheduled_drill.
create function api.drill_schedules(p_server bigint)
returns table (def_id bigint, drill_schedule text, last_fire timestamptz)
language sql stable as $$
    select api.acting_for(p_server);
    select d.def_id, d.drill_schedule, coalesce(s.last_fire, d.updated, d.registered)
      from public.backup_definition d
      join public.pgsql_node n on n.node_id = d.pgsql_node_id
      left join public.drill_schedule_state s on s.def_id = d.def_id
     where d.backup_server_id = p_server and d.drill_schedule is not null
       and d.job_status = 'ACTIVE' and n.status = 'RUNNING'
     order by d.def_id
$$;

-- Fires the drill instant p_instant of a definition once: a drill of its newest successful
-- backup that is not known corrupt. Returns the JobID, or NULL when this instant (or a later
-- one) already fired. When nothing can be drilled (no backup yet, no drill node) a DRILL alert
-- says so and the instant counts as fired.
create function api.queue_scheduled_drill(p_server bigint, p_def_id bigint, p_instant timestamptz)
returns bigint language plpgsql as $$
declare
    v_def public.backup_definition%rowtype;
    v_bck bigint;
    v_job bigint;
begin
    perform api.acting_for(p_server);
    select * into v_def from public.backup_definition where def_id = p_def_id and backup_server_id = p_server;
    if not found or v_def.drill_schedule is null then
        return null;
    end if;
    insert into public.drill_schedule_state as s (def_id, last_fire) values (p_def_id, p_instant)
    on conflict (def_id) do update set last_fire = excluded.last_fire where s.last_fire < excluded.last_fire;
    if not found then
        return null;   -- already fired
    end if;
    select c.bck_id into v_bck from public.backup_catalog c
     where c.def_id = p_def_id and c.execution_status = 'SUCCEEDED' and c.retention_state = 'KEPT'
       and not (c.verification_state = 'FAILED' and c.verification_level <= 2)
     order by c.finished desc limit 1;
    if v_bck is null then
        insert into public.alert (alert_type, backup_server_id, pgsql_node_id, ref_id, dbname, execution_status, error_message, sendto)
        values ('DRILL', p_server, v_def.pgsql_node_id, p_def_id, v_def.dbname, 'ERROR',
                format('scheduled drill of DefID %s at %s: no successful backup to restore', p_def_id, p_instant),
                api.node_config_value(v_def.pgsql_node_id, 'logs_email'));
        return null;
    end if;
    begin
        v_job := api.run_restore_drill(v_bck, null);
    exception when others then
        insert into public.alert (alert_type, backup_server_id, pgsql_node_id, ref_id, bck_id, dbname, execution_status, error_message, sendto)
        values ('DRILL', p_server, v_def.pgsql_node_id, p_def_id, v_bck, v_def.dbname, 'ERROR',
                format('scheduled drill of DefID %s at %s: %s', p_def_id, p_instant, sqlerrm),
                api.node_config_value(v_def.pgsql_node_id, 'logs_email'));
        return null;
    end;
    return v_job;
end $$;

-- Everything the agent needs to run a claimed VERIFY or DRILL job.
create function api.verify_job_info(p_job_id bigint)
returns table (job_id bigint, kind text, bck_id bigint, backup_server_id bigint, backup_dir text, backup_code text,
               dbname text, source_node_id bigint, client_version text, manifest_sha256 text,
               table_row_counts jsonb, drill_node_id bigint, drill_node_fqdn text, drill_node_port integer,
               drill_admin_user text, drill_admin_dbname text, drill_sslmode text)
language sql stable as $$
    select api.acting_for_job(p_job_id);
    select j.job_id, j.kind, c.bck_id, j.backup_server_id, c.backup_dir, c.backup_code, c.dbname, c.pgsql_node_id,
           c.client_version,
           (select f ->> 'sha256' from jsonb_array_elements(c.files) f where f ->> 'name' = 'manifest.json' limit 1),
           c.table_row_counts, n.node_id, n.fqdn, n.pgport, n.admin_user, n.admin_dbname, n.sslmode
      from public.job j
      join public.backup_catalog c on c.bck_id = j.bck_id
      left join public.pgsql_node n on n.node_id = j.pgsql_node_id and j.kind = 'DRILL'
     where j.job_id = p_job_id
$$;

-- Alert for a verification that failed right after a backup (called by report_backup).
create function api.after_backup_verification(p_bck_id bigint) returns void
language sql as $$
    insert into public.alert (alert_type, backup_server_id, pgsql_node_id, ref_id, bck_id, job_id, dbname,
                              execution_status, error_message, sendto)
    select 'VERIFY', c.backup_server_id, c.pgsql_node_id, coalesce(c.def_id, c.snapshot_id), c.bck_id, c.job_id, c.dbname,
           'FAILED', format('verification level %s of BckID %s failed: %s', c.verification_level, c.bck_id, c.verification_error),
           api.node_config_value(c.pgsql_node_id, 'logs_email')
      from public.backup_catalog c
     where c.bck_id = p_bck_id and c.verification_state = 'FAILED'
$$;

-- Records the result of a VERIFY or DRILL job exactly once (idempotent on the job id, fenced by
-- the attempt: a stale report raises PB001 and must be dropped). p_result (see
-- crates/agent/src/verify_job.rs): state, level, started, finished, error_step, error_message,
-- error_stderr_tail, restore_seconds, scratch_dbname, details. Returns the recorded state.
create function api.report_verification(p_job_id bigint, p_attempt integer, p_result jsonb)
returns text language plpgsql as $$
declare
    v_job public.job%rowtype;
    v_prev text;
    v_state text := p_result ->> 'state';
    v_level smallint := coalesce((p_result ->> 'level')::smallint, 0);
    v_started timestamptz := coalesce((p_result ->> 'started')::timestamptz, now());
    v_finished timestamptz := coalesce((p_result ->> 'finished')::timestamptz, now());
    v_restore interval := make_interval(secs => (p_result ->> 'restore_seconds')::float8);
    v_error text := concat_ws(': ', p_result ->> 'error_step', p_result ->> 'error_message');
    v_bck public.backup_catalog%rowtype;
    v_restore_id bigint;
begin
    perform api.acting_for_job(p_job_id);
    select * into v_job from public.job where job_id = p_job_id for update;
    if not found then
        raise exception 'job % does not exist', p_job_id
            using errcode = 'P0002', hint = 'Its backup was deleted meanwhile; the report is discarded.';
    end if;
    select state into v_prev from public.verification where job_id = p_job_id;
    if found then
        return v_prev;   -- replayed report: already recorded
    end if;
    if v_job.kind not in ('VERIFY', 'DRILL') or v_job.attempt <> p_attempt or v_job.state not in ('RUNNING', 'LOST') then
        raise exception 'stale report for job % (attempt %, state %; current attempt %)', p_job_id, p_attempt, v_job.state, v_job.attempt
            using errcode = 'PB001', hint = 'Another attempt owns this job, or it is not running; the report is discarded.';
    end if;
    perform api.check_choice('verification state', v_state, array['PASSED', 'FAILED', 'ERROR', 'CANCELLED']);
    select * into v_bck from public.backup_catalog where bck_id = v_job.bck_id for update;
    insert into public.verification (job_id, bck_id, kind, level, state, started, finished, restore_duration,
                                     drill_node_id, scratch_dbname, error_step, error_message, error_stderr_tail, details)
    values (p_job_id, v_job.bck_id, v_job.kind, v_level, v_state, v_started, v_finished, v_restore,
            case when v_job.kind = 'DRILL' then v_job.pgsql_node_id end, p_result ->> 'scratch_dbname',
            p_result ->> 'error_step', p_result ->> 'error_message', p_result ->> 'error_stderr_tail',
            coalesce(p_result -> 'details', '{}'));
    -- Only a verdict on the backup changes what the catalog says about it.
    if v_state in ('PASSED', 'FAILED') then
        update public.backup_catalog
           set verification_level = v_level, verification_state = v_state, verified_at = v_finished,
               verification_error = case when v_state = 'FAILED' then v_error end,
               drill_duration = case when v_job.kind = 'DRILL' and v_restore is not null then v_restore else drill_duration end
         where bck_id = v_job.bck_id;
    end if;
    if v_job.kind = 'DRILL' and v_state <> 'CANCELLED' then
        insert into public.restore_catalog (job_id, bck_id, backup_server_id, target_pgsql_node_id, source_dbname,
                                            target_dbname, started, finished, execution_status, error_step,
                                            error_message, error_stderr_tail, role_list, is_drill, row_count_check,
                                            backup_pg_release, flags, backup_code, restored_size, roles_created)
        values (p_job_id, v_job.bck_id, v_job.backup_server_id, coalesce(v_job.pgsql_node_id, v_bck.pgsql_node_id),
                coalesce(v_bck.dbname, ''),
                coalesce(p_result ->> 'scratch_dbname', ''), v_started, v_finished,
                case v_state when 'PASSED' then 'SUCCEEDED' else 'ERROR' end,
                p_result ->> 'error_step', p_result ->> 'error_message', p_result ->> 'error_stderr_tail',
                coalesce(v_bck.role_list, '{}'), true, p_result -> 'details' -> 'row_counts',
                v_bck.pgsql_node_release, jsonb_build_object('scratch_dropped', p_result -> 'details' -> 'scratch_dropped',
                                                             'feed', p_result -> 'details' -> 'feed'),
                v_bck.backup_code, (p_result -> 'details' ->> 'restored_size')::bigint,
                coalesce(array(select jsonb_array_elements_text(p_result -> 'details' -> 'roles_created')), '{}'))
        returning restore_id into v_restore_id;
    end if;
    update public.job set state = case v_state when 'PASSED' then 'SUCCEEDED' when 'CANCELLED' then 'CANCELLED' else 'FAILED' end,
                          finished_at = v_finished,
                          error_message = case when v_state <> 'PASSED' then nullif(v_error, '') end
     where job_id = p_job_id;
    if v_state in ('FAILED', 'ERROR') then
        insert into public.alert (alert_type, backup_server_id, pgsql_node_id, ref_id, bck_id, restore_id, job_id, dbname,
                                  execution_status, error_message, sendto)
        values (v_job.kind, v_job.backup_server_id, coalesce(v_bck.pgsql_node_id, v_job.pgsql_node_id),
                coalesce(v_bck.def_id, v_bck.snapshot_id), v_job.bck_id, v_restore_id, p_job_id, coalesce(v_bck.dbname, ''),
                v_state,
                format('%s of BckID %s%s %s at level %s: %s',
                       case v_job.kind when 'DRILL' then 'restore drill' else 'verification' end, v_job.bck_id,
                       case when v_bck.backup_code = 'BASEBACKUP'
                            then format(' (base backup of PgSQL node %s)', api.node_fqdn(v_bck.pgsql_node_id)) else '' end,
                       case v_state when 'FAILED' then 'failed' else 'could not run' end, v_level, v_error),
                api.node_config_value(coalesce(v_bck.pgsql_node_id, v_job.pgsql_node_id), 'logs_email'));
    end if;
    return v_state;
end $$;

-- A restore job that found its set failing verification level 1 before it touched its target
-- (called by api.report_restore with the report's "verification" object: level, state,
-- error_step, error_message): recorded as verify_backup's result would be (history row of kind
-- RESTORE, the backup's latest verdict, a VERIFY alert), so that no later restore of the
-- backup is planned. Once per job (the job id is the key).
create function api.record_restore_verification(p_job_id bigint, p_bck_id bigint, p_started timestamptz,
                                                p_finished timestamptz, p_verification jsonb)
returns void language plpgsql as $$
declare
    v_bck public.backup_catalog%rowtype;
    v_level smallint := coalesce((p_verification ->> 'level')::smallint, 1);
    v_error text := concat_ws(': ', p_verification ->> 'error_step', p_verification ->> 'error_message');
begin
    if p_verification is null or jsonb_typeof(p_verification) <> 'object'
       or p_verification ->> 'state' is distinct from 'FAILED' then
        return;
    end if;
    select * into v_bck from public.backup_catalog where bck_id = p_bck_id for update;
    if not found then
        return;   -- the backup was deleted meanwhile: nothing to judge
    end if;
    insert into public.verification (job_id, bck_id, kind, level, state, started, finished,
                                     error_step, error_message, details)
    values (p_job_id, p_bck_id, 'RESTORE', v_level, 'FAILED', coalesce(p_started, now()), coalesce(p_finished, now()),
            p_verification ->> 'error_step', p_verification ->> 'error_message', '{}')
    on conflict (job_id) do nothing;
    if not found then
        return;   -- replayed
    end if;
    update public.backup_catalog
       set verification_level = v_level, verification_state = 'FAILED', verified_at = coalesce(p_finished, now()),
           verification_error = v_error
     where bck_id = p_bck_id;
    insert into public.alert (alert_type, backup_server_id, pgsql_node_id, ref_id, bck_id, job_id, dbname,
                              execution_status, error_message, sendto)
    values ('VERIFY', v_bck.backup_server_id, v_bck.pgsql_node_id, coalesce(v_bck.def_id, v_bck.snapshot_id), p_bck_id,
            p_job_id, v_bck.dbname, 'FAILED',
            format('verification of BckID %s failed at level %s (found by restore job %s): %s', p_bck_id, v_level, p_job_id, v_error),
            api.node_config_value(v_bck.pgsql_node_id, 'logs_email'));
end $$;

-- Verification history, newest first.
create view api.show_verifications as
select v.verification_id as "VerificationID", v.job_id as "JobID", v.bck_id as "BckID", v.kind as "Kind",
       v.level as "Level", v.state as "State", v.finished as "Finished", c.dbname as "DBname",
       date_trunc('millisecond', v.duration)::text as "Duration",
       date_trunc('millisecond', v.restore_duration)::text as "Restore time",
       n.fqdn as "Drill node", v.scratch_dbname as "Scratch database",
       concat_ws(': ', v.error_step, v.error_message) as "Error", v.details as "Details"
  from public.verification v
  left join public.backup_catalog c on c.bck_id = v.bck_id
  left join public.pgsql_node n on n.node_id = v.drill_node_id;
