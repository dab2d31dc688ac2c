-- Views and report functions behind the shell's show_* commands. Column names are the headers the
-- shell prints (CSV/JSON keys are derived from them); values keep their types so JSON output has
-- numbers, booleans, nulls and timestamps. Intervals are shown as text.

-- "Agent": online / degraded / offline / never seen (sql/25_agents.sql), with its last heartbeat.
create view api.show_backup_servers as
select s.server_id as "SrvID", s.fqdn as "FQDN", s.status as "Status",
       api.agent_state(s.server_id) as "Agent", a.last_seen as "Last seen", a.version as "Agent version",
       a.spooled as "Spooled results", s.registered as "Registered", s.remarks as "Remarks"
  from public.backup_server s
  left join public.agent_status a on a.server_id = s.server_id;

create view api.show_pgsql_nodes as
select n.node_id as "NodeID", n.fqdn as "FQDN", n.pgport as "Pgport", n.admin_user as "Admin user",
       n.admin_dbname as "Admin DB", n.sslmode as "SSL mode", n.status as "Status",
       n.registered as "Registered", n.remarks as "Remarks"
  from public.pgsql_node n;

create view api.show_backup_definitions as
select d.def_id as "DefID", d.backup_server_id as "SrvID", s.fqdn as "Backup server",
       d.pgsql_node_id as "NodeID", n.fqdn as "PgSQL node", d.dbname as "DBname",
       concat_ws(' ', d.minutes_cron, d.hours_cron, d.day_month_cron, d.month_cron, d.weekday_cron) as "Schedule",
       api.agent_zone(d.backup_server_id) as "Time zone",
       d.backup_code as "Code",
       case when not d.encryption then 'false'
            else coalesce((select k.name from public.encryption_key k where k.key_id = d.encryption_key_id),
                          'true (server key)') end as "Encryption",
       d.retention_period::text || ' (' || d.retention_redundancy || ')' as "Retention",
       d.job_status as "Status", d.extra_backup_parameters as "Parameters",
       concat_ws(', ',
                 case when d.backup_code = 'BASEBACKUP'
                           then concat_ws(', ', 'tar zstd:' || d.compression_level, 'checkpoint ' || d.checkpoint,
                                          'max rate ' || d.max_rate, 'WAL wait ' || d.wal_wait_timeout::text)
                      when d.dump_format = 'directory' then 'directory -j ' || d.dump_jobs
                      else 'custom zstd:' || d.compression_level end,
                 'max ' || d.max_runtime::text,
                 case when d.backup_code <> 'BASEBACKUP' then 'lock wait ' || d.lock_wait_timeout::text end,
                 case when d.backup_code = 'BASEBACKUP' then 'pg_basebackup ' || d.client_major
                      else 'pg_dump ' || d.client_major end,
                 'drill ' || d.drill_schedule) as "Options",
       d.registered as "Registered", d.remarks as "Remarks"
  from public.backup_definition d
  join public.backup_server s on s.server_id = d.backup_server_id
  join public.pgsql_node n on n.node_id = d.pgsql_node_id;

create view api.show_empty_backup_catalogs as
select v.* from api.show_backup_definitions v
 where not exists (select 1 from public.backup_catalog c where c.def_id = v."DefID");

-- "Value" is the catalog's; "Agent uses" and "Source" (catalog / agent file / default) are what
-- the server's agent reported with its last heartbeat for the values it uses.
create function api.show_backup_server_config(p_server bigint)
returns table ("Parameter" text, "Value" text, "Agent uses" text, "Source" text, "Description" text)
language sql stable as $$
    select d.parameter, coalesce(c.value, d.value), a.config -> d.parameter ->> 'value',
           case when d.parameter not in (select parameter from api.agent_config(p_server)) then 'catalog'
                else coalesce(a.config -> d.parameter ->> 'source', 'catalog (agent not seen yet)') end,
           d.description
      from public.backup_server_default_config d
      left join public.backup_server_config c on c.server_id = p_server and c.parameter = d.parameter
      left join public.agent_status a on a.server_id = p_server
     where d.parameter not in ('domain', 'backup_server_status')
     order by d.parameter
