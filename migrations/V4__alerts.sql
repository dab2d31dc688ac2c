-- Alert delivery (issue 4). An alert is QUEUED until an agent mails it (SENT), gives up after its
-- attempts (FAILED), or finds it older than its maximum age (EXPIRED: not mailed, so that turning
-- mail on does not flood the DBAs with history). Undelivered alerts are never purged.
alter table alert
    add column state      text not null default 'QUEUED' check (state in ('QUEUED', 'SENT', 'FAILED', 'EXPIRED')),
    add column claimed_by text,          -- agent that holds (or last held) it for mailing
    add column message_id text;          -- Message-ID of the mail that was sent
update alert set state = 'SENT' where alert_sent;

-- The sender's claim reads due alerts oldest first; alert_sent no longer decides that.
drop index if exists alert_unsent_idx;
create index alert_due_idx on alert (next_attempt_at) where state = 'QUEUED';
-- One index per filter of show_alerts, each ending in "registered desc".
create index alert_registered_idx on alert (registered desc);
create index alert_server_idx on alert (backup_server_id, registered desc);
create index alert_node_idx on alert (pgsql_node_id, registered desc);
create index alert_state_idx on alert (state, registered desc);
-- "Is an overdue episode of this definition already alerted?"
create index alert_overdue_idx on alert (ref_id, registered desc) where alert_type = 'OVERDUE';

insert into pgsql_node_default_config (parameter, value, description) values
    ('overdue_grace_period', '4 hours',
     'How long after a scheduled time a successful backup of a definition may still be missing before an OVERDUE alert is raised');
