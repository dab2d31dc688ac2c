-- Backup servers and PgSQL nodes: registration, updates, deletion, configuration.

-- The configured default domain is appended to short host names only: an IP address, a socket
-- directory or a name that already has a dot is complete as given.
create function api.default_domain(p_hostname text, p_default text) returns text
language sql immutable as $$
    select case when btrim(coalesce(p_hostname, '')) ~ '[.:/]' then '' else coalesce(p_default, '') end
$$;

create function api.register_backup_server(p_hostname text, p_domain text, p_status text, p_remarks text)
returns bigint language plpgsql as $$
declare
    v_id bigint;
    -- NULL: the default domain; '' (explicit): no domain.
    v_domain text := coalesce(btrim(p_domain), api.default_domain(p_hostname, (select value from public.backup_server_default_config where parameter = 'domain')));
    v_status text := upper(coalesce(nullif(btrim(p_status), ''), (select value from public.backup_server_default_config where parameter = 'backup_server_status')));
begin
    perform api.check_host_name('hostname', btrim(p_hostname), 'server');
    perform api.check_host_name('domain', v_domain, 'domain');
    perform api.check_choice('status', v_status, array['RUNNING', 'STOPPED']);
    if exists (select 1 from public.backup_server
                where lower(fqdn) = lower(case when v_domain = '' then btrim(p_hostname) else btrim(p_hostname) || '.' || v_domain end)) then
        raise exception 'backup server % is already registered', case when v_domain = '' then btrim(p_hostname) else btrim(p_hostname) || '.' || v_domain end
            using errcode = '23505', hint = 'show_backup_servers lists it; update_backup_server changes it.';
    end if;
    insert into public.backup_server (hostname, domain_name, status, remarks)
    values (btrim(p_hostname), v_domain, v_status, coalesce(p_remarks, ''))
    returning server_id into v_id;
    insert into public.backup_server_config (server_id, parameter, value)
    select v_id, parameter, value from public.backup_server_default_config
     where parameter not in ('domain', 'backup_server_status');
    return v_id;
end $$;

create function api.update_backup_server(p_ref text, p_status text, p_remarks text)
returns bigint language plpgsql as $$
declare
    v_id bigint := api.server_id(p_ref);
begin
    if nullif(btrim(p_status), '') is not null then
        perform api.check_choice('status', upper(btrim(p_status)), array['RUNNING', 'STOPPED']);
    end if;
    update public.backup_server
       set status = coalesce(upper(nullif(btrim(p_status), '')), status),
           remarks = coalesce(p_remarks, remarks)
     where server_id = v_id;
    return v_id;
end $$;

create function api.delete_backup_server(p_ref text) returns bigint
language plpgsql as $$
declare
    v_id bigint := api.server_id(p_ref);
    v_defs bigint; v_cat bigint; v_snap bigint; v_jobs bigint;
begin
    select count(*) into v_defs from public.backup_definition where backup_server_id = v_id;
    select count(*) into v_cat from public.backup_catalog where backup_server_id = v_id;
    select count(*) into v_snap from public.snapshot_definition where backup_server_id = v_id;
    select count(*) into v_jobs from public.job where backup_server_id = v_id and state in ('QUEUED', 'RUNNING');
    if v_defs + v_cat + v_snap + v_jobs > 0 then
        raise exception 'backup server % is still in use', api.server_fqdn(v_id)
            using errcode = '23503',
                  detail = format('%s backup definitions, %s catalog entries, %s snapshot definitions, %s open jobs refer to it.', v_defs, v_cat, v_snap, v_jobs),
                  hint = 'Move its definitions with move_backup_definition or delete them (force-deletion removes their backups) first.';
    end if;
    delete from public.job where backup_server_id = v_id;
    delete from public.catalog_entries_to_delete where backup_server_id = v_id;
    delete from public.backup_server where server_id = v_id;
    return v_id;
end $$;