$$;

create function api.show_pgsql_node_config(p_node bigint)
returns table ("Parameter" text, "Value" text, "Description" text)
language sql stable as $$
    select d.parameter, coalesce(c.value, d.value), d.description
      from public.pgsql_node_default_config d
      left join public.pgsql_node_config c on c.node_id = p_node and c.parameter = d.parameter
     where d.parameter not in ('domain', 'pgport', 'admin_user', 'admin_dbname', 'sslmode', 'pgsql_node_status')
     order by d.parameter
$$;

create view api.show_backup_server_default_config as
select parameter as "Parameter", value as "Value", description as "Description"
  from public.backup_server_default_config;

create view api.show_pgsql_node_default_config as
select parameter as "Parameter", value as "Value", description as "Description"
  from public.pgsql_node_default_config;

-- Statistics. Each returns one row; the shell shows it as a key/value report.
create function api.backup_server_stats(p_server bigint)
returns table ("SrvID" bigint, "Backup server" text, "PgSQL nodes" bigint, "Different databases" bigint,
               "Active definitions" bigint, "Stopped definitions" bigint, "Deleted definitions" bigint,
               "FULL definitions" bigint, "SCHEMA definitions" bigint, "DATA definitions" bigint,
               "CLUSTER definitions" bigint, "GLOBALS definitions" bigint,
               "Succeeded backups" bigint, "Faulty backups" bigint, "Total size" bigint,
               "Total running time" text, "Oldest backup" timestamptz, "Newest backup" timestamptz,
               "Queued jobs" bigint, "Forced deletions waiting" bigint, "Clones" bigint, "Clones disk use" bigint)
language sql stable as $$
    with d as (select * from public.backup_definition where backup_server_id = p_server),
         c as (select * from public.backup_catalog where backup_server_id = p_server)
    select s.server_id, s.fqdn,
           (select count(distinct pgsql_node_id) from d),
           (select count(distinct (pgsql_node_id, dbname)) from d where dbname <> ''),
           (select count(*) from d where job_status = 'ACTIVE'),
           (select count(*) from d where job_status = 'STOPPED'),
           (select count(*) from d where job_status = 'DELETED'),
           (select count(*) from d where backup_code = 'FULL'),
           (select count(*) from d where backup_code = 'SCHEMA'),
           (select count(*) from d where backup_code = 'DATA'),
           (select count(*) from d where backup_code = 'CLUSTER'),
           (select count(*) from d where backup_code = 'GLOBALS'),
           (select count(*) from c where execution_status = 'SUCCEEDED'),
           (select count(*) from c where execution_status <> 'SUCCEEDED'),
           (select coalesce(sum(total_size), 0)::bigint from c),
           (select coalesce(sum(duration), interval '0')::text from c),
           (select min(finished) from c),
           (select max(finished) from c),
           (select count(*) from public.job j where j.backup_server_id = p_server and j.state in ('QUEUED', 'RUNNING')),
           (select count(*) from public.catalog_entries_to_delete e where e.backup_server_id = p_server),
           -- clones (sql/90_clone_lifecycle.sql): as measured by maintenance, else as restored
           (select count(*) from public.clone k where k.backup_server_id = p_server and k.state in ('RUNNING', 'STOPPED')),
           (select coalesce(sum(coalesce(k.disk_bytes, k.size)), 0)::bigint from public.clone k
             where k.backup_server_id = p_server and k.state in ('RUNNING', 'STOPPED'))
      from public.backup_server s where s.server_id = p_server
$$;

create function api.pgsql_node_stats(p_node bigint)
returns table ("NodeID" bigint, "PgSQL node" text, "Backup servers" bigint, "Different databases" bigint,
               "Active definitions" bigint, "Stopped definitions" bigint, "Deleted definitions" bigint,
               "FULL definitions" bigint, "SCHEMA definitions" bigint, "DATA definitions" bigint,
               "CLUSTER definitions" bigint, "GLOBALS definitions" bigint,
               "Succeeded backups" bigint, "Faulty backups" bigint, "Total size" bigint,
               "Total running time" text, "Oldest backup" timestamptz, "Newest backup" timestamptz,
               "Queued jobs" bigint)
