-- pgbackman catalog, version 1.
-- Tables, types and indexes only. Functions, triggers and views live in sql/ (schema "api"),
-- which is dropped and re-created on every `pgbackman db upgrade`. Never edit a released migration:
-- add a new V<n>__<name>.sql instead.
--
-- Status and code columns are text with CHECK constraints rather than enum types or lookup tables:
-- the values are few, readable in psql, and a new value is one ALTER of a constraint.

create table catalog_info (
    singleton       boolean primary key default true check (singleton),
    installed_at    timestamptz not null default now(),
    sql_version     text not null default '',   -- hash of the sql/ bundle last applied
    sql_applied_at  timestamptz,
    software        text not null default ''    -- pgbackman version that applied it
);
insert into catalog_info default values;

-- Global defaults copied into per-server / per-node configuration at registration.
create table backup_server_default_config (
    parameter   text primary key,
    value       text not null,
    description text not null
);

create table pgsql_node_default_config (
    parameter   text primary key,
    value       text not null,
    description text not null
);

insert into backup_server_default_config (parameter, value, description) values
    ('root_backup_partition', '/srv/pgbackman', 'Root directory of backups, spool and cache on this backup server'),
    ('pgsql_bin_dir', '/usr/lib/postgresql/{major}/bin', 'Directory of the PostgreSQL client programs; {major} is replaced by the client major version'),
    ('domain', 'example.org', 'Default domain for new backup servers'),
    ('backup_server_status', 'RUNNING', 'Default status of new backup servers (RUNNING or STOPPED)'),
    ('max_concurrent_jobs', '4', 'Maximum number of jobs this backup server runs at once');

insert into pgsql_node_default_config (parameter, value, description) values
    ('pgnode_backup_partition', 'pgsql_node_%%pgnode%%', 'Directory of the node''s backups, relative to the server''s root_backup_partition unless absolute; %%pgnode%% is replaced by the NodeID'),
    ('encryption', 'false', 'Default encryption flag of new backup definitions (reserved)'),
    ('retention_period', '7 days', 'Default retention period of new backup and snapshot definitions'),
    ('retention_redundancy', '1', 'Default number of newest successful backups always kept'),
    ('automatic_deletion_retention', '14 days', 'How long DELETED definitions and their backups are kept before removal'),
    ('pgport', '5432', 'Default port of new PgSQL nodes'),
    ('admin_user', 'postgres', 'Default admin user of new PgSQL nodes'),
    ('admin_dbname', 'postgres', 'Default database for the admin connection of new PgSQL nodes'),
    ('sslmode', 'prefer', 'Default libpq sslmode of new PgSQL nodes'),
    ('domain', 'example.org', 'Default domain of new PgSQL nodes'),
    ('pgsql_node_status', 'STOPPED', 'Default status of new PgSQL nodes (RUNNING or STOPPED)'),
    ('backup_job_status', 'ACTIVE', 'Default status of new backup definitions (ACTIVE or STOPPED)'),
    ('backup_code', 'FULL', 'Default backup code (FULL, SCHEMA, DATA, CLUSTER, GLOBALS)'),
    ('backup_minutes_interval', '01-59', 'Range a random minute is picked from when none is given'),
    ('backup_hours_interval', '01-06', 'Range a random hour is picked from when none is given'),
    ('backup_day_month_cron', '*', 'Default day-of-month cron field'),
    ('backup_month_cron', '*', 'Default month cron field'),
    ('backup_weekday_cron', '*', 'Default day-of-week cron field'),
    ('extra_backup_parameters', '', 'Default extra pg_dump parameters'),
    ('extra_restore_parameters', '', 'Default extra pg_restore parameters'),
    ('logs_email', 'example@example.org', 'Recipient of this node''s alerts'),
    ('node_profile', 'standard', 'standard, or managed for services without superuser (no role passwords)'),
    ('autoregister', 'false', 'Create backup definitions automatically for new databases of this node');

