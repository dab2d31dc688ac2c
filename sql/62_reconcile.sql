-- Backup partitions an agent can clean, and reconciliation of the catalog with the disk
-- (issue 10). The agent walks its backup roots (core::roots) at each maintenance pass; what it
-- cannot settle is recorded here, raises one MAINTENANCE alert when first seen, and is listed by
-- the shell's show_reconciliation.

-- A pgnode_backup_partition (or root_backup_partition) value the agent can write to and clean:
-- the same rules as core::roots::check_partition_value. Returns the value.
create function api.check_backup_partition(p_parameter text, p_value text) returns text
language plpgsql immutable as $$
declare
    v text := regexp_replace(regexp_replace(p_value, '(/\.)+(/|$)', '/', 'g'), '/+', '/', 'g');
    v_why text;
begin
    if btrim(coalesce(p_value, '')) = '' then
        v_why := 'it is empty';
    elsif p_value ~ '(^|/)\.\.(/|$)' then
        v_why := 'it contains ".."';
    elsif p_value !~ '^/' then
        v := regexp_replace(v, '^(\./)+', '');
        if v in ('', '.', './') then
            v_why := 'it is the backup directory itself';
        elsif v ~ '^staging(/|$)' then
            v_why := 'it is in the staging area of the backup directory';
        end if;
    else
        v := case when v = '/' then v else regexp_replace(v, '/$', '') end;
        if v = '/' then
            v_why := 'it is the root directory';
        elsif v ~ '^/(bin|boot|dev|etc|lib|lib32|lib64|libx32|proc|run|sbin|sys|usr)(/|$)' then
            v_why := format('it is in the system directory %s', substring(v from '^/[^/]+'));
        elsif v in ('/home', '/media', '/mnt', '/opt', '/root', '/srv', '/tmp', '/var', '/var/lib', '/var/tmp') then
            v_why := 'it is a shared system directory; use a directory of its own inside it';
        end if;
    end if;
    if v_why is not null then
        raise exception '% "%" cannot be used: %', p_parameter, p_value, v_why
            using errcode = '22023',
                  hint = 'The agent deletes expired backups where it writes them, so the directory must be one it can clean: '
                         'a name relative to the backup directory (e.g. pgsql_node_%%pgnode%%) or an absolute directory of its own '
                         '(e.g. /backups/pgsql_node_%%pgnode%%), not a system directory.';
    end if;
    return p_value;
end $$;

-- The partitions an agent of this server may write to: those of the nodes it has definitions or
-- backups of, and of the deleted nodes whose directories it must remove.
create function api.server_partitions(p_server bigint)
returns table (pgsql_node_id bigint, partition text)
language sql stable as $$
    select api.acting_for(p_server);
    select n.node_id, api.node_config_value(n.node_id, 'pgnode_backup_partition')
      from public.pgsql_node n
     where exists (select 1 from public.backup_definition d where d.pgsql_node_id = n.node_id and d.backup_server_id = p_server)
        or exists (select 1 from public.backup_catalog c where c.pgsql_node_id = n.node_id and c.backup_server_id = p_server)
    union
    select t.pgsql_node_id, t.backup_partition from public.pgsql_node_to_delete t where t.backup_server_id = p_server
$$;

-- Of the set directories an agent found on disk (p_dirs, with the job id of each manifest in
-- p_jobs, 0 when unknown): those no catalog row names, whether their job is still open (QUEUED
-- or RUNNING: a set whose report has not arrived yet) and the server that job belongs to (NULL
-- when the catalog has no such job).
create function api.unknown_set_dirs(p_dirs text[], p_jobs bigint[])
returns table (dir text, job_open boolean, job_server bigint)
language sql stable as $$
    select x.dir, coalesce(j.state in ('QUEUED', 'RUNNING'), false), j.backup_server_id
      from unnest(p_dirs, p_jobs) as x(dir, job_id)
      left join public.job j on j.job_id = x.job_id
     where not exists (select 1 from public.backup_catalog c where c.backup_dir = x.dir)
$$;