language sql stable as $$
    with d as (select * from public.backup_definition where pgsql_node_id = p_node),
         c as (select * from public.backup_catalog where pgsql_node_id = p_node)
    select n.node_id, n.fqdn,
           (select count(distinct backup_server_id) from d),
           (select count(distinct dbname) from d where dbname <> ''),
           (select count(*) from d where job_status = 'ACTIVE'),
           (select count(*) from d where job_status = 'STOPPED'),
           (select count(*) from d where job_status = 'DELETED'),
           (select count(*) from d where backup_code = 'FULL'),
           (select count(*) from d where backup_code = 'SCHEMA'),
           (select count(*) from d where backup_code = 'DATA'),
           (select count(*) from d where backup_code = 'CLUSTER'),
           (select count(*) from d where backup_code = 'GLOBALS'),
           (select count(*) from c where execution_status = 'SUCCEEDED'),
           (select count(*) from c where execution_status <> 'SUCCEEDED'),
           (select coalesce(sum(total_size), 0)::bigint from c),
           (select coalesce(sum(duration), interval '0')::text from c),
           (select min(finished) from c),
           (select max(finished) from c),
           (select count(*) from public.job j where j.pgsql_node_id = p_node and j.state in ('QUEUED', 'RUNNING'))
      from public.pgsql_node n where n.node_id = p_node
$$;

create view api.show_pgbackman_stats as
select (select count(*) from public.backup_server where status = 'RUNNING') as "Running backup servers",
       (select count(*) from public.backup_server where status = 'STOPPED') as "Stopped backup servers",
       (select count(*) from public.pgsql_node where status = 'RUNNING') as "Running PgSQL nodes",
       (select count(*) from public.pgsql_node where status = 'STOPPED') as "Stopped PgSQL nodes",
       (select count(distinct (pgsql_node_id, dbname)) from public.backup_definition where dbname <> '') as "Different databases",
       (select count(*) from public.backup_definition where job_status = 'ACTIVE') as "Active definitions",
       (select count(*) from public.backup_definition where job_status = 'STOPPED') as "Stopped definitions",
       (select count(*) from public.backup_definition where job_status = 'DELETED') as "Deleted definitions",
       (select count(*) from public.backup_definition where backup_code = 'FULL') as "FULL definitions",
       (select count(*) from public.backup_definition where backup_code = 'SCHEMA') as "SCHEMA definitions",
       (select count(*) from public.backup_definition where backup_code = 'DATA') as "DATA definitions",
       (select count(*) from public.backup_definition where backup_code = 'CLUSTER') as "CLUSTER definitions",
       (select count(*) from public.backup_definition where backup_code = 'GLOBALS') as "GLOBALS definitions",
       (select count(*) from public.snapshot_definition) as "Snapshot definitions",
       (select count(*) from public.backup_catalog where execution_status = 'SUCCEEDED') as "Succeeded backups",
       (select count(*) from public.backup_catalog where execution_status <> 'SUCCEEDED') as "Faulty backups",
       (select coalesce(sum(total_size), 0)::bigint from public.backup_catalog) as "Total size",
       (select coalesce(sum(duration), interval '0')::text from public.backup_catalog) as "Total running time",
       (select min(finished) from public.backup_catalog) as "Oldest backup",
       (select max(finished) from public.backup_catalog) as "Newest backup",
       (select count(*) from public.job where state in ('QUEUED', 'RUNNING')) as "Queued jobs",
       (select count(*) from public.catalog_entries_to_delete) as "Forced deletions waiting",
       (select count(*) from public.alert where not alert_sent) as "Unsent alerts";

