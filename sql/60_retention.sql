-- Retention and maintenance (issue 4): the agent's side of two-phase deletion, forced deletions,
-- node deletions, quarantine, reactivation, expiry of DELETED definitions and autoregister.
-- The decisions are made by core::retention in the agent (the same functions that
-- show_retention_plan uses); the functions here re-check each one against the catalog as it is
-- now and apply it, so a stale plan can never delete more than the rules allow.

-- Names the maintenance step in the audit log when the caller did not.
create function api.tag_maintenance(p_what text) returns void
language sql as $$
    select set_config('pgbackman.command',
                      coalesce(nullif(current_setting('pgbackman.command', true), ''), 'agent maintenance: ' || p_what),
                      true)
$$;

-- ---- two-phase deletion of expired backups -------------------------------------------------

-- Every path a catalog row names, the set directory first.
create function api.catalog_paths(c public.backup_catalog) returns text[]
language sql immutable as $$
    select array_remove(array[c.backup_dir, c.pg_dump_file, c.pg_dump_log_file, c.pg_dump_roles_file,
                              c.pg_dump_roles_log_file, c.pg_dump_dbconfig_file, c.pg_dump_dbconfig_log_file,
                              c.manifest_file, c.global_log_file], null)
$$;

-- Phase 1: marks an expired backup of this server DELETING and returns its paths. Returns no
-- row when the plan was stale: the row is gone, not this server's, already marked, its owner's
-- retention settings changed since the plan was made (p_period, p_redundancy), it is within
-- the period, it is one of the newest p_redundancy successful backups of its definition, or a
-- restore or verification still needs it.
create function api.retention_mark(p_server bigint, p_bck_id bigint, p_period text, p_redundancy integer)
returns table (backup_dir text, paths text[])
language plpgsql as $$
declare
    c public.backup_catalog%rowtype;
    v_period interval;
    v_redundancy integer;
begin
    perform api.acting_for(p_server);
    perform api.tag_maintenance('retention');
    select * into c from public.backup_catalog b where b.bck_id = p_bck_id and b.backup_server_id = p_server for update;
    if not found or c.retention_state <> 'KEPT' then
        return;
    end if;
    if c.def_id is not null then
        select d.retention_period, d.retention_redundancy into v_period, v_redundancy
          from public.backup_definition d where d.def_id = c.def_id;
    else
        select s.retention_period, 0 into v_period, v_redundancy
          from public.snapshot_definition s where s.snapshot_id = c.snapshot_id;
    end if;
    if v_period is null or v_period::text <> p_period or v_redundancy <> p_redundancy then
        return;
    end if;
    if c.finished >= now() - v_period then
        return;
    end if;
    -- The redundancy rule once more, independently of the agent's arithmetic: never one of the
    -- newest N successful backups of its definition (on any server).
    -- Base backups count once verified and not failing their restore drill (sql/90_drills.sql).
    if c.def_id is not null and c.execution_status = 'SUCCEEDED'
       and api.base_backup_counts(c.bck_id)
       and (select count(*) from public.backup_catalog o
             where o.def_id = c.def_id and o.execution_status = 'SUCCEEDED' and o.retention_state = 'KEPT'
               and api.base_backup_counts(o.bck_id)
               and (o.finished, o.bck_id) > (c.finished, c.bck_id)) < v_redundancy then
        return;
    end if;
    if exists (select 1 from public.job j where j.bck_id = c.bck_id and j.state in ('QUEUED', 'RUNNING'))
       or exists (select 1 from public.restore_definition r where r.bck_id = c.bck_id and r.status in ('WAITING', 'QUEUED', 'RUNNING')) then
        return;
    end if;
    update public.backup_catalog b set retention_state = 'DELETING', delete_marked_at = now() where b.bck_id = p_bck_id;
    return query select c.backup_dir, api.catalog_paths(c);
end $$;

-- Backups of this server marked DELETING whose deletion has not finished (the agent stopped in
-- between, or a file could not be removed): the agent finishes them first.
create function api.retention_marked(p_server bigint)
returns table (bck_id bigint, backup_dir text, paths text[])
language sql stable as $$
    select api.acting_for(p_server);
    select c.bck_id, c.backup_dir, api.catalog_paths(c) from public.backup_catalog c
     where c.backup_server_id = p_server and c.retention_state = 'DELETING'
     order by c.bck_id
$$;

-- Phase 3: the files are gone; removes the row. A snapshot whose last backup this was goes too.
create function api.retention_forget(p_server bigint, p_bck_id bigint) returns boolean
language plpgsql as $$
declare
    v_snap bigint;
