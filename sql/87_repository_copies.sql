-- The second repository copy (issue 13; table in migrations/V23__repository_copies.sql). A set
-- stored in a repository is due for a copy when its definition (else its server) names a copy
-- repository other than the one holding it, and it has no VERIFIED copy there. The agent of the
-- set's server copies it at its maintenance pass (api.agent_pending_copies), verifies the copy
-- (level 1) and reports it (api.report_copy); a failed copy raises a MAINTENANCE alert and is
-- retried at the next pass. Retention deletes the copies with the set (the agent reads
-- backup_copy beside the set's own objects).

-- `set_copy_repository SERVER|DefID REPO|none`: where the sets of a server (its default) or of
-- one definition are copied.
create function api.set_copy_repository(p_target text, p_repository text) returns bigint
language plpgsql as $$
declare
    v_target text := btrim(coalesce(p_target, ''));
    v_repo bigint;
    v_id bigint;
begin
    if lower(btrim(coalesce(p_repository, ''))) not in ('', 'none', 'default') then
        v_repo := api.repository_id(p_repository);
    end if;
    if v_target ~ '^[0-9]{1,18}$' then
        v_id := v_target::bigint;
        if not exists (select 1 from public.backup_definition where def_id = v_id and job_status <> 'DELETED') then
            raise exception 'backup definition % does not exist', v_id
                using errcode = 'P0002', hint = 'show_backup_definitions lists them.';
        end if;
        if v_repo is not null and v_repo = (select coalesce(d.repository_id, s.repository_id)
                                              from public.backup_definition d
                                              join public.backup_server s on s.server_id = d.backup_server_id
                                             where d.def_id = v_id) then
            raise exception 'backup definition % stores its sets in repository % already', v_id, api.q(p_repository)
                using errcode = '22023', hint = 'A copy goes to another repository: show_repositories lists them.';
        end if;
        update public.backup_definition set copy_repository_id = v_repo where def_id = v_id;
    else
        v_id := api.server_id(v_target);
        if v_repo is not null and v_repo = (select repository_id from public.backup_server where server_id = v_id) then
            raise exception 'backup server % stores its sets in repository % already', v_target, api.q(p_repository)
                using errcode = '22023', hint = 'A copy goes to another repository: show_repositories lists them.';
        end if;
        update public.backup_server set copy_repository_id = v_repo where server_id = v_id;
    end if;
    return v_id;
end $$;

-- The copy repository of a set (its definition's, else its server's), when it differs from the
-- repository that holds it.
create function api.copy_repository_of(p_bck_id bigint) returns bigint
language sql stable as $$
    select r from (
        select coalesce(d.copy_repository_id, s.copy_repository_id) as r, c.repository_id as held
          from public.backup_catalog c
          join public.backup_server s on s.server_id = c.backup_server_id
          left join public.backup_definition d on d.def_id = c.def_id
         where c.bck_id = p_bck_id) x
     where r is distinct from held
$$;

-- The sets of this server due for a copy (never copied, or the last attempt failed), oldest first.
create function api.agent_pending_copies(p_server bigint)
returns table (bck_id bigint, repository_id bigint, object_prefix text, files jsonb,
               copy_repository_id bigint, attempts integer)
language plpgsql stable as $$
begin
    perform api.acting_for(p_server);
    return query
    select c.bck_id, c.repository_id, c.object_prefix, c.files, api.copy_repository_of(c.bck_id),
           coalesce(bc.attempts, 0)
      from public.backup_catalog c
      left join public.backup_copy bc on bc.bck_id = c.bck_id and bc.repository_id = api.copy_repository_of(c.bck_id)
     where c.backup_server_id = p_server and c.execution_status = 'SUCCEEDED'
       and c.repository_id is not null and c.retention_state is distinct from 'DELETING'
       and api.copy_repository_of(c.bck_id) is not null
       and coalesce(bc.state, 'FAILED') <> 'VERIFIED'
     order by c.bck_id;
end $$;

-- Records a copy: VERIFIED (it counts) or FAILED (an alert; retried at the next maintenance).
create function api.report_copy(p_server bigint, p_bck_id bigint, p_repository_id bigint,
                                p_verified boolean, p_error text) returns void
language plpgsql as $$
declare
    v_bck public.backup_catalog%rowtype;
begin
    perform api.acting_for(p_server);
    select * into v_bck from public.backup_catalog where bck_id = p_bck_id and backup_server_id = p_server;
    if not found then
        raise exception 'BckID % is not a set of backup server %', p_bck_id, p_server
            using errcode = 'P0002', hint = 'The set may have been deleted meanwhile: nothing to record.';
    end if;
    insert into public.backup_copy as b (bck_id, repository_id, object_prefix, state, error, verified)
    values (p_bck_id, p_repository_id, v_bck.object_prefix, case when p_verified then 'VERIFIED' else 'FAILED' end,
            case when p_verified then null else p_error end, case when p_verified then now() end)
    on conflict on constraint backup_copy_pkey do update
        set state = excluded.state, error = excluded.error, verified = excluded.verified,
            attempts = b.attempts + 1, updated = now();
    if not p_verified then
        insert into public.alert (alert_type, backup_server_id, pgsql_node_id, bck_id, execution_status, error_message, sendto)
        values ('MAINTENANCE', p_server, v_bck.pgsql_node_id, p_bck_id, 'COPY',
                format('the copy of BckID %s to repository %s failed: %s; it is retried at the next maintenance pass',
                       p_bck_id, (select name from public.repository where repository_id = p_repository_id), p_error),
                coalesce(api.node_config_value(v_bck.pgsql_node_id, 'logs_email'), ''));
    end if;
end $$;

-- show_backup_copies: every copy of a set in a second repository, and the sets still due.
create view api.show_backup_copies as
select c.bck_id as "BckID", c.dbname as "DBname", r0.name as "Repository", r.name as "Copy in",
       coalesce(bc.state, 'PENDING') as "State", coalesce(bc.attempts, 0) as "Attempts",
       bc.verified as "Verified", coalesce(bc.error, '') as "Error"
  from public.backup_catalog c
  join public.repository r0 on r0.repository_id = c.repository_id
  left join public.backup_copy bc on bc.bck_id = c.bck_id
  join public.repository r on r.repository_id = coalesce(bc.repository_id, api.copy_repository_of(c.bck_id))
 where c.repository_id is not null and c.execution_status = 'SUCCEEDED';
