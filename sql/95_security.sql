-- Catalog roles and privileges. Runs last, on every `db init` / `db upgrade`, after every other
-- file re-created schema api (so its grants are always those below, never leftovers).
--
-- Four group roles (NOLOGIN; cluster-wide, hence the prefix in a shared cluster):
--   pgbackman_readonly  every show_* listing, the version check, read access to the tables
--   pgbackman_operator  + backups now, snapshots, restores, cancels, retries, verifications, drills
--   pgbackman_admin     + registers, updates, deletes (servers, nodes, definitions, configuration)
--   pgbackman_agent     the agent API only, and the tables an agent reads
-- `pgbackman db grant ROLE LEVEL` makes a login role a member of one of them. No role but the
-- owner may write a table: every function that writes runs SECURITY DEFINER (as the owner) with
-- a fixed search_path, so a grant of EXECUTE is all a role needs, and only what is granted.
--
-- Every function of schema api must be in exactly one list below; the check at the end refuses
-- to install a catalog with a function in none, naming it, so a new function is never callable
-- by nobody (or everybody) by mistake.

create function api.security_lists()
returns table (list text, functions text[])
language sql immutable as $$
    values
    -- Pure validation and lookups, used by views, by the shell's queries and by the functions
    -- of every list: EXECUTE for every group role, run as the caller (they write nothing).
    ('helper', array['server_id', 'node_id', 'server_fqdn', 'node_fqdn', 'node_config_value',
                     'server_config_value', 'check_interval', 'check_int', 'check_choice', 'q',
                     'check_host_name', 'cron_value', 'check_cron_field', 'check_hour_minute_range',
                     'random_in_range', 'check_bool', 'check_config_value', 'default_domain',
                     'check_cron_field_or_null', 'restore_status', 'catalog_paths',
                     'check_backup_partition', 'agent_scope', 'acting_for', 'acting_for_job',
                     'security_lists', 'privilege_of', 'wal_segno', 'wal_file_name', 'check_size',
                     -- repositories (sql/87_repositories.sql)
                     'repository_id', 'check_repository', 'repository_sets',
                     'copy_repository_of',
                     -- encryption keys (sql/35_encryption.sql)
                     'encryption_fingerprint', 'encryption_key_id', 'check_encryption_value',
                     'check_encryption_key_parameter', 'definition_recipients', 'reported_encryption',
                     'recipients_of', 'snapshot_recipients',
                     'sets_encrypted_with',
                     -- sql/25_agents.sql: what views and the shell read of agents
                     'agent_config', 'agent_not_seen_threshold', 'agent_state', 'agent_zone',
                     'schedule_in_zone', 'agent_warning', 'job_agent_warning',
                     -- physical drills (sql/90_drills.sql): retention's notion of a good base backup
                     'base_backup_counts',
                     -- sql/90_clone_lifecycle.sql, read by expire_clones
                     'clone_expiry_warning']),
    -- Listings (show_* functions; every view of schema api is granted too): pgbackman_readonly.
    ('readonly', array['show_backup_server_config', 'show_pgsql_node_config', 'backup_server_stats',
                       'pgsql_node_stats', 'show_backup_details', 'show_restore_details',
                       'dbnames_with_definitions',
                       -- the WAL ledger (sql/85_wal.sql)
                       'wal_holes', 'recovery_window', 'show_wal_segments',
                       -- replication status (sql/87_wal_monitor.sql)
                       'show_replication_status',
                       -- base backups (sql/87_base_backups.sql)
                       'recovery_chains',
                       -- WAL retention (sql/88_wal_retention.sql)
                       'wal_retention_plan', 'wal_retention_floors', 'timeline_lineage',
                       -- point-in-time recovery (sql/89_pitr.sql)
                       'pitr_path', 'pitr_plan', 'restore_point_check', 'clone_port_range']),
    -- pgbackman_operator (member of pgbackman_readonly).
    ('operator', array['run_backup_definition_now', 'register_snapshot_definition', 'cancel_job',
                       'register_restore_definition', 'queue_verifications', 'run_restore_drill',
                       'retry_alerts',
                       -- register_restore_definition --identity (sql/35_encryption.sql)
                       'set_restore_identity_files',
                       -- clones (sql/89_clones.sql)
                       'register_pitr_restore', 'clone_operation']),
    -- pgbackman_admin (member of pgbackman_operator).
    ('admin', array['register_backup_server', 'update_backup_server', 'delete_backup_server',
                    'update_backup_server_config', 'update_backup_server_default_config',
                    'register_pgsql_node', 'update_pgsql_node', 'delete_pgsql_node',
                    'update_pgsql_node_config', 'update_pgsql_node_default_config',
                    'register_backup_definition', 'update_backup_definition',
                    'delete_backup_definition_id', 'delete_backup_definition_dbname',
                    'move_backup_definition', 'set_backup_definition_options',
                    'update_drill_schedule', 'accept_pgsql_node_listing',
                    -- db import-pgbackman (sql/70_import.sql)
                    'import_map_of', 'import_record', 'import_snapshot_definition',
                    'import_backup_catalog', 'import_backup_catalog_rows',
                    -- WAL archives (sql/85_wal.sql)
                    'register_wal_archive', 'delete_wal_archive', 'set_wal_push_credential',
                    'set_restore_credential',
                    'set_base_backup_options',
                    -- repositories (sql/87_repositories.sql)
                    'register_repository', 'update_repository', 'delete_repository',
                    'set_primary_repository', 'set_definition_repository', 'set_copy_repository',
                    -- encryption keys (sql/35_encryption.sql)
                    'register_encryption_key', 'delete_encryption_key', 'set_definition_encryption']),
    -- pgbackman_agent. Each starts with api.acting_for / api.acting_for_job (checked below)
    -- except those in 'agent_any_server'.
    ('agent', array['agent_server_id', 'record_scheduled_job', 'claim_jobs', 'heartbeat', 'report_backup',
                    'report_offline_backup', 'agent_restore', 'report_restore', 'drill_schedules',
                    'queue_scheduled_drill', 'verify_job_info', 'report_verification', 'retention_mark',
                    'retention_marked', 'retention_forget', 'forced_deletions', 'forced_deletion_done',
                    'nodes_to_delete', 'node_deletion_done', 'maintenance_nodes',
                    'maintenance_definitions', 'expire_definitions', 'deleted_definition_nodes',
                    'apply_node_listing', 'raise_listing_alert', 'server_partitions', 'server_set_dirs',
                    'record_reconciliation', 'claim_alerts', 'purge_sent_alerts', 'overdue_candidates',
                    'raise_overdue_alert', 'agent_heartbeat', 'report_wal_objects',
                    'wal_archive_slot_dropped', 'report_wal_archive_state', 'agent_wal_archives',
                    'report_replication_sample', 'base_backup_missing_wal', 'job_wait_note',
                    'agent_repositories', 'wal_retention_mark', 'wal_retention_marked',
                    'wal_retention_forget', 'wal_retention_nodes', 'reconcile_wal_files',
                    -- second repository copies (sql/87_repository_copies.sql)
                    'agent_pending_copies', 'report_copy',
                    -- sql/35_encryption.sql
                    'restore_identity_files',
                    -- clones and wal-get (sql/89_clones.sql)
                    'agent_clone_job', 'clone_restoring', 'report_clone', 'wal_get_lookup',
                    -- physical restore drills (sql/90_drills.sql)
                    'physical_drill_plan',
                    -- clone lifecycle (sql/90_clone_lifecycle.sql)
                    'agent_live_clones', 'clone_started_again', 'report_clone_disk',
                    'expire_clones',
                    -- restores to another host (sql/89_pitr_remote.sql)
                    'agent_remote_restore_plan', 'agent_remote_restore_set', 'agent_restore_credential']),
    -- pgbackman_agent, acting across servers by design: lost jobs (whoever notices first
    -- marks them), mailing outcomes (alerts are handed over between agents; fenced by the
    -- claim), and set directories matched against ids the agent gives (it reads nothing of
    -- another server).
    ('agent_any_server', array['mark_lost_jobs', 'alert_sent', 'alert_failed',
                               'unknown_set_dirs']),
    -- Called only by the functions above (as the owner) or by triggers: nobody else.
    ('internal', array['audit_row', 'notify_server', 'notify_owner', 'notify_owner_by_server_id',
                       'notify_node_servers', 'touch_updated', 'backup_definition_bookkeeping',
                       'clear_quarantine', 'tag_maintenance', 'after_backup_verification',
                       'record_restore_verification', 'record_base_backup', 'force_delete_catalog_of', 'verifiable_backup',
                       'drill_node_id', 'autoregister_server', 'grant_catalog_role',
                       'revoke_catalog_role', 'wal_runs_after_insert', 'wal_runs_after_delete',
                       'rebuild_wal_runs', 'wal_before_owner_delete', 'open_wal_condition',
                       'evaluate_wal_conditions', 'wal_trim_runs',
                       -- sql/90_drills.sql, called by run_restore_drill
                       'run_physical_drill'])