create table backup_server (
    server_id    bigint generated always as identity primary key,
    hostname     text not null check (hostname <> '' and hostname !~ '\s'),
    domain_name  text not null default '' check (domain_name !~ '\s'),
    fqdn         text generated always as
                   (case when domain_name = '' then hostname else hostname || '.' || domain_name end) stored,
    status       text not null default 'RUNNING' check (status in ('RUNNING', 'STOPPED')),
    registered   timestamptz not null default now(),
    updated      timestamptz,
    remarks      text not null default ''
);
-- Host names are case-insensitive: one server per FQDN whatever its spelling.
create unique index backup_server_fqdn_key on backup_server (lower(fqdn));

create table backup_server_config (
    server_id  bigint not null references backup_server on delete cascade,
    parameter  text not null,
    value      text not null,
    primary key (server_id, parameter)
);

create table pgsql_node (
    node_id      bigint generated always as identity primary key,
    hostname     text not null check (hostname <> '' and hostname !~ '\s'),
    domain_name  text not null default '' check (domain_name !~ '\s'),
    fqdn         text generated always as
                   (case when domain_name = '' then hostname else hostname || '.' || domain_name end) stored,
    pgport       integer not null default 5432 check (pgport between 1 and 65535),
    admin_user   text not null default 'postgres' check (admin_user <> ''),
    admin_dbname text not null default 'postgres' check (admin_dbname <> ''),
    sslmode      text not null default 'prefer'
                   check (sslmode in ('disable', 'allow', 'prefer', 'require', 'verify-ca', 'verify-full')),
    status       text not null default 'STOPPED' check (status in ('RUNNING', 'STOPPED')),
    pg_version   integer,            -- server_version_num last seen, informational
    registered   timestamptz not null default now(),
    updated      timestamptz,
    remarks      text not null default ''
);
-- A node is host + port: two clusters on one host are two nodes.
create unique index pgsql_node_fqdn_port_key on pgsql_node (lower(fqdn), pgport);

create table pgsql_node_config (
    node_id    bigint not null references pgsql_node on delete cascade,
    parameter  text not null,
    value      text not null,
    primary key (node_id, parameter)
);

create table backup_definition (
    def_id                   bigint generated always as identity primary key,
    backup_server_id         bigint not null references backup_server,
    pgsql_node_id            bigint not null references pgsql_node,
    dbname                   text not null default '',
    minutes_cron             text not null default '*',
    hours_cron               text not null default '*',
    day_month_cron           text not null default '*',
    month_cron               text not null default '*',
    weekday_cron             text not null default '*',
    backup_code              text not null default 'FULL'
                               check (backup_code in ('FULL', 'SCHEMA', 'DATA', 'CLUSTER', 'GLOBALS')),
    encryption               boolean not null default false,
    retention_period         interval not null default '7 days',
    retention_redundancy     integer not null default 1 check (retention_redundancy >= 0),
    extra_backup_parameters  text not null default '',
    job_status               text not null default 'ACTIVE' check (job_status in ('ACTIVE', 'STOPPED', 'DELETED')),
    -- Options used by the agent (later issues); defaults keep PgBackMan behaviour safe.
    dump_format              text not null default 'custom' check (dump_format in ('custom', 'directory')),
    dump_jobs                integer not null default 1 check (dump_jobs between 1 and 64),
    compression_level        integer not null default 3 check (compression_level between 0 and 22),
    max_runtime              interval,
    lock_wait_timeout        interval,
    client_major             integer,
    drill_schedule           text,   -- cron line of restore drills of the newest backup, NULL = none
    registered               timestamptz not null default now(),   -- creation time, never overwritten
    updated                  timestamptz,
    status_changed_at        timestamptz not null default now(),   -- quarantine clock
    remarks                  text not null default '',
    check (backup_code in ('CLUSTER', 'GLOBALS') or dbname <> '')
);
-- Identical live definitions are refused; a DELETED one does not block re-registration.
create unique index backup_definition_identity_key on backup_definition
    (backup_server_id, pgsql_node_id, dbname, minutes_cron, hours_cron, day_month_cron, month_cron,
     weekday_cron, backup_code, extra_backup_parameters)
    where job_status <> 'DELETED';
