-- Triggers: audit trail, change notification to the owning backup servers, bookkeeping columns.

-- Who: the database user plus what the client declared with set_config('pgbackman.os_user' /
-- 'pgbackman.command') in the same transaction (the shell does this for every mutating command).
create function api.audit_row() returns trigger
language plpgsql as $$
declare
    v_old jsonb := case when tg_op in ('UPDATE', 'DELETE') then to_jsonb(old) end;
    v_new jsonb := case when tg_op in ('INSERT', 'UPDATE') then to_jsonb(new) end;
    v_row jsonb := coalesce(v_new, v_old);
begin
    if tg_op = 'UPDATE' and v_old = v_new then
        return null;
    end if;
    insert into public.audit_log (os_user, client_host, application, command, table_name, operation, object_id, old_row, new_row)
    values (nullif(current_setting('pgbackman.os_user', true), ''),
            host(inet_client_addr()),
            nullif(current_setting('application_name', true), ''),
            nullif(current_setting('pgbackman.command', true), ''),
            tg_table_name, tg_op,
            coalesce(v_row ->> 'def_id', v_row ->> 'snapshot_id', v_row ->> 'restore_def',
                     v_row ->> 'node_id', v_row ->> 'server_id', v_row ->> 'repository_id', '') ||
              coalesce('/' || (v_row ->> 'parameter'), ''),
            v_old, v_new);
    return null;
end $$;

create trigger audit after insert or update or delete on public.backup_server for each row execute function api.audit_row();
create trigger audit after insert or update or delete on public.backup_server_config for each row execute function api.audit_row();
create trigger audit after insert or update or delete on public.backup_server_default_config for each row execute function api.audit_row();
create trigger audit after insert or update or delete on public.pgsql_node for each row execute function api.audit_row();
create trigger audit after insert or update or delete on public.pgsql_node_config for each row execute function api.audit_row();
create trigger audit after insert or update or delete on public.pgsql_node_default_config for each row execute function api.audit_row();
create trigger audit after insert or update or delete on public.backup_definition for each row execute function api.audit_row();
create trigger audit after insert or update or delete on public.snapshot_definition for each row execute function api.audit_row();
create trigger audit after insert or update or delete on public.restore_definition for each row execute function api.audit_row();
create trigger audit after insert or update or delete on public.encryption_key for each row execute function api.audit_row();

-- Agents LISTEN on pgbackman_server_<SrvID>. The payload only names the table: notifications are
-- hints (the tables are the truth), and identical payloads collapse within a transaction, so a
-- bulk change sends one notification per server.
create function api.notify_server(p_server bigint, p_table text) returns void
language sql as $$
    select pg_notify('pgbackman_server_' || p_server, json_build_object('table', p_table)::text)
$$;

create function api.notify_owner() returns trigger
language plpgsql as $$
begin
    if tg_op in ('INSERT', 'UPDATE') then
        perform api.notify_server(new.backup_server_id, tg_table_name);
    end if;
    if tg_op = 'DELETE' or (tg_op = 'UPDATE' and old.backup_server_id is distinct from new.backup_server_id) then
        perform api.notify_server(old.backup_server_id, tg_table_name);
    end if;
    return null;
end $$;

create trigger notify_owner after insert or update or delete on public.backup_definition for each row execute function api.notify_owner();
create trigger notify_owner after insert or update or delete on public.snapshot_definition for each row execute function api.notify_owner();
create trigger notify_owner after insert or update or delete on public.restore_definition for each row execute function api.notify_owner();
create trigger notify_owner after insert or update of state, cancel_requested on public.job for each row execute function api.notify_owner();

create function api.notify_owner_by_server_id() returns trigger
language plpgsql as $$
begin
    perform api.notify_server(coalesce(new.server_id, old.server_id), tg_table_name);
    return null;
end $$;

create trigger notify_owner after insert or update or delete on public.backup_server_config for each row execute function api.notify_owner_by_server_id();

-- A node's status or connection change matters to every server with a definition for it.
create function api.notify_node_servers() returns trigger
language plpgsql as $$
declare
    v_node bigint := coalesce(new.node_id, old.node_id);
begin
    perform api.notify_server(s, tg_table_name)
       from (select distinct backup_server_id as s from public.backup_definition where pgsql_node_id = v_node
             union
             select distinct backup_server_id from public.snapshot_definition where pgsql_node_id = v_node and status = 'WAITING'
             union
             select backup_server_id from public.pgsql_node_to_delete where pgsql_node_id = v_node) x;
    return null;
end $$;

create trigger notify_node_servers after update or delete on public.pgsql_node for each row execute function api.notify_node_servers();
create trigger notify_node_servers after insert or update or delete on public.pgsql_node_config for each row execute function api.notify_node_servers();

create function api.touch_updated() returns trigger
language plpgsql as $$
begin
    new.updated := now();
    return new;
end $$;

create trigger touch_updated before update on public.backup_server for each row execute function api.touch_updated();
create trigger touch_updated before update on public.pgsql_node for each row execute function api.touch_updated();

-- "registered" stays the creation time (PgBackMan overwrote it on every update); status changes
-- start the quarantine clock.
create function api.backup_definition_bookkeeping() returns trigger
language plpgsql as $$
begin
    new.registered := old.registered;
    new.updated := now();
    if new.job_status is distinct from old.job_status then
        new.status_changed_at := now();
    end if;
    return new;
end $$;

create trigger bookkeeping before update on public.backup_definition for each row execute function api.backup_definition_bookkeeping();