$$;

-- The group role whose members may run api function p_name (NULL: the owner only), for the
-- shell's "permission denied" message.
create function api.privilege_of(p_name text) returns text
language sql stable as $$
    select case l.list when 'helper' then 'pgbackman_readonly'
                       when 'agent_any_server' then 'pgbackman_agent'
                       when 'internal' then null
                       else 'pgbackman_' || l.list end
      from api.security_lists() l where p_name = any (l.functions)
$$;

-- `pgbackman db grant ROLE LEVEL [--server FQDN]`: makes ROLE a member of pgbackman_LEVEL; an
-- agent role is also bound to its server. Runs as the caller (the owner or a superuser): only
-- they may hand out the group roles.
create function api.grant_catalog_role(p_role text, p_level text, p_server text) returns text
language plpgsql as $$
declare
    v_level text := lower(btrim(coalesce(p_level, '')));
    v_server bigint;
begin
    if not exists (select 1 from pg_catalog.pg_roles where rolname = p_role) then
        raise exception 'role % does not exist in this cluster', api.q(p_role)
            using errcode = '42704',
                  hint = format('Create the login role first, e.g. createuser %s (its password in the pgpass file of the user that runs pgbackman).', p_role);
    end if;
    if v_level not in ('readonly', 'operator', 'admin', 'agent') then
        raise exception 'unknown catalog role level %', api.q(p_level)
            using errcode = '22023', hint = 'Use readonly, operator, admin or agent (see README, Operations, Roles).';
    end if;
    if not exists (select 1 from pg_catalog.pg_roles where rolname = 'pgbackman_' || v_level) then
        raise exception 'group role pgbackman_% does not exist', v_level
            using errcode = '42704',
                  hint = 'Run `pgbackman db upgrade` as a role that may create roles (a superuser or one with CREATEROLE); it creates the group roles.';
    end if;
    if v_level = 'agent' then
        if nullif(btrim(coalesce(p_server, '')), '') is null then
            raise exception 'an agent role is bound to one backup server: give it with --server'
                using errcode = '22023', hint = format('pgbackman db grant %s agent --server <FQDN of the backup server it runs on>', p_role);
        end if;
        v_server := api.server_id(p_server);
        insert into public.agent_role (role_name, backup_server_id) values (p_role, v_server)
        on conflict do nothing;
    elsif p_server is not null then
        raise exception '--server applies to agent roles only'
            using errcode = '22023', hint = format('pgbackman db grant %s %s', p_role, v_level);
    end if;
    execute format('grant %I to %I', 'pgbackman_' || v_level, p_role);
    return 'pgbackman_' || v_level;