create index backup_definition_node_db_idx on backup_definition (pgsql_node_id, dbname);
create index backup_definition_server_idx on backup_definition (backup_server_id, job_status);

create table snapshot_definition (
    snapshot_id              bigint generated always as identity primary key,
    backup_server_id         bigint not null references backup_server,
    pgsql_node_id            bigint not null references pgsql_node,
    dbname                   text not null default '',
    at_time                  timestamptz not null,
    backup_code              text not null default 'FULL'
                               check (backup_code in ('FULL', 'SCHEMA', 'DATA', 'CLUSTER', 'GLOBALS')),
    retention_period         interval not null default '7 days',
    extra_backup_parameters  text not null default '',
    tag                      text not null default '',
    client_major             integer,   -- pg_dump major to use; NULL = the best one for the node
    status                   text not null default 'WAITING'
                               check (status in ('WAITING', 'QUEUED', 'RUNNING', 'SUCCEEDED', 'ERROR', 'CANCELLED')),
    registered               timestamptz not null default now(),
    remarks                  text not null default ''
);
create index snapshot_definition_server_idx on snapshot_definition (backup_server_id, status);
create index snapshot_definition_node_idx on snapshot_definition (pgsql_node_id, dbname);
create index snapshot_definition_tag_idx on snapshot_definition (tag);

create table backup_catalog (
    bck_id                    bigint generated always as identity primary key,
    job_id                    bigint unique,   -- idempotency key of the agent's report
    def_id                    bigint references backup_definition,
    snapshot_id               bigint references snapshot_definition,
    backup_server_id          bigint not null references backup_server,
    pgsql_node_id             bigint not null references pgsql_node,
    dbname                    text not null default '',
    backup_code               text not null check (backup_code in ('FULL', 'SCHEMA', 'DATA', 'CLUSTER', 'GLOBALS')),
    procpid                   integer,
    started                   timestamptz not null,
    finished                  timestamptz not null,
    duration                  interval generated always as (finished - started) stored,
    backup_dir                text,
    pg_dump_file              text,
    pg_dump_file_size         bigint,
    pg_dump_log_file          text,
    pg_dump_roles_file        text,
    pg_dump_roles_file_size   bigint,
    pg_dump_roles_log_file    text,
    pg_dump_dbconfig_file     text,
    pg_dump_dbconfig_file_size bigint,
    pg_dump_dbconfig_log_file text,
    manifest_file             text,
    global_log_file           text,
    total_size                bigint not null default 0,
    files                     jsonb not null default '[]',   -- [{path, size, sha256}]
    checksum                  text,                           -- sha256 of the main dump
    dbname_size               bigint,
    execution_status          text not null check (execution_status in ('SUCCEEDED', 'ERROR', 'CANCELLED')),
    execution_method          text not null check (execution_method in ('CRON', 'AT', 'MANUAL')),
    error_step                text,
    error_exit_status         integer,
    error_message             text,
    error_stderr_tail         text,
    role_list                 text[] not null default '{}',
    pgsql_node_release        text,
    pg_dump_release           text,
    client_version            text,
    server_version            text,
    dump_format               text,
    compression               text,
    command                   text,     -- argv with secrets removed
    phase_timings             jsonb not null default '{}',
    table_row_counts          jsonb,
    verification_level        smallint not null default 0 check (verification_level between 0 and 3),
    verification_state        text not null default 'UNVERIFIED'
                                check (verification_state in ('UNVERIFIED', 'PASSED', 'FAILED')),
    verified_at               timestamptz,
    verification_error        text,
    drill_duration            interval,
    retention_state           text not null default 'KEPT' check (retention_state in ('KEPT', 'DELETING')),
    delete_marked_at          timestamptz,
    registered                timestamptz not null default now(),
    check ((def_id is null) <> (snapshot_id is null))
);
-- One index per filter of show_backup_catalog, each ending in "finished" so the newest-first
-- listing of a million rows reads only the rows it shows.
create index backup_catalog_finished_idx on backup_catalog (finished desc);
create index backup_catalog_server_idx on backup_catalog (backup_server_id, finished desc);
create index backup_catalog_node_idx on backup_catalog (pgsql_node_id, finished desc);
create index backup_catalog_dbname_idx on backup_catalog (dbname, finished desc);
create index backup_catalog_def_idx on backup_catalog (def_id, finished desc) where def_id is not null;
create index backup_catalog_snapshot_idx on backup_catalog (snapshot_id, finished desc) where snapshot_id is not null;
create index backup_catalog_status_idx on backup_catalog (execution_status, finished desc);
create index backup_catalog_code_idx on backup_catalog (backup_code, finished desc);

