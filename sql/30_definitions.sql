-- Backup definitions: register, update, delete (with or without force), move.

create function api.register_backup_definition(
    p_server text, p_node text, p_dbname text,
    p_minutes text, p_hours text, p_day_month text, p_month text, p_weekday text,
    p_code text, p_encryption boolean, p_retention_period text, p_retention_redundancy integer,
    p_extra text, p_job_status text, p_remarks text,
    -- A key name (sql/35_encryption.sql): encryption to that key. NULL: p_encryption decides
    -- (true: the server's encryption_key at run time), else the node's `encryption` value.
    p_encryption_key text default null)
returns bigint language plpgsql as $$
declare
    v_server bigint := api.server_id(p_server);
    v_node bigint := api.node_id(p_node);
    v_code text := upper(coalesce(nullif(btrim(p_code), ''), api.node_config_value(v_node, 'backup_code')));
    v_dbname text := coalesce(p_dbname, '');
    v_id bigint;
    v_column text;
    v_enc text := api.check_encryption_value(coalesce(p_encryption_key, p_encryption::text,
                                                      api.node_config_value(v_node, 'encryption')));
    v_key bigint := case when v_enc not in ('true', 'false') then api.encryption_key_id(v_enc) end;
begin
    if v_enc = 'true' and api.server_config_value(v_server, 'encryption_key') = '' then
        raise exception 'encryption=true needs an encryption key on backup server %, and it has none', api.server_fqdn(v_server)
            using errcode = '22023',
                  hint = 'Name a key (encryption=KEYNAME), or give the server one: update_backup_server_config ' || api.server_fqdn(v_server) || ' encryption_key=KEYNAME (register_encryption_key first).';
    end if;
    if v_enc <> 'false' and v_code = 'BASEBACKUP' then
        raise exception 'base backups are not encrypted yet'
            using errcode = '0A000', hint = 'Register the BASEBACKUP definition with encryption=false; logical definitions (FULL, SCHEMA, DATA, CLUSTER, GLOBALS) can be encrypted.';
    end if;
    perform api.check_choice('backup code', v_code, array['FULL', 'SCHEMA', 'DATA', 'CLUSTER', 'GLOBALS', 'BASEBACKUP']);
    if v_code in ('CLUSTER', 'GLOBALS', 'BASEBACKUP') then
        v_dbname := '';
    elsif v_dbname = '' then
        raise exception 'no database given for a % backup definition', v_code
            using errcode = '22023', hint = 'Name a database, or use backup code CLUSTER / GLOBALS (or BASEBACKUP) for the whole cluster.';
    end if;
    insert into public.backup_definition (
        backup_server_id, pgsql_node_id, dbname,
        minutes_cron, hours_cron, day_month_cron, month_cron, weekday_cron,
        backup_code, encryption, retention_period, retention_redundancy,
        extra_backup_parameters, job_status, remarks, compression_level, encryption_key_id)
    values (
        v_server, v_node, v_dbname,
        api.check_cron_field('minute', coalesce(nullif(btrim(p_minutes), ''), api.random_in_range(api.node_config_value(v_node, 'backup_minutes_interval')))),
        api.check_cron_field('hour', coalesce(nullif(btrim(p_hours), ''), api.random_in_range(api.node_config_value(v_node, 'backup_hours_interval')))),
        api.check_cron_field('day-of-month', coalesce(nullif(btrim(p_day_month), ''), api.node_config_value(v_node, 'backup_day_month_cron'))),
        api.check_cron_field('month', coalesce(nullif(btrim(p_month), ''), api.node_config_value(v_node, 'backup_month_cron'))),
        api.check_cron_field('day-of-week', coalesce(nullif(btrim(p_weekday), ''), api.node_config_value(v_node, 'backup_weekday_cron'))),
        v_code,
        v_enc <> 'false',
        api.check_interval('retention period', coalesce(nullif(btrim(p_retention_period), ''), api.node_config_value(v_node, 'retention_period'))),
        coalesce(p_retention_redundancy, api.node_config_value(v_node, 'retention_redundancy')::integer),
        coalesce(p_extra, api.node_config_value(v_node, 'extra_backup_parameters')),
        api.check_choice('job status', upper(coalesce(nullif(btrim(p_job_status), ''), api.node_config_value(v_node, 'backup_job_status'))), array['ACTIVE', 'STOPPED']),
        coalesce(p_remarks, ''),
        -- A base backup's tar is mostly data pages: zstd 1 stays under pg_basebackup -z's gzip
        -- size at about half of level 3's CPU, which sets its wall time (bench/README.md).
        case when v_code = 'BASEBACKUP' then 1 else 3 end,
        v_key)
    returning def_id into v_id;
    return v_id;
exception
    when unique_violation then
        raise exception 'an identical backup definition already exists for database "%" on node %', v_dbname, api.node_fqdn(v_node)
            using errcode = '23505',
                  hint = 'show_backup_definitions lists it; use another schedule, code or parameters, or update_backup_definition.';
    when check_violation then
        -- Name the value, not the constraint: the API validates the usual values, so this is the
        -- rare rest (autonamed constraints read <table>_<column>_check).
        get stacked diagnostics v_column = constraint_name;
        v_column := regexp_replace(v_column, '^backup_definition_(.*)_check[0-9]*$', '\1');
        raise exception 'backup definition for database % refused: the value of % is out of range', api.q(v_dbname), replace(v_column, '_', ' ')
            using errcode = '23514', hint = 'Check the value against help register_backup_definition (retention redundancy is 0 or more).';
end $$;

-- check_* helpers raise on NULL input for choices; wrap so NULL means "keep".
create function api.check_cron_field_or_null(p_what text, p_value text) returns text
language sql immutable as $$ select case when p_value is null then null else api.check_cron_field(p_what, p_value) end $$;

create function api.update_backup_definition(
    p_def_id bigint, p_minutes text, p_hours text, p_day_month text, p_month text, p_weekday text,
    p_retention_period text, p_retention_redundancy integer, p_extra text, p_job_status text, p_remarks text)
returns bigint language plpgsql as $$
begin
    if not exists (select 1 from public.backup_definition where def_id = p_def_id) then
        raise exception 'backup definition DefID % does not exist', p_def_id
            using errcode = 'P0002', hint = 'show_backup_definitions lists the definitions.';
    end if;
    if p_retention_redundancy is not null and p_retention_redundancy < 0 then
        raise exception 'retention redundancy must be 0 or more' using errcode = '22023';
    end if;
    -- Each field keeps its own column: PgBackMan swapped day-of-month and weekday here.
    update public.backup_definition set
        minutes_cron = coalesce(api.check_cron_field_or_null('minute', nullif(btrim(p_minutes), '')), minutes_cron),
        hours_cron = coalesce(api.check_cron_field_or_null('hour', nullif(btrim(p_hours), '')), hours_cron),
        day_month_cron = coalesce(api.check_cron_field_or_null('day-of-month', nullif(btrim(p_day_month), '')), day_month_cron),
        month_cron = coalesce(api.check_cron_field_or_null('month', nullif(btrim(p_month), '')), month_cron),
        weekday_cron = coalesce(api.check_cron_field_or_null('day-of-week', nullif(btrim(p_weekday), '')), weekday_cron),
        retention_period = coalesce(case when nullif(btrim(p_retention_period), '') is null then null else api.check_interval('retention period', btrim(p_retention_period)) end, retention_period),
        retention_redundancy = coalesce(p_retention_redundancy, retention_redundancy),
        extra_backup_parameters = coalesce(p_extra, extra_backup_parameters),
        job_status = coalesce(case when nullif(btrim(p_job_status), '') is null then null else api.check_choice('job status', upper(btrim(p_job_status)), array['ACTIVE', 'STOPPED', 'DELETED']) end, job_status),
        remarks = coalesce(p_remarks, remarks)
    where def_id = p_def_id;
    return p_def_id;
exception when unique_violation then
    raise exception 'the update would make DefID % identical to another definition', p_def_id
        using errcode = '23505', hint = 'show_backup_definitions lists the definitions of that database.';
end $$;

-- Removes catalog rows of the given definitions, queueing their files for deletion on the server
-- that holds them. Returns the number of catalog rows removed.
create function api.force_delete_catalog_of(p_def_ids bigint[]) returns integer
language plpgsql as $$
declare
    v_count integer;
begin
    insert into public.catalog_entries_to_delete (backup_server_id, def_id, bck_id, paths)
    select c.backup_server_id, c.def_id, c.bck_id,
           array_remove(array[c.backup_dir, c.pg_dump_file, c.pg_dump_log_file, c.pg_dump_roles_file,
                               c.pg_dump_roles_log_file, c.pg_dump_dbconfig_file, c.pg_dump_dbconfig_log_file,
                               c.manifest_file], null)
      from public.backup_catalog c where c.def_id = any (p_def_ids);
    delete from public.backup_catalog where def_id = any (p_def_ids);
    get diagnostics v_count = row_count;
    return v_count;
end $$;

create function api.delete_backup_definition_id(p_def_id bigint, p_force boolean) returns integer
language plpgsql as $$
declare
    v_backups bigint;
    v_removed integer := 0;
begin
    if not exists (select 1 from public.backup_definition where def_id = p_def_id) then
        raise exception 'backup definition DefID % does not exist', p_def_id
            using errcode = 'P0002', hint = 'show_backup_definitions lists the definitions.';
    end if;
    select count(*) into v_backups from public.backup_catalog where def_id = p_def_id;
    if v_backups > 0 and not coalesce(p_force, false) then
        raise exception 'backup definition DefID % has % in the catalog', p_def_id,
            v_backups || case v_backups when 1 then ' backup' else ' backups' end
            using errcode = '23503',
                  hint = 'Add force-deletion to delete the definition and its backups, or set it STOPPED with update_backup_definition to keep them.';
    end if;
    if v_backups > 0 then
        v_removed := api.force_delete_catalog_of(array[p_def_id]);
    end if;
    delete from public.job where def_id = p_def_id and state <> 'RUNNING';
    if exists (select 1 from public.job where def_id = p_def_id) then
        raise exception 'backup definition DefID % has a backup running now', p_def_id
            using errcode = '55006', hint = 'Wait for it to finish (show_jobs_queue) or cancel it with cancel_job, then retry.';
    end if;
    delete from public.backup_definition where def_id = p_def_id;
    return v_removed;
end $$;

create function api.delete_backup_definition_dbname(p_node text, p_dbname text, p_force boolean) returns integer
language plpgsql as $$
declare
    v_node bigint := api.node_id(p_node);
    v_ids bigint[];
    v_backups bigint;
begin
    select array_agg(def_id) into v_ids from public.backup_definition
     where pgsql_node_id = v_node and dbname = p_dbname;
    if v_ids is null then
        raise exception 'no backup definition for database "%" on node %', p_dbname, api.node_fqdn(v_node)
            using errcode = 'P0002', hint = 'show_backup_definitions lists the definitions of a node.';
    end if;
    select count(*) into v_backups from public.backup_catalog where def_id = any (v_ids);
    if v_backups > 0 and not coalesce(p_force, false) then
        raise exception 'the definitions of database "%" on node % have % in the catalog', p_dbname, api.node_fqdn(v_node),
            v_backups || case v_backups when 1 then ' backup' else ' backups' end
            using errcode = '23503',
                  hint = 'Add force-deletion to delete the definitions and their backups (snapshots are kept).';
    end if;
    perform api.force_delete_catalog_of(v_ids);
    delete from public.job where def_id = any (v_ids) and state <> 'RUNNING';
    if exists (select 1 from public.job where def_id = any (v_ids)) then
        raise exception 'a backup of database "%" is running now', p_dbname
            using errcode = '55006', hint = 'Wait for it to finish (show_jobs_queue) or cancel it with cancel_job, then retry.';
    end if;
    delete from public.backup_definition where def_id = any (v_ids);
    return cardinality(v_ids);
end $$;

-- Moves matching definitions of one server to another. Existing backups stay where they are
-- (their files are on the old server, whose retention keeps handling them).
create function api.move_backup_definition(p_from text, p_to text, p_nodes text[], p_dbnames text[], p_def_ids bigint[])
returns integer language plpgsql as $$
declare
    v_from bigint := api.server_id(p_from);
    v_to bigint := api.server_id(p_to);
    v_nodes bigint[];
    v_count integer;
begin
    if v_from = v_to then
        raise exception 'source and target backup server are the same (%)', api.server_fqdn(v_from)
            using errcode = '22023', hint = 'Give two different backup servers.';
    end if;
    if p_nodes is not null then
        select array_agg(api.node_id(n)) into v_nodes from unnest(p_nodes) n;
    end if;
    update public.backup_definition set backup_server_id = v_to
     where backup_server_id = v_from
       and (v_nodes is null or pgsql_node_id = any (v_nodes))
       and (p_dbnames is null or dbname = any (p_dbnames))
       and (p_def_ids is null or def_id = any (p_def_ids));
    get diagnostics v_count = row_count;
    return v_count;
exception when unique_violation then
    raise exception 'the target backup server already has an identical definition'
        using errcode = '23505', hint = 'Delete or change the duplicate on the target server first.';
end $$;

create function api.dbnames_with_definitions(p_node bigint) returns setof text
language sql stable as $$
    select distinct dbname from public.backup_definition
     where pgsql_node_id = p_node and job_status <> 'DELETED' and dbname <> ''
$$;

-- Run options of a definition (NULL keeps the current value): dump format and parallel jobs,
-- zstd level, maximum runtime, lock wait timeout, client major. Used by register and update.
create function api.set_backup_definition_options(
    p_def_id bigint, p_format text, p_jobs integer, p_level integer, p_max_runtime text,
    p_lock_wait_timeout text, p_client_major integer)
returns bigint language plpgsql as $$
begin
    if not exists (select 1 from public.backup_definition where def_id = p_def_id) then
        raise exception 'backup definition DefID % does not exist', p_def_id
            using errcode = 'P0002', hint = 'show_backup_definitions lists the definitions.';
    end if;
    if p_format is not null then
        perform api.check_choice('dump format', lower(btrim(p_format)), array['custom', 'directory']);
    end if;
    if p_jobs is not null then perform api.check_int('parallel jobs', p_jobs::text, 1, 64); end if;
    if p_level is not null then perform api.check_int('compression level', p_level::text, 1, 19); end if;
    -- 0 clears the client major (the shell's "none"); the shell checks it against the node's.
    if p_client_major is not null and p_client_major <> 0 then
        perform api.check_int('client major', p_client_major::text, 9, 99);
    end if;
    update public.backup_definition set
        dump_format = coalesce(lower(btrim(p_format)), dump_format),
        dump_jobs = coalesce(p_jobs, dump_jobs),
        compression_level = coalesce(p_level, compression_level),
        -- '0' or 'none' clears a limit.
        max_runtime = case when p_max_runtime is null then max_runtime
                           when lower(btrim(p_max_runtime)) in ('0', 'none', '') then null
                           else api.check_interval('maximum runtime', p_max_runtime) end,
        lock_wait_timeout = case when p_lock_wait_timeout is null then lock_wait_timeout
                                 when lower(btrim(p_lock_wait_timeout)) in ('0', 'none', '') then null
                                 else api.check_interval('lock wait timeout', p_lock_wait_timeout) end,
        client_major = case when p_client_major = 0 then null else coalesce(p_client_major, client_major) end
     where def_id = p_def_id;
    return p_def_id;
end $$;
