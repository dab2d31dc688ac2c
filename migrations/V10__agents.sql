-- Agents seen by the catalog (issue 14, "One source of truth, visible").
--
-- One row per backup server: the last heartbeat of its agent, what it runs with (the effective
-- value and source of each configuration value the agent uses: catalog, agent file or default),
-- its own view of its health, its spool and its time zone. Written only by api.agent_heartbeat.
create table agent_status (
    server_id     bigint primary key references backup_server on delete cascade,
    agent_name    text not null,
    last_seen     timestamptz not null,
    started_at    timestamptz,
    version       text not null default '',
    health        text not null check (health in ('online', 'degraded', 'offline')),
    spooled       integer not null default 0,
    time_zone     text,
    config        jsonb not null default '{}'   -- {"parameter": {"value": "...", "source": "catalog"}}
);

-- AGENT_NOT_SEEN: a backup server's agent sent no heartbeat for the server's threshold; raised
-- and mailed by any other agent (the silent one cannot).
alter table alert drop constraint if exists alert_alert_type_check;
alter table alert add constraint alert_alert_type_check
    check (alert_type in ('BACKUP', 'SNAPSHOT', 'RESTORE', 'DRILL', 'LOST_JOB', 'OVERDUE', 'QUARANTINE', 'VERIFY',
                          'MAINTENANCE', 'AGENT_NOT_SEEN'));
create index alert_agent_not_seen_idx on alert (backup_server_id, registered desc) where alert_type = 'AGENT_NOT_SEEN';

insert into backup_server_default_config (parameter, value, description) values
    ('agent_not_seen_threshold', '5 minutes',
     'How long the agent of this server may send no heartbeat before it is shown offline and an AGENT_NOT_SEEN alert is raised');

-- These values now count: the agent reads them from the catalog (its file may override one, visibly).
update backup_server_default_config
   set description = 'Root directory of the backup sets on this backup server (the agent file''s [agent] backup_dir overrides it)'
 where parameter = 'root_backup_partition';
update backup_server_default_config
   set description = 'Maximum number of jobs this backup server runs at once (the agent file''s [agent] max_jobs overrides it)'
 where parameter = 'max_concurrent_jobs';
update backup_server_default_config
   set description = 'Directory of the PostgreSQL client programs; {major} is replaced by each client major version (the agent file''s [agent.bin_dirs] overrides it)'
 where parameter = 'pgsql_bin_dir';