create table restore_definition (
    restore_def              bigint generated always as identity primary key,
    backup_server_id         bigint not null references backup_server,
    target_pgsql_node_id     bigint not null references pgsql_node,
    bck_id                   bigint not null references backup_catalog on delete cascade,
    target_dbname            text not null default '',
    renamed_dbname           text,
    roles_to_restore         text[] not null default '{}',
    extra_restore_parameters text not null default '',
    restore_jobs             integer not null default 1 check (restore_jobs between 1 and 64),
    is_drill                 boolean not null default false,
    acknowledge_nonempty     boolean not null default false,
    at_time                  timestamptz not null default now(),
    status                   text not null default 'WAITING'
                               check (status in ('WAITING', 'QUEUED', 'RUNNING', 'SUCCEEDED', 'ERROR', 'CANCELLED')),
    registered               timestamptz not null default now(),
    remarks                  text not null default ''
);
create index restore_definition_bck_idx on restore_definition (bck_id);
create index restore_definition_target_idx on restore_definition (target_pgsql_node_id, target_dbname);

create table restore_catalog (
    restore_id                 bigint generated always as identity primary key,
    job_id                     bigint unique,
    restore_def                bigint references restore_definition on delete cascade,
    bck_id                     bigint references backup_catalog on delete set null,
    backup_server_id           bigint not null references backup_server,
    target_pgsql_node_id       bigint not null references pgsql_node,
    procpid                    integer,
    source_dbname              text not null default '',
    target_dbname              text not null default '',
    renamed_dbname             text,
    started                    timestamptz not null,
    finished                   timestamptz not null,
    duration                   interval generated always as (finished - started) stored,
    restore_log_file           text,
    global_log_file            text,
    execution_status           text not null check (execution_status in ('SUCCEEDED', 'ERROR', 'CANCELLED')),
    error_step                 text,
    error_exit_status          integer,
    error_message              text,
    error_stderr_tail          text,
    role_list                  text[] not null default '{}',
    roles_created              text[] not null default '{}',
    target_pgsql_node_release  text,
    backup_pg_release          text,
    client_version             text,
    flags                      jsonb not null default '{}',
    is_drill                   boolean not null default false,
    row_count_check            jsonb,
    registered                 timestamptz not null default now()
);
create index restore_catalog_finished_idx on restore_catalog (finished desc);
create index restore_catalog_server_idx on restore_catalog (backup_server_id, finished desc);
create index restore_catalog_target_idx on restore_catalog (target_pgsql_node_id, target_dbname, finished desc);
create index restore_catalog_bck_idx on restore_catalog (bck_id);