create function api.update_backup_server_config(p_ref text, p_parameter text, p_value text)
returns bigint language plpgsql as $$
declare
    v_id bigint := api.server_id(p_ref);
    v_value text := api.check_config_value('server', p_parameter, p_value);
begin
    if p_parameter in ('domain', 'backup_server_status') then
        raise exception '"%" is a default for new servers, not a per-server setting', p_parameter
            using errcode = '22023', hint = 'Change it with update_backup_server_default_config.';
    end if;
    insert into public.backup_server_config (server_id, parameter, value) values (v_id, p_parameter, v_value)
    on conflict (server_id, parameter) do update set value = excluded.value;
    return v_id;
end $$;

create function api.update_backup_server_default_config(p_parameter text, p_value text)
returns text language plpgsql as $$
declare
    v_value text := api.check_config_value('server', p_parameter, p_value);
begin
    update public.backup_server_default_config set value = v_value where parameter = p_parameter;
    return v_value;
end $$;

create function api.register_pgsql_node(p_hostname text, p_domain text, p_port integer, p_admin_user text,
                                        p_admin_dbname text, p_sslmode text, p_status text, p_remarks text)
returns bigint language plpgsql as $$
declare
    v_id bigint;
    v_domain text := coalesce(btrim(p_domain), api.default_domain(p_hostname, api.node_config_value(null, 'domain')));
    v_port integer := coalesce(p_port, api.node_config_value(null, 'pgport')::integer);
    v_status text := upper(coalesce(nullif(btrim(p_status), ''), api.node_config_value(null, 'pgsql_node_status')));
    v_sslmode text := lower(coalesce(nullif(btrim(p_sslmode), ''), api.node_config_value(null, 'sslmode')));
begin
    perform api.check_host_name('hostname', btrim(p_hostname), 'node');
    -- An IP address or a socket directory takes no domain.
    if v_domain <> '' and btrim(p_hostname) ~ '[:/]' then
        raise exception 'PgSQL node % is an address or a socket directory: it takes no domain', api.q(btrim(p_hostname))
            using errcode = '22023', hint = 'Give "" as the domain.';
    end if;
    perform api.check_host_name('domain', v_domain, 'domain');
    perform api.check_int('port', v_port::text, 1, 65535);
    perform api.check_choice('status', v_status, array['RUNNING', 'STOPPED']);
    perform api.check_choice('sslmode', v_sslmode, array['disable', 'allow', 'prefer', 'require', 'verify-ca', 'verify-full']);
    if exists (select 1 from public.pgsql_node
                where lower(fqdn) = lower(case when v_domain = '' then btrim(p_hostname) else btrim(p_hostname) || '.' || v_domain end)
                  and pgport = v_port) then
        raise exception 'PgSQL node % port % is already registered',
              case when v_domain = '' then btrim(p_hostname) else btrim(p_hostname) || '.' || v_domain end, v_port
            using errcode = '23505', hint = 'show_pgsql_nodes lists it; update_pgsql_node changes it.';
    end if;
    insert into public.pgsql_node (hostname, domain_name, pgport, admin_user, admin_dbname, sslmode, status, remarks)
    values (btrim(p_hostname), v_domain, v_port,
            coalesce(nullif(btrim(p_admin_user), ''), api.node_config_value(null, 'admin_user')),
            coalesce(nullif(btrim(p_admin_dbname), ''), api.node_config_value(null, 'admin_dbname')),
            v_sslmode, v_status, coalesce(p_remarks, ''))
    returning node_id into v_id;
    insert into public.pgsql_node_config (node_id, parameter, value)
    select v_id, parameter, replace(value, '%%pgnode%%', v_id::text) from public.pgsql_node_default_config
     where parameter not in ('domain', 'pgport', 'admin_user', 'admin_dbname', 'sslmode', 'pgsql_node_status');
    return v_id;
end $$;

create function api.update_pgsql_node(p_ref text, p_port integer, p_admin_user text, p_admin_dbname text,
                                      p_sslmode text, p_status text, p_remarks text)