begin
    perform api.acting_for(p_server);
    perform api.tag_maintenance('retention');
    delete from public.backup_catalog c
     where c.bck_id = p_bck_id and c.backup_server_id = p_server and c.retention_state = 'DELETING'
    returning c.snapshot_id into v_snap;
    if not found then
        return false;
    end if;
    if v_snap is not null and not exists (select 1 from public.backup_catalog c where c.snapshot_id = v_snap) then
        delete from public.snapshot_definition s
         where s.snapshot_id = v_snap and s.status in ('SUCCEEDED', 'ERROR', 'CANCELLED');
    end if;
    return true;
end $$;

-- ---- forced deletions and deleted nodes ------------------------------------------------------

-- Files of force-deleted catalog rows that this server holds.
create function api.forced_deletions(p_server bigint)
returns table (del_id bigint, bck_id bigint, paths text[])
language sql stable as $$
    select api.acting_for(p_server);
    select e.del_id, e.bck_id, e.paths from public.catalog_entries_to_delete e
     where e.backup_server_id = p_server order by e.del_id
$$;

create function api.forced_deletion_done(p_server bigint, p_del_id bigint) returns boolean
language plpgsql as $$
begin
    perform api.acting_for(p_server);
    perform api.tag_maintenance('forced deletion');
    delete from public.catalog_entries_to_delete e where e.del_id = p_del_id and e.backup_server_id = p_server;
    return found;
end $$;

-- Deleted nodes whose directory this server must remove. shared: another node is configured
-- with the same directory, so it must stay.
create function api.nodes_to_delete(p_server bigint)
returns table (pgsql_node_id bigint, backup_partition text, shared boolean)
language sql stable as $$
    select api.acting_for(p_server);
    select t.pgsql_node_id, t.backup_partition,
           exists (select 1 from public.pgsql_node n
                    where api.node_config_value(n.node_id, 'pgnode_backup_partition') = t.backup_partition)
      from public.pgsql_node_to_delete t
     where t.backup_server_id = p_server
     order by t.pgsql_node_id
$$;

create function api.node_deletion_done(p_server bigint, p_node bigint) returns boolean
language plpgsql as $$
begin
    perform api.acting_for(p_server);
    perform api.tag_maintenance('node deletion');
    delete from public.pgsql_node_to_delete t where t.backup_server_id = p_server and t.pgsql_node_id = p_node;
    return found;
end $$;

-- (api.purge_sent_alerts, called by maintenance, is in 65_alerts.sql.)

-- ---- quarantine, reactivation, expiry, autoregister -----------------------------------------

-- The backup server that gets a node's automatic definitions; NULL when autoregister is off.
create function api.autoregister_server(p_node bigint) returns bigint
language plpgsql stable as $$
declare
    v text;
begin
    if not api.node_config_value(p_node, 'autoregister')::boolean then
        return null;
    end if;
    v := api.node_config_value(p_node, 'autoregister_backup_server');
    if v <> '' then
        return (select s.server_id from public.backup_server s where s.server_id = v::bigint);
    end if;
    return (select d.backup_server_id from public.backup_definition d
             where d.pgsql_node_id = p_node and d.job_status <> 'DELETED'
             group by d.backup_server_id order by count(*) desc, d.backup_server_id limit 1);
end $$;

-- The RUNNING nodes this server lists at each maintenance pass: those it has definitions of, and
-- those it autoregisters for. deletion_retention_seconds: the node's automatic_deletion_retention
-- as of now (calendar-aware).
create function api.maintenance_nodes(p_server bigint)
returns table (node_id bigint, fqdn text, pgport integer, admin_user text, admin_dbname text, sslmode text,
               known_databases integer, accept_next boolean, autoregister boolean,
               deletion_retention_seconds float8)
language sql stable as $$
    select api.acting_for(p_server);
    select n.node_id, n.fqdn, n.pgport, n.admin_user, n.admin_dbname, n.sslmode,
           l.databases, coalesce(l.accept_next, false),
           coalesce(api.autoregister_server(n.node_id) = p_server, false),
           extract(epoch from now() - (now() - api.node_config_value(n.node_id, 'automatic_deletion_retention')::interval))::float8
      from public.pgsql_node n
      left join public.pgsql_node_listing l on l.pgsql_node_id = n.node_id
     where n.status = 'RUNNING'
       and (exists (select 1 from public.backup_definition d where d.pgsql_node_id = n.node_id and d.backup_server_id = p_server)
            or api.autoregister_server(n.node_id) = p_server)
     order by n.node_id
$$;

-- This server's definitions of a node, as core::retention::node_plan reads them.
create function api.maintenance_definitions(p_server bigint, p_node bigint)
returns table (def_id bigint, dbname text, job_status text, quarantined boolean, status_changed_at timestamptz)
language sql stable as $$
    select api.acting_for(p_server);
    select d.def_id, d.dbname, d.job_status, d.quarantined_from is not null, d.status_changed_at
      from public.backup_definition d
     where d.backup_server_id = p_server and d.pgsql_node_id = p_node
     order by d.def_id