end $$;

-- `pgbackman db revoke ROLE [LEVEL]`: removes ROLE from pgbackman_LEVEL (every group role when
-- LEVEL is NULL) and, for agent, its server bindings. Returns the group roles it left.
create function api.revoke_catalog_role(p_role text, p_level text) returns text[]
language plpgsql as $$
declare
    v_level text := lower(btrim(coalesce(p_level, '')));
    v_groups text[];
    v_g text;
begin
    if v_level <> '' and v_level not in ('readonly', 'operator', 'admin', 'agent') then
        raise exception 'unknown catalog role level %', api.q(p_level)
            using errcode = '22023', hint = 'Use readonly, operator, admin or agent, or no level to revoke them all.';
    end if;
    select coalesce(array_agg(g.rolname::text order by g.rolname), '{}') into v_groups
      from pg_catalog.pg_auth_members m
      join pg_catalog.pg_roles g on g.oid = m.roleid
      join pg_catalog.pg_roles r on r.oid = m.member
     where r.rolname = p_role
       and g.rolname in ('pgbackman_readonly', 'pgbackman_operator', 'pgbackman_admin', 'pgbackman_agent')
       and (v_level = '' or g.rolname = 'pgbackman_' || v_level);
    foreach v_g in array v_groups loop
        execute format('revoke %I from %I', v_g, p_role);
    end loop;
    if v_level in ('', 'agent') then
        delete from public.agent_role where role_name = p_role;
    end if;
    return v_groups;
