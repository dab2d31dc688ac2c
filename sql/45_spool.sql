-- Replay of results an agent spooled while the catalog was unreachable.
--
-- A scheduled fire normally creates its job row first (api.record_scheduled_job). When the catalog
-- is down the agent runs the backup anyway and spools the result keyed by (definition, scheduled
-- instant). Replaying creates the job row exactly as the fire would have, then records the result
-- through api.report_backup, so the catalog ends as if it had never been down. Idempotent: the
-- unique (def_id, scheduled_for) index finds the same job, and report_backup returns the BckID of
-- a result already recorded.
create function api.report_offline_backup(p_server bigint, p_def_id bigint, p_scheduled_for timestamptz,
                                          p_agent text, p_result jsonb)
returns bigint language plpgsql as $$
declare
    v_job_id bigint;
    v_attempt integer;
    v_state text;
begin
    perform api.acting_for(p_server);
    -- The backup ran and its files exist: it is recorded even if the definition was stopped or
    -- moved during the outage (not recording it would leave files nobody knows about).
    insert into public.job as j (kind, backup_server_id, pgsql_node_id, def_id, scheduled_for, not_before, state,
                                 attempt, claimed_by, claimed_at, lease_expires_at, heartbeat_at)
    select 'BACKUP', p_server, d.pgsql_node_id, d.def_id, p_scheduled_for, p_scheduled_for, 'RUNNING',
           1, p_agent, coalesce((p_result ->> 'started')::timestamptz, p_scheduled_for),
           coalesce((p_result ->> 'finished')::timestamptz, now()), coalesce((p_result ->> 'finished')::timestamptz, now())
      from public.backup_definition d
     where d.def_id = p_def_id
    on conflict (def_id, scheduled_for) where scheduled_for is not null do nothing;

    select j.job_id, j.attempt, j.state into v_job_id, v_attempt, v_state
      from public.job j where j.def_id = p_def_id and j.scheduled_for = p_scheduled_for;
    if v_job_id is null then
        raise exception 'backup definition DefID % no longer exists: the backup it ran at % cannot be recorded',
                        p_def_id, p_scheduled_for
            using errcode = 'PB002',
                  hint = 'The backup set stays on the backup server; the agent keeps the result in its spool''s rejected directory.';
    end if;
    return api.report_backup(v_job_id, v_attempt, p_result);
end $$;