create view api.show_audit_log as
select audit_id as "AuditID", at as "At", db_user as "DB user", os_user as "OS user",
       client_host as "Client", command as "Command", table_name as "Table", operation as "Operation",
       object_id as "Object"
  from public.audit_log;

-- The backup catalog, newest first. Filters on the typed columns use the indexes of
-- backup_catalog (each ends in "finished desc").
create view api.show_backup_catalog as
select c.bck_id as "BckID", c.def_id as "DefID", c.snapshot_id as "SnapshotID",
       c.finished as "Finished", c.backup_server_id as "SrvID", s.fqdn as "Backup server",
       c.pgsql_node_id as "NodeID", n.fqdn as "PgSQL node", c.dbname as "DBname",
       c.duration::text as "Duration", c.total_size as "Size", c.backup_code as "Code",
       c.execution_method as "Execution", c.execution_status as "Status",
       c.verification_state as "Verified", c.verification_level as "Verification level",
       c.verified_at as "Verified at"
  from public.backup_catalog c
  join public.backup_server s on s.server_id = c.backup_server_id
  join public.pgsql_node n on n.node_id = c.pgsql_node_id;

create view api.show_jobs_queue as
select j.job_id as "JobID", j.kind as "Kind", j.state as "State", j.registered as "Registered",
       j.backup_server_id as "SrvID", s.fqdn as "Backup server", j.pgsql_node_id as "NodeID", n.fqdn as "PgSQL node",
       coalesce(d.dbname, sd.dbname, rd.target_dbname, bc.dbname) as "DBname", j.def_id as "DefID", j.snapshot_id as "SnapshotID",
       j.not_before as "Not before", j.scheduled_for as "Scheduled for", j.claimed_by as "Agent", j.attempt as "Attempt",
       case when j.state = 'RUNNING' then date_trunc('second', now() - j.claimed_at)::text end as "Elapsed",
       j.progress_bytes as "Bytes written",
       case when j.state = 'RUNNING' and j.lease_expires_at < now() then true else false end as "Lease expired",
       j.cancel_requested as "Cancel requested", j.error_message as "Error",
       case when j.state = 'QUEUED' then api.agent_warning(j.backup_server_id) end as "Agent warning",
       case when j.state = 'RUNNING' then j.wait_note end as "Waiting for"
  from public.job j
  join public.backup_server s on s.server_id = j.backup_server_id
  left join public.pgsql_node n on n.node_id = j.pgsql_node_id
  left join public.backup_definition d on d.def_id = j.def_id
  left join public.snapshot_definition sd on sd.snapshot_id = j.snapshot_id
  left join public.restore_definition rd on rd.restore_def = j.restore_def
  left join public.backup_catalog bc on bc.bck_id = j.bck_id;

create view api.show_snapshot_definitions as
select sd.snapshot_id as "SnapshotID", sd.registered as "Registered", sd.backup_server_id as "SrvID",
       s.fqdn as "Backup server", sd.pgsql_node_id as "NodeID", n.fqdn as "PgSQL node", sd.dbname as "DBname",
       sd.at_time as "AT time", sd.backup_code as "Code", sd.client_major as "pg_dump release",
       sd.retention_period::text as "Retention", sd.extra_backup_parameters as "Parameters", sd.tag as "Tag",
       sd.status as "Status"
  from public.snapshot_definition sd
  join public.backup_server s on s.server_id = sd.backup_server_id
  join public.pgsql_node n on n.node_id = sd.pgsql_node_id;

-- Only snapshots that are running now (PgBackMan listed never-run and future ones too).
create view api.show_snapshots_in_progress as
select v.*, j.job_id as "JobID", date_trunc('second', now() - j.claimed_at)::text as "Elapsed",
       j.progress_bytes as "Bytes written"
  from api.show_snapshot_definitions v
  join public.job j on j.snapshot_id = v."SnapshotID" and j.state = 'RUNNING';