-- The job queue: every run of anything, scheduled or ad hoc. An agent claims a row with
-- FOR UPDATE SKIP LOCKED and holds it by a lease; "attempt" fences late reports.
create table job (
    job_id            bigint generated always as identity primary key,
    kind              text not null check (kind in ('BACKUP', 'SNAPSHOT', 'RESTORE', 'VERIFY', 'DRILL')),
    backup_server_id  bigint not null references backup_server,
    pgsql_node_id     bigint references pgsql_node,
    def_id            bigint references backup_definition on delete cascade,
    snapshot_id       bigint references snapshot_definition on delete cascade,
    restore_def       bigint references restore_definition on delete cascade,
    bck_id            bigint references backup_catalog on delete cascade,
    scheduled_for     timestamptz,      -- the cron instant of a scheduled fire
    not_before        timestamptz not null default now(),
    state             text not null default 'QUEUED'
                        check (state in ('QUEUED', 'RUNNING', 'SUCCEEDED', 'FAILED', 'CANCELLED', 'LOST')),
    attempt           integer not null default 0,
    claimed_by        text,
    claimed_at        timestamptz,
    lease_expires_at  timestamptz,
    heartbeat_at      timestamptz,
    progress_bytes    bigint not null default 0,
    cancel_requested  boolean not null default false,
    finished_at       timestamptz,
    error_message     text,
    registered        timestamptz not null default now()
);
-- A scheduled instant runs once, however often the agent restarts.
create unique index job_def_scheduled_key on job (def_id, scheduled_for) where scheduled_for is not null;
create index job_open_idx on job (backup_server_id, not_before) where state in ('QUEUED', 'RUNNING');
create index job_lease_idx on job (lease_expires_at) where state = 'RUNNING';
create index job_def_idx on job (def_id) where def_id is not null;

create table alert (
    alert_id          bigint generated always as identity primary key,
    registered        timestamptz not null default now(),
    alert_type        text not null
                        check (alert_type in ('BACKUP', 'SNAPSHOT', 'RESTORE', 'DRILL', 'LOST_JOB', 'OVERDUE', 'QUARANTINE', 'VERIFY')),
    backup_server_id  bigint references backup_server on delete cascade,
    pgsql_node_id     bigint references pgsql_node on delete cascade,
    ref_id            bigint,
    bck_id            bigint references backup_catalog on delete set null,
    restore_id        bigint references restore_catalog on delete set null,
    job_id            bigint,
    dbname            text not null default '',
    execution_status  text,
    error_message     text,
    sendto            text not null default '',
    alert_sent        boolean not null default false,
    sent_at           timestamptz,
    attempts          integer not null default 0,
    last_error        text,
    next_attempt_at   timestamptz not null default now()
);
create index alert_unsent_idx on alert (backup_server_id, next_attempt_at) where not alert_sent;

-- Files of force-deleted catalog rows, removed later by the agent of the server that holds them.
create table catalog_entries_to_delete (
    del_id            bigint generated always as identity primary key,
    backup_server_id  bigint not null references backup_server,
    def_id            bigint,
    snapshot_id       bigint,
    bck_id            bigint,
    paths             text[] not null default '{}',
    registered        timestamptz not null default now()
);
create index catalog_entries_to_delete_server_idx on catalog_entries_to_delete (backup_server_id);

-- A deleted node's files must be removed by every backup server that may hold some.
create table pgsql_node_to_delete (
    backup_server_id  bigint not null references backup_server on delete cascade,
    pgsql_node_id     bigint not null,
    backup_partition  text not null,
    registered        timestamptz not null default now(),
    primary key (backup_server_id, pgsql_node_id)
);

-- Who changed what, when: one row per changed row of the administrative tables.
create table audit_log (
    audit_id     bigint generated always as identity primary key,
    at           timestamptz not null default now(),
    db_user      text not null default session_user,
    os_user      text,
    client_host  text,
    application  text,
    command      text,
    table_name   text not null,
    operation    text not null check (operation in ('INSERT', 'UPDATE', 'DELETE')),
    object_id    text,
    old_row      jsonb,
    new_row      jsonb
);
create index audit_log_at_idx on audit_log (at desc);
create index audit_log_object_idx on audit_log (table_name, object_id);