$$;

-- Removes definitions DELETED for longer than the node's automatic_deletion_retention, with
-- their backups (files queued for the servers that hold them). p_listed: the node's databases
-- from a sane listing, or NULL when the node could not be listed (STOPPED, unreachable).
create function api.expire_definitions(p_server bigint, p_node bigint, p_ids bigint[], p_listed text[])
returns table (action text, def_id bigint, dbname text)
language plpgsql as $$
declare
    r record;
    v_retention interval := api.node_config_value(p_node, 'automatic_deletion_retention')::interval;
    v_email text := api.node_config_value(p_node, 'logs_email');
    v_fqdn text := api.node_fqdn(p_node);
    v_n integer;
begin
    perform api.acting_for(p_server);
    perform api.tag_maintenance('expiry of DELETED definitions');
    for r in
        select d.def_id, d.dbname from public.backup_definition d
         where d.def_id = any (p_ids) and d.backup_server_id = p_server and d.pgsql_node_id = p_node
           and d.job_status = 'DELETED' and d.status_changed_at < now() - v_retention
           -- Not listed (NULL): only what a user set DELETED; a quarantined definition waits for
           -- a listing, its database may be back.
           and case when p_listed is null then d.quarantined_from is null
                    else not (d.quarantined_from is not null and d.dbname = any (p_listed)) end
    loop
        def_id := r.def_id; dbname := r.dbname;
        if exists (select 1 from public.job j where j.def_id = r.def_id and j.state = 'RUNNING') then
            action := 'removal postponed: a backup is running';
        else
            v_n := api.force_delete_catalog_of(array[r.def_id]);
            delete from public.job j where j.def_id = r.def_id;
            delete from public.backup_definition d where d.def_id = r.def_id;
            insert into public.alert (alert_type, backup_server_id, pgsql_node_id, ref_id, dbname, execution_status, error_message, sendto)
            values ('QUARANTINE', p_server, p_node, r.def_id, r.dbname, 'REMOVED',
                    format('backup definition DefID %s (database "%s" on PgSQL node %s) was DELETED for more than %s: '
                           'it is removed with its %s backups.', r.def_id, r.dbname, v_fqdn, v_retention, v_n), v_email);
            action := 'removed';
        end if;
        return next;
    end loop;
end $$;

-- Nodes of this server's DELETED definitions, for those no listing reached this pass.
create function api.deleted_definition_nodes(p_server bigint)
returns table (node_id bigint, deletion_retention_seconds float8)
language sql stable as $$
    select api.acting_for(p_server);
    select d.pgsql_node_id,
           extract(epoch from now() - (now() - api.node_config_value(d.pgsql_node_id, 'automatic_deletion_retention')::interval))::float8
      from public.backup_definition d
     where d.backup_server_id = p_server and d.job_status = 'DELETED'
     group by d.pgsql_node_id
     order by d.pgsql_node_id
$$;

-- Applies one node's plan after a sane listing (p_listed), each decision re-checked: quarantine
-- (p_mark), reactivation (p_reactivate), removal of definitions DELETED for longer than the
-- node's automatic_deletion_retention with their backups (p_expire; files are queued for the
-- servers that hold them), the new listing baseline, and autoregister. Returns what it did.
create function api.apply_node_listing(p_server bigint, p_node bigint, p_listed text[], p_mark bigint[],
                                       p_reactivate bigint[], p_expire bigint[])
returns table (action text, def_id bigint, dbname text)
language plpgsql as $$
declare
    r record;
    v_retention interval := api.node_config_value(p_node, 'automatic_deletion_retention')::interval;
    v_email text := api.node_config_value(p_node, 'logs_email');
    v_fqdn text := api.node_fqdn(p_node);
    v_code text;
    v_id bigint;