end $$;

-- Audit trail of the bindings, like the other administrative tables.
create trigger audit after insert or update or delete on public.agent_role
    for each row execute function api.audit_row();

-- The group roles, created when missing. A catalog installed by a role that may not create roles
-- works as before for its owner; `db grant` then says what to run.
do $$
declare
    v_role text;
begin
    foreach v_role in array array['pgbackman_readonly', 'pgbackman_operator', 'pgbackman_admin', 'pgbackman_agent'] loop
        if not exists (select 1 from pg_catalog.pg_roles where rolname = v_role) then
            begin
                execute format('create role %I nologin', v_role);
                if v_role = 'pgbackman_operator' then
                    grant pgbackman_readonly to pgbackman_operator;
                elsif v_role = 'pgbackman_admin' then
                    grant pgbackman_operator to pgbackman_admin;
                end if;
            exception when insufficient_privilege then
                raise warning 'cannot create group role % (%): only the catalog owner can use the catalog', v_role, sqlerrm
                    using hint = 'Run `pgbackman db upgrade` once as a superuser or a role with CREATEROLE.';
            when duplicate_object or unique_violation then
                null;   -- created meanwhile by a concurrent install in another database
            end;
        end if;
    end loop;
end $$;

-- Every api function in exactly one list, every listed function present, every agent function
-- checked: otherwise the install fails here, naming what to fix.
do $$
declare
    v_unlisted text;
    v_twice text;
    v_missing text;
    v_unchecked text;
begin
    select string_agg(distinct p.proname, ', ' order by p.proname) into v_unlisted
      from pg_catalog.pg_proc p
     where p.pronamespace = 'api'::regnamespace
       and not exists (select 1 from api.security_lists() l where p.proname = any (l.functions));
    if v_unlisted is not null then
        raise exception 'api function(s) in no privilege list: %', v_unlisted
            using errcode = '55000',
                  hint = 'Add each to one list of api.security_lists() in sql/95_security.sql (helper, readonly, operator, admin, agent, agent_any_server, internal).';
    end if;
    select string_agg(f, ', ' order by f) into v_twice
      from (select f from api.security_lists() l, unnest(l.functions) f group by f having count(*) > 1) d;
    if v_twice is not null then
        raise exception 'api function(s) in more than one privilege list: %', v_twice
            using errcode = '55000', hint = 'Keep each in one list of api.security_lists() in sql/95_security.sql.';
    end if;
    select string_agg(f, ', ' order by f) into v_missing
      from api.security_lists() l, unnest(l.functions) f
     where not exists (select 1 from pg_catalog.pg_proc p where p.pronamespace = 'api'::regnamespace and p.proname = f);
    if v_missing is not null then
        raise exception 'privilege lists name api function(s) that do not exist: %', v_missing
            using errcode = '55000', hint = 'Remove or rename them in api.security_lists() in sql/95_security.sql.';
    end if;
    select string_agg(distinct p.proname, ', ' order by p.proname) into v_unchecked
      from pg_catalog.pg_proc p, api.security_lists() l
     where l.list = 'agent' and p.proname = any (l.functions) and p.pronamespace = 'api'::regnamespace
       and p.prosrc !~ 'api\.acting_for(_job)?\(';
    if v_unchecked is not null then
        raise exception 'agent function(s) without a server check: %', v_unchecked
            using errcode = '55000',
                  hint = 'Start each with perform api.acting_for(<server>) or api.acting_for_job(<job>) (sql/15_agent_scope.sql), or list it in agent_any_server with the reason.';
    end if;
