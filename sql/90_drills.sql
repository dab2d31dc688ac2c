-- Physical restore drills (issue 12; verification level 3 of base backups). run_restore_drill
-- of a BASEBACKUP set queues a DRILL job on the backup server that holds it, without a drill
-- node: the agent restores the base backup and the WAL after it into a scratch instance of its
-- own (no clone row: a drill is not a clone anybody uses), to a point chosen at random inside
-- the recoverable window after the backup, confirms what recovery reached, runs pg_amcheck,
-- removes the scratch instance and reports through api.report_verification (sql/55_verify.sql)
-- like logical drills. Retention counts a base backup toward a definition's redundancy only
-- when it is good (api.base_backup_counts).

-- Queues the drill of base backup p_bck_id (called by api.run_restore_drill). An open drill
-- of the same backup is returned instead of a second one. The job has no node: it touches no
-- production node (the claim counts it with the VERIFY jobs, which only read files).
create function api.run_physical_drill(p_bck_id bigint) returns bigint
language plpgsql as $$
declare
    v_b public.base_backup%rowtype;
    v_server bigint;
    v_job bigint;
begin
    select * into v_b from public.base_backup where bck_id = p_bck_id;
    if not found or v_b.state <> 'SUCCEEDED' then
        raise exception 'BckID % is not a succeeded base backup (%)', p_bck_id, coalesce(v_b.state, 'no base backup row')
            using errcode = '55000', hint = 'show_restore_points NODE lists the base backups that can be restored.';
    end if;
    select backup_server_id into v_server from public.backup_catalog where bck_id = p_bck_id;
    select j.job_id into v_job from public.job j
     where j.bck_id = p_bck_id and j.kind = 'DRILL' and j.state in ('QUEUED', 'RUNNING')
     order by j.job_id limit 1;
    if found then
        return v_job;
    end if;
    insert into public.job (kind, backup_server_id, pgsql_node_id, bck_id, not_before)
    values ('DRILL', v_server, null, p_bck_id, now())
    returning job_id into v_job;
    return v_job;
end $$;

-- What the agent restores for a claimed physical DRILL job: a target LSN drawn at random
-- between the base backup's end (stop LSN) and the start of the last segment of the recovery
-- window that covers it (api.recovery_chains: so that the record recovery stops after is in
-- the archive), and A's plan for it (api.pitr_plan: the set, the WAL list with sha256s).
-- When the window ends in the backup's own last segment the target is the backup's
-- consistent point (immediate). Asked again at every attempt: a retry draws a new point.
create function api.physical_drill_plan(p_server bigint, p_job_id bigint)
returns jsonb language plpgsql volatile as $$
declare
    v_job public.job%rowtype;
    v_b public.base_backup%rowtype;
    v_ch record;
    v_hi pg_lsn;
    v_target pg_lsn;
    v_kind text;
    v_plan jsonb;
begin
    perform api.acting_for(p_server);
    select * into v_job from public.job where job_id = p_job_id and backup_server_id = p_server and kind = 'DRILL';
    if not found then
        raise exception 'job % is not a restore drill of backup server %', p_job_id, api.server_fqdn(p_server)
            using errcode = 'P0002', hint = 'The job was deleted meanwhile; nothing to do.';
    end if;
    select * into v_b from public.base_backup where bck_id = v_job.bck_id;
    if not found then
        raise exception 'BckID % is not a base backup', v_job.bck_id
            using errcode = 'P0002', hint = 'run_restore_drill of a logical set restores into a drill node.';
    end if;
    select c.* into v_ch from api.recovery_chains(v_b.pgsql_node_id) c where c.bck_id = v_b.bck_id;
    if v_ch.restorable_to_lsn is null then
        raise exception 'base backup BckID % of PgSQL node % has no recovery window: %', v_b.bck_id,
                        api.node_fqdn(v_b.pgsql_node_id), coalesce(v_ch.note, 'its WAL is not in the archive')
            using errcode = '55000',
                  hint = format('show_recovery_window %s --holes shows what is missing.', api.node_fqdn(v_b.pgsql_node_id));
    end if;
    v_hi := v_ch.restorable_to_lsn - v_b.seg_size::numeric;
    if v_hi > v_b.stop_lsn then
        v_kind := 'lsn';
        v_target := v_b.stop_lsn + floor(random() * (v_hi - v_b.stop_lsn)::float8)::numeric;
    else
        v_kind := 'immediate';
    end if;
    v_plan := api.pitr_plan(v_b.pgsql_node_id, v_b.bck_id, v_kind, v_target::text, 'latest');
    return jsonb_build_object(
        'bck_id', v_b.bck_id, 'node_id', v_b.pgsql_node_id, 'node', api.node_fqdn(v_b.pgsql_node_id),
        'target_kind', v_kind, 'target_lsn', v_target::text,
        'window_from_lsn', v_b.stop_lsn::text, 'window_to_lsn', v_ch.restorable_to_lsn::text,
        'admin_user', (select n.admin_user from public.pgsql_node n where n.node_id = v_b.pgsql_node_id),
        'node_major', (select split_part(bc.pgsql_node_release, '.', 1) from public.backup_catalog bc where bc.bck_id = v_b.bck_id),
        'plan', v_plan);
end $$;

-- Whether backup p_bck_id counts as good toward its definition's redundancy (retention keeps
-- the newest N good ones): a logical set always; a base backup when it is verified PASSED, no
-- restore drill of it failed last, and either its last drill passed or it is newer than the
-- newest base backup of its definition whose drill passed (a definition never drilled: every
-- verified one).
create function api.base_backup_counts(p_bck_id bigint) returns boolean
language sql stable as $$
    with c as (select * from public.backup_catalog where bck_id = p_bck_id),
    last_drill as (
        select distinct on (v.bck_id) v.bck_id, v.state
          from public.verification v
         where v.kind = 'DRILL' and v.state in ('PASSED', 'FAILED')
           and v.bck_id in (select o.bck_id from public.backup_catalog o, c
                             where o.def_id = c.def_id and o.backup_code = 'BASEBACKUP')
         order by v.bck_id, v.finished desc, v.verification_id desc
    ),
    newest_passed as (
        select max(o.finished) as at from public.backup_catalog o
          join last_drill l on l.bck_id = o.bck_id and l.state = 'PASSED'
    )
    select c.backup_code <> 'BASEBACKUP'
           or (c.verification_state = 'PASSED'
               and coalesce((select l.state from last_drill l where l.bck_id = c.bck_id), '') <> 'FAILED'
               and (coalesce((select l.state from last_drill l where l.bck_id = c.bck_id) = 'PASSED', false)
                    or c.finished > coalesce((select n.at from newest_passed n), '-infinity')))
      from c
$$;