create function api.show_backup_details(p_bck_id bigint)
returns table ("BckID" bigint, "JobID" bigint, "DefID" bigint, "SnapshotID" bigint, "DBname" text,
               "Backup server" text, "PgSQL node" text, "Code" text, "Execution method" text, "Execution status" text,
               "Registered" timestamptz, "Started" timestamptz, "Finished" timestamptz, "Duration" text,
               "Total size" bigint, "Backup directory" text, "Dump file" text, "Dump file size" bigint,
               "Roles file" text, "Database config file" text, "Manifest" text, "Log file" text,
               "Checksum (sha256)" text, "Files" jsonb, "Database size" bigint,
               "PgSQL node release" text, "pg_dump release" text, "Client version" text, "Server version" text,
               "Dump format" text, "Compression" text, "Command" text, "Phase timings" jsonb, "Role list" text[],
               "Schedule" text, "Retention" text, "On disk until" timestamptz,
               "Verification" text, "Verification level" smallint, "Verified at" timestamptz,
               "Verification error" text, "Drill restore time" text,
               "Failed step" text, "Exit status" integer, "Error message" text, "Stderr tail" text, "Note" text,
               "Base backup state" text, "System identifier" text, "Timeline" bigint, "Start LSN" text,
               "Stop LSN" text, "Start time" timestamptz, "Stop time" timestamptz, "WAL" text, "Tablespaces" jsonb,
               "Manifest check" text, "Missing WAL" text[], "Encrypted with" text)
language sql stable as $$
    select c.bck_id, c.job_id, c.def_id, c.snapshot_id, c.dbname, s.fqdn, n.fqdn, c.backup_code, c.execution_method,
           c.execution_status, c.registered, c.started, c.finished, c.duration::text, c.total_size, c.backup_dir,
           c.pg_dump_file, c.pg_dump_file_size, c.pg_dump_roles_file, c.pg_dump_dbconfig_file, c.manifest_file,
           c.pg_dump_log_file, c.checksum, c.files, c.dbname_size, c.pgsql_node_release, c.pg_dump_release,
           c.client_version, c.server_version, case when c.backup_code = 'BASEBACKUP' then 'tar (pg_basebackup)' else c.dump_format end, c.compression, c.command, c.phase_timings, c.role_list,
           api.schedule_in_zone(concat_ws(' ', d.minutes_cron, d.hours_cron, d.day_month_cron, d.month_cron, d.weekday_cron),
                                c.backup_server_id),
           coalesce(d.retention_period, sd.retention_period)::text || coalesce(' (' || d.retention_redundancy || ')', ''),
           c.finished + coalesce(d.retention_period, sd.retention_period),
           c.verification_state, c.verification_level, c.verified_at,
           c.verification_error, date_trunc('millisecond', c.drill_duration)::text,
           c.error_step, c.error_exit_status, c.error_message, c.error_stderr_tail, c.note,
           -- base backups (sql/87_base_backups.sql): NULL for logical sets
           bb.state, bb.system_identifier::text, bb.timeline, bb.start_lsn::text, bb.stop_lsn::text, bb.start_time, bb.stop_time,
           case bb.wal_method when 'fetch' then 'included in the set (no WAL archive when it ran)'
                              when 'none' then 'from the WAL archive (ledger)' end,
           bb.tablespaces,
           bb.manifest_state || coalesce(': ' || bb.manifest_detail, ''), nullif(bb.missing_wal, '{}'),
           -- sql/35_encryption.sql: the keys whose identities read the set (NULL: plain)
           (select string_agg(coalesce(k.name, 'unknown key') || ' (' || f.fp || ')', ', ' order by f.ord)
              from unnest(c.encrypted_with) with ordinality f(fp, ord)
              left join public.encryption_key k on k.fingerprint = f.fp)
      from public.backup_catalog c
      left join public.base_backup bb on bb.bck_id = c.bck_id
      join public.backup_server s on s.server_id = c.backup_server_id
      join public.pgsql_node n on n.node_id = c.pgsql_node_id
      left join public.backup_definition d on d.def_id = c.def_id
      left join public.snapshot_definition sd on sd.snapshot_id = c.snapshot_id
     where c.bck_id = p_bck_id
$$;