returns bigint language plpgsql as $$
declare
    v_id bigint := api.node_id(p_ref);
begin
    if p_port is not null then perform api.check_int('port', p_port::text, 1, 65535); end if;
    if nullif(btrim(p_status), '') is not null then
        perform api.check_choice('status', upper(btrim(p_status)), array['RUNNING', 'STOPPED']);
    end if;
    if nullif(btrim(p_sslmode), '') is not null then
        perform api.check_choice('sslmode', lower(btrim(p_sslmode)), array['disable', 'allow', 'prefer', 'require', 'verify-ca', 'verify-full']);
    end if;
    update public.pgsql_node
       set pgport = coalesce(p_port, pgport),
           admin_user = coalesce(nullif(btrim(p_admin_user), ''), admin_user),
           admin_dbname = coalesce(nullif(btrim(p_admin_dbname), ''), admin_dbname),
           sslmode = coalesce(lower(nullif(btrim(p_sslmode), '')), sslmode),
           status = coalesce(upper(nullif(btrim(p_status), '')), status),
           remarks = coalesce(p_remarks, remarks)
     where node_id = v_id;
    return v_id;
exception when unique_violation then
    raise exception 'another PgSQL node already uses port % on that host', p_port
        using errcode = '23505', hint = 'show_pgsql_nodes lists the nodes.';
end $$;

create function api.delete_pgsql_node(p_ref text) returns bigint
language plpgsql as $$
declare
    v_id bigint := api.node_id(p_ref);
    v_defs bigint; v_cat bigint; v_snap bigint;
begin
    select count(*) into v_defs from public.backup_definition where pgsql_node_id = v_id;
    select count(*) into v_cat from public.backup_catalog where pgsql_node_id = v_id;
    select count(*) into v_snap from public.snapshot_definition where pgsql_node_id = v_id;
    if v_defs + v_cat + v_snap > 0 then
        raise exception 'PgSQL node % is still in use', api.node_fqdn(v_id)
            using errcode = '23503',
                  detail = format('%s backup definitions, %s catalog entries, %s snapshot definitions refer to it.', v_defs, v_cat, v_snap),
                  hint = 'Delete its definitions first: delete_backup_definition_dbname ... force-deletion also removes their backups.';
    end if;
    -- Every backup server removes the node's directory (if it has one) at its next maintenance.
    insert into public.pgsql_node_to_delete (backup_server_id, pgsql_node_id, backup_partition)
    select s.server_id, v_id, api.node_config_value(v_id, 'pgnode_backup_partition') from public.backup_server s
    on conflict do nothing;
    delete from public.job where pgsql_node_id = v_id and state not in ('QUEUED', 'RUNNING');
    delete from public.pgsql_node where node_id = v_id;
    return v_id;
end $$;

create function api.update_pgsql_node_config(p_ref text, p_parameter text, p_value text)
returns bigint language plpgsql as $$
declare
    v_id bigint := api.node_id(p_ref);
    v_value text := api.check_config_value('node', p_parameter, p_value);
begin
    if p_parameter in ('domain', 'pgport', 'admin_user', 'admin_dbname', 'sslmode', 'pgsql_node_status') then
        raise exception '"%" is a default for new nodes, not a per-node setting', p_parameter
            using errcode = '22023', hint = 'Change the node itself with update_pgsql_node, or the default with update_pgsql_node_default_config.';
    end if;
    insert into public.pgsql_node_config (node_id, parameter, value)
    values (v_id, p_parameter, replace(v_value, '%%pgnode%%', v_id::text))
    on conflict (node_id, parameter) do update set value = excluded.value;
    return v_id;
end $$;

create function api.update_pgsql_node_default_config(p_parameter text, p_value text)
returns text language plpgsql as $$
declare
    v_value text := api.check_config_value('node', p_parameter, p_value);
begin
    update public.pgsql_node_default_config set value = v_value where parameter = p_parameter;
    return v_value;
end $$;
