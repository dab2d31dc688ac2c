-- Import from a PgBackMan 1.x catalog. Servers, nodes, their configuration and backup
-- definitions go through the ordinary register_* / update_* functions (so every rule applies);
-- these functions cover what has no API of its own: the mapping of old to new ids, snapshots
-- that already ran and the catalog rows of old backups.

-- What earlier imports from this source made: read once at the start of an import.
create function api.import_map_of(p_source text)
returns table (kind text, old_id bigint, new_id bigint)
language sql stable as $$
    select m.kind, m.old_id, m.new_id from public.import_map m where m.source = p_source
$$;

create function api.import_record(p_source text, p_kind text, p_old_id bigint, p_new_id bigint) returns bigint
language plpgsql as $$
begin
    insert into public.import_map (source, kind, old_id, new_id) values (p_source, p_kind, p_old_id, p_new_id);
    return p_new_id;
exception when unique_violation then
    raise exception 'PgBackMan % % was already imported from this catalog', lower(p_kind), p_old_id
        using errcode = '23505', hint = 'Nothing to do: a second import skips what the first one imported.';
end $$;

-- A PgBackMan snapshot. One whose time is still ahead is registered like a new one (it runs
-- then); one in the past is history: recorded with the status its catalog row gives
-- (p_status), never run again.
create function api.import_snapshot_definition(
    p_source text, p_old_id bigint, p_server bigint, p_node bigint, p_dbname text, p_at_time timestamptz,
    p_code text, p_retention_period text, p_extra text, p_tag text, p_status text, p_remarks text)
returns bigint language plpgsql as $$
declare
    v_id bigint;
    v_code text := upper(btrim(p_code));
begin
    perform api.check_choice('backup code', v_code, array['FULL', 'SCHEMA', 'DATA', 'CLUSTER', 'GLOBALS']);
    if p_at_time > now() then
        v_id := api.register_snapshot_definition(p_server::text, p_node::text, p_dbname, p_at_time, v_code,
                                                 p_retention_period, p_extra, p_tag, null, p_remarks);
    else
        perform api.check_choice('snapshot status', p_status, array['SUCCEEDED', 'ERROR', 'CANCELLED']);
        insert into public.snapshot_definition (backup_server_id, pgsql_node_id, dbname, at_time, backup_code,
                                                retention_period, extra_backup_parameters, tag, status, remarks)
        values (p_server, p_node, case when v_code in ('CLUSTER', 'GLOBALS') then '' else coalesce(p_dbname, '') end,
                p_at_time, v_code, api.check_interval('retention period', p_retention_period),
                coalesce(p_extra, ''), coalesce(nullif(p_tag, ''), 'PGBACKMAN' || p_old_id), p_status,
                coalesce(p_remarks, ''))
        returning snapshot_id into v_id;
    end if;
    return api.import_record(p_source, 'SNAPSHOT', p_old_id, v_id);
end $$;

-- A PgBackMan backup catalog row, under the definition or snapshot it was imported as. p_row
-- holds the old columns by name; server, node and code come from the owner, so a row can never
-- point elsewhere than its definition.
create function api.import_backup_catalog(p_source text, p_old_id bigint, p_def_id bigint, p_snapshot_id bigint,
                                          p_status text, p_row jsonb, p_note text)
returns bigint language plpgsql as $$
declare
    v_server bigint; v_node bigint; v_code text; v_dbname text;
    v_id bigint;
begin
    if p_def_id is not null then
        select backup_server_id, pgsql_node_id, backup_code, dbname into v_server, v_node, v_code, v_dbname
          from public.backup_definition where def_id = p_def_id;
    else
        select backup_server_id, pgsql_node_id, backup_code, dbname into v_server, v_node, v_code, v_dbname
          from public.snapshot_definition where snapshot_id = p_snapshot_id;
    end if;
    if v_server is null then
        raise exception 'PgBackMan BckID % has no imported definition or snapshot', p_old_id
            using errcode = 'P0002', hint = 'Its definition was not imported: see the other lines of the report.';
    end if;
    perform api.check_choice('execution status', p_status, array['SUCCEEDED', 'ERROR']);
    if p_row->>'started' is null then
        raise exception 'PgBackMan BckID % has no start time', p_old_id
            using errcode = '22023', hint = 'It cannot be dated, so it is not imported; it stays in the old catalog.';
    end if;
    insert into public.backup_catalog (
        def_id, snapshot_id, backup_server_id, pgsql_node_id, dbname, backup_code, procpid, started, finished,
        pg_dump_file, pg_dump_file_size, pg_dump_log_file, pg_dump_roles_file, pg_dump_roles_file_size,
        pg_dump_roles_log_file, pg_dump_dbconfig_file, pg_dump_dbconfig_file_size, pg_dump_dbconfig_log_file,
        global_log_file, total_size, execution_status, execution_method, error_message, role_list,
        pgsql_node_release, pg_dump_release, dump_format, note)
    values (
        p_def_id, p_snapshot_id, v_server, v_node,
        coalesce(nullif(p_row->>'dbname', 'template1'), v_dbname), v_code,
        (p_row->>'procpid')::integer, (p_row->>'started')::timestamptz,
        greatest((p_row->>'finished')::timestamptz, (p_row->>'started')::timestamptz),
        p_row->>'pg_dump_file', (p_row->>'pg_dump_file_size')::bigint, p_row->>'pg_dump_log_file',
        p_row->>'pg_dump_roles_file', (p_row->>'pg_dump_roles_file_size')::bigint, p_row->>'pg_dump_roles_log_file',
        p_row->>'pg_dump_dbconfig_file', (p_row->>'pg_dump_dbconfig_file_size')::bigint, p_row->>'pg_dump_dbconfig_log_file',
        p_row->>'global_log_file',
        coalesce((p_row->>'pg_dump_file_size')::bigint, 0) + coalesce((p_row->>'pg_dump_roles_file_size')::bigint, 0)
            + coalesce((p_row->>'pg_dump_dbconfig_file_size')::bigint, 0),
        p_status, case when p_def_id is not null then 'CRON' else 'AT' end,
        nullif(p_row->>'error_message', ''),
        coalesce((select array_agg(r) from jsonb_array_elements_text(p_row->'role_list') r), '{}'),
        p_row->>'pgsql_node_release', p_row->>'pg_dump_release',
        case when v_code in ('CLUSTER', 'GLOBALS') then 'pgbackman-1 sql' else 'pgbackman-1 directory' end,
        p_note)
    returning bck_id into v_id;
    return api.import_record(p_source, 'CATALOG', p_old_id, v_id);
end $$;

-- Many rows in one call (an old catalog holds tens of thousands): p_rows is a JSON array of
-- {old_id, def_id, snapshot_id, status, row, note}. A row the rules refuse is returned with the
-- reason (and not imported); the others are imported.
create function api.import_backup_catalog_rows(p_source text, p_rows jsonb)
returns table (old_id bigint, new_id bigint, error text)
language plpgsql as $$
declare
    r jsonb;
    v_hint text;
begin
    for r in select * from jsonb_array_elements(p_rows) loop
        old_id := (r->>'old_id')::bigint;
        begin
            new_id := api.import_backup_catalog(p_source, old_id, (r->>'def_id')::bigint, (r->>'snapshot_id')::bigint,
                                                r->>'status', r->'row', r->>'note');
            error := null;
        exception when others then
            get stacked diagnostics v_hint = pg_exception_hint;
            new_id := null;
            error := sqlerrm || coalesce(nullif(' HINT: ' || v_hint, ' HINT: '), '');
        end;
        return next;
    end loop;
end $$;