end $$;

-- Privileges. EXECUTE is granted to PUBLIC by default: take it back first.
revoke all on schema api from public;
revoke execute on all functions in schema api from public;
do $$
declare
    v record;
    v_groups text[] := array['pgbackman_readonly', 'pgbackman_operator', 'pgbackman_admin', 'pgbackman_agent'];
    v_g text;
begin
    -- Writers run as the owner with a search_path nobody else can change.
    for v in select p.oid::regprocedure as f, l.list
               from pg_catalog.pg_proc p join api.security_lists() l on p.proname = any (l.functions)
              where p.pronamespace = 'api'::regnamespace loop
        if v.list in ('operator', 'admin', 'agent', 'agent_any_server') then
            execute format('alter function %s security definer set search_path = pg_catalog, public, pg_temp', v.f);
        end if;
    end loop;
    foreach v_g in array v_groups loop
        if not exists (select 1 from pg_catalog.pg_roles where rolname = v_g) then
            continue;
        end if;
        execute format('grant usage on schema api to %I', v_g);
        -- The version check of the shell and the agent reads these two.
        execute format('grant select on public.refinery_schema_history, public.catalog_info to %I', v_g);
        for v in select p.oid::regprocedure as f, l.list
                   from pg_catalog.pg_proc p join api.security_lists() l on p.proname = any (l.functions)
                  where p.pronamespace = 'api'::regnamespace loop
            if v.list = 'helper'
               or (v.list = 'readonly' and v_g = 'pgbackman_readonly')
               or (v.list = 'operator' and v_g = 'pgbackman_operator')
               or (v.list = 'admin' and v_g = 'pgbackman_admin')
               or (v.list in ('agent', 'agent_any_server') and v_g = 'pgbackman_agent') then
                execute format('grant execute on function %s to %I', v.f, v_g);
            end if;
        end loop;
    end loop;
    if exists (select 1 from pg_catalog.pg_roles where rolname = 'pgbackman_readonly') then
        -- Reading the catalog is what readonly means (no secret lives in it: passwords stay in
        -- pgpass files). Tables added later are covered: this runs at every upgrade.
        grant select on all tables in schema public to pgbackman_readonly;
        grant select on all tables in schema api to pgbackman_readonly;
    end if;
    if exists (select 1 from pg_catalog.pg_roles where rolname = 'pgbackman_agent') then
        -- What an agent reads besides its functions: its cache, its jobs, the sets it holds.
        revoke all on all tables in schema public from pgbackman_agent;
        grant select on public.backup_server, public.backup_server_config, public.backup_server_default_config,
                        public.pgsql_node, public.pgsql_node_config, public.pgsql_node_default_config,
                        public.backup_definition, public.snapshot_definition, public.restore_definition,
                        public.job, public.backup_catalog, public.reconciliation, public.catalog_info,
                        public.wal_archive, public.repository, public.backup_copy,
                        -- retention's base_backup_counts reads the drills' verdicts
                        public.verification,
                        public.refinery_schema_history
           to pgbackman_agent;
        grant select on api.agent_definitions to pgbackman_agent;
    end if;
end $$;
