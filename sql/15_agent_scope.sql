-- An agent acts only for its own backup server. Every agent API function starts with one of the
-- two checks below (sql/95_security.sql refuses to install an agent function without one).
--
-- Who is restricted: a login role holding the group role pgbackman_agent (`pgbackman db grant
-- ROLE agent --server NAME`, which also binds it to that server in public.agent_role,
-- migrations/V11). Only the owner and pgbackman_agent may execute agent functions, so everyone
-- else reaching these checks is the catalog owner, one of its members or a superuser: they act
-- for every server, as before roles existed. The check looks at session_user, the role that
-- logged in: inside a SECURITY DEFINER function current_user is the owner.

-- The servers the caller may act for; NULL when it may act for every server.
create function api.agent_scope() returns bigint[]
language plpgsql stable as $$
declare
    v_restricted boolean;
    v_bound bigint[];
begin
    select not r.rolsuper and not pg_has_role(session_user, n.nspowner, 'MEMBER')
           and exists (select 1 from pg_catalog.pg_roles g
                        where g.rolname = 'pgbackman_agent' and pg_has_role(session_user, g.oid, 'MEMBER'))
      into v_restricted
      from pg_catalog.pg_roles r, pg_catalog.pg_namespace n
     where r.rolname = session_user and n.nspname = 'api';
    if not coalesce(v_restricted, false) then
        return null;
    end if;
    select coalesce(array_agg(backup_server_id order by backup_server_id), '{}') into v_bound
      from public.agent_role where role_name = session_user;
    return v_bound;
end $$;

-- Raises 42501 unless the caller may act for backup server p_server.
create function api.acting_for(p_server bigint) returns void
language plpgsql stable as $$
declare
    v_bound bigint[] := api.agent_scope();
begin
    if v_bound is null or p_server = any (v_bound) then
        return;
    end if;
    if cardinality(v_bound) = 0 then
        raise exception 'catalog role % is not bound to any backup server, so it may not act for backup server %',
                        session_user, coalesce(api.server_fqdn(p_server), p_server::text)
            using errcode = '42501',
                  hint = format('As the catalog owner run: pgbackman db grant %s agent --server <FQDN of its backup server>', session_user);
    end if;
    raise exception 'catalog role % acts for backup server % only, not for %', session_user,
                    (select string_agg(coalesce(api.server_fqdn(s), s::text), ', ') from unnest(v_bound) s),
                    coalesce(api.server_fqdn(p_server), p_server::text)
        using errcode = '42501',
              hint = 'Each agent logs in with the role bound to its own server (backup_server and [catalog] conninfo in its configuration); '
                     || 'the catalog owner binds roles with: pgbackman db grant ROLE agent --server FQDN';
end $$;

-- The same check for a job: the server that owns it. An unknown job passes (the function then
-- reports it as unknown, as it did before).
create function api.acting_for_job(p_job_id bigint) returns void
language plpgsql stable as $$
declare
    v_server bigint;
begin
    if api.agent_scope() is null then
        return;
    end if;
    select backup_server_id into v_server from public.job where job_id = p_job_id;
    if v_server is not null then
        perform api.acting_for(v_server);
    end if;
end $$;