-- The sets of this server the catalog says exist (rows being deleted excluded).
create function api.server_set_dirs(p_server bigint)
returns table (bck_id bigint, pgsql_node_id bigint, backup_dir text)
language sql stable as $$
    select api.acting_for(p_server);
    select c.bck_id, c.pgsql_node_id, c.backup_dir from public.backup_catalog c
     where c.backup_server_id = p_server and c.retention_state = 'KEPT' and c.backup_dir is not null
     order by c.bck_id
$$;

-- Replaces the findings of one server, of the kinds the pass that just ended looked for
-- (p_kinds), with what it found (p_findings: a JSON array of {kind, path, bck_id, node_id,
-- detail}); a finding seen for the first time raises a MAINTENANCE alert. Returns how many
-- alerts were raised.
create function api.record_reconciliation(p_server bigint, p_kinds text[], p_findings jsonb) returns integer
language plpgsql as $$
declare
    v_new integer;
begin
    perform api.acting_for(p_server);
    perform api.tag_maintenance('reconciliation');
    create temporary table if not exists pg_temp.found (kind text, path text, bck_id bigint, node_id bigint, detail text)
        on commit drop;
    delete from pg_temp.found;
    insert into pg_temp.found
    select distinct on (f.kind, f.path) f.kind, f.path, f.bck_id,
           -- A node or row deleted meanwhile is not an error: the finding just loses the link.
           (select n.node_id from public.pgsql_node n where n.node_id = f.node_id), f.detail
      from jsonb_to_recordset(coalesce(p_findings, '[]')) as f(kind text, path text, bck_id bigint, node_id bigint, detail text)
     where f.kind = any (p_kinds) and f.kind in ('ORPHAN', 'MISSING', 'BLOCKED', 'PARTITION') and f.path is not null;
    update pg_temp.found f set bck_id = null
     where f.bck_id is not null and not exists (select 1 from public.backup_catalog c where c.bck_id = f.bck_id);
    delete from public.reconciliation r
     where r.backup_server_id = p_server and r.kind = any (p_kinds)
       and not exists (select 1 from pg_temp.found f where f.kind = r.kind and f.path = r.path)
       -- A lost WAL file (sql/89_wal_missing.sql) is settled there, not by a walk of the sets.
       and not (r.kind = 'MISSING' and r.path ~ '/wal/node[0-9]+/[0-9]+/[0-9A-F]{8}/[^/]+$');
    with fresh as (
        select f.* from pg_temp.found f
         where not exists (select 1 from public.reconciliation r
                            where r.backup_server_id = p_server and r.kind = f.kind and r.path = f.path)
    ), alerts as (
        insert into public.alert (alert_type, backup_server_id, pgsql_node_id, bck_id, execution_status, error_message, sendto)
        select 'MAINTENANCE', p_server, f.node_id, f.bck_id, f.kind, f.detail,
               coalesce(case when f.node_id is not null then api.node_config_value(f.node_id, 'logs_email') end, '')
          from fresh f
        returning 1
    )
    select count(*) into v_new from alerts;
    insert into public.reconciliation as r (backup_server_id, kind, path, bck_id, pgsql_node_id, detail)
    select p_server, f.kind, f.path, f.bck_id, f.node_id, f.detail from pg_temp.found f
    on conflict (backup_server_id, kind, path) do update
        set last_seen = now(), detail = excluded.detail, bck_id = excluded.bck_id, pgsql_node_id = excluded.pgsql_node_id;
    return v_new;
end $$;

create view api.show_reconciliation as
select r.backup_server_id as "SrvID", s.fqdn as "Backup server", r.kind as "Kind", r.path as "Path",
       r.bck_id as "BckID", r.pgsql_node_id as "NodeID", n.fqdn as "PgSQL node", r.detail as "Detail",
       r.first_seen as "First seen", r.last_seen as "Last seen"
  from public.reconciliation r
  join public.backup_server s on s.server_id = r.backup_server_id
  left join public.pgsql_node n on n.node_id = r.pgsql_node_id;