begin
    perform api.acting_for(p_server);
    perform api.tag_maintenance('quarantine');
    -- Two agents listing the same node take turns.
    perform pg_advisory_xact_lock(hashtext('pgbackman.node_listing'), p_node::integer);
    for r in
        update public.backup_definition d set quarantined_from = d.job_status, job_status = 'DELETED'
         where d.def_id = any (p_mark) and d.backup_server_id = p_server and d.pgsql_node_id = p_node
           and d.job_status in ('ACTIVE', 'STOPPED') and d.dbname <> '' and not (d.dbname = any (p_listed))
        returning d.def_id, d.dbname
    loop
        insert into public.alert (alert_type, backup_server_id, pgsql_node_id, ref_id, dbname, execution_status, error_message, sendto)
        values ('QUARANTINE', p_server, p_node, r.def_id, r.dbname, 'DELETED',
                format('database "%s" is gone from PgSQL node %s: backup definition DefID %s is set DELETED and stops. '
                       'It becomes active again if the database comes back within %s; after that it is removed with its backups. '
                       'To keep the backups, set it STOPPED now with update_backup_definition.',
                       r.dbname, v_fqdn, r.def_id, v_retention), v_email);
        action := 'quarantined'; def_id := r.def_id; dbname := r.dbname;
        return next;
    end loop;
    for r in
        select d.def_id, d.dbname, d.quarantined_from from public.backup_definition d
         where d.def_id = any (p_reactivate) and d.backup_server_id = p_server and d.pgsql_node_id = p_node
           and d.job_status = 'DELETED' and d.quarantined_from is not null and d.dbname = any (p_listed)
    loop
        def_id := r.def_id; dbname := r.dbname;
        begin
            update public.backup_definition d set job_status = r.quarantined_from, quarantined_from = null
             where d.def_id = r.def_id;
            action := 'reactivated';
        exception when unique_violation then
            action := 'not reactivated: an identical live definition exists';
        end;
        return next;
    end loop;
    return query select * from api.expire_definitions(p_server, p_node, p_expire, p_listed);
    insert into public.pgsql_node_listing as l (pgsql_node_id, databases, listed_at, listed_by, accept_next)
    values (p_node, cardinality(p_listed), now(), p_server, false)
    on conflict (pgsql_node_id) do update
        set databases = excluded.databases, listed_at = excluded.listed_at, listed_by = excluded.listed_by, accept_next = false;
    if api.autoregister_server(p_node) = p_server then
        perform api.tag_maintenance('autoregister');
        v_code := api.node_config_value(p_node, 'backup_code');
        if v_code in ('CLUSTER', 'GLOBALS') then
            v_code := 'FULL';
        end if;
        for r in
            select x.db from unnest(p_listed) as x(db)
             where x.db not in ('template0', 'template1', 'postgres')
               and not exists (select 1 from public.backup_definition d where d.pgsql_node_id = p_node and d.dbname = x.db)
             order by x.db
        loop
            def_id := null; dbname := r.db;
            begin
                v_id := api.register_backup_definition(p_server::text, p_node::text, r.db, null, null, null, null, null,
                                                       v_code, null, null, null, null, null, 'registered by autoregister');
                action := 'registered'; def_id := v_id;
            exception when others then
                -- One database the defaults cannot back up must not block the node's maintenance.
                action := 'autoregister failed: ' || sqlerrm;
            end;
            return next;
        end loop;
    end if;
end $$;

-- A node listing that does not look sane: one alert per node and server a day, nothing changed.
create function api.raise_listing_alert(p_server bigint, p_node bigint, p_reason text) returns boolean
language plpgsql as $$
declare
    v_fqdn text := api.node_fqdn(p_node);
begin
    perform api.acting_for(p_server);
    if exists (select 1 from public.alert a
                where a.alert_type = 'QUARANTINE' and a.pgsql_node_id = p_node and a.backup_server_id = p_server
                  and a.execution_status = 'SUSPICIOUS' and a.registered > now() - interval '1 day') then
        return false;
    end if;
    insert into public.alert (alert_type, backup_server_id, pgsql_node_id, execution_status, error_message, sendto)
    values ('QUARANTINE', p_server, p_node, 'SUSPICIOUS',
            format('the database listing of PgSQL node %s does not look sane (%s): no definition was quarantined, reactivated or removed. '
                   'If the node points at the wrong host, fix it with update_pgsql_node; if the databases were dropped on purpose, '
                   'run: pgbackman -C "accept_pgsql_node_listing %s".', v_fqdn, p_reason, p_node),
            api.node_config_value(p_node, 'logs_email'));
    return true;
end $$;

-- The shell's accept_pgsql_node_listing: the node's next listing is taken as it is.
create function api.accept_pgsql_node_listing(p_node text) returns bigint
language plpgsql as $$
declare
    v_id bigint := api.node_id(p_node);
begin
    insert into public.pgsql_node_listing as l (pgsql_node_id, accept_next) values (v_id, true)
    on conflict (pgsql_node_id) do update set accept_next = true;
    return v_id;
end $$;

-- A status change by anyone but quarantine itself ends the quarantine: a definition a user set
-- DELETED, STOPPED or ACTIVE is never reactivated behind their back.
create function api.clear_quarantine() returns trigger
language plpgsql as $$
begin
    if new.job_status is distinct from old.job_status and new.quarantined_from is not distinct from old.quarantined_from then
        new.quarantined_from := null;
    end if;
    return new;
end $$;

create trigger clear_quarantine before update on public.backup_definition for each row execute function api.clear_quarantine();
