-- Clone lifecycle additions (issue 12, part E; clones, stop/start/delete, expiry, its alert and
-- max_clones are V21's): how long before a clone expires its CLONE_EXPIRY alert is raised (a
-- backup server parameter), and the clones' disk use as the agent measures it (disk_bytes) for
-- show_backup_server_stats.
alter table clone
    add column disk_bytes       bigint,
    add column disk_measured_at timestamptz;

insert into backup_server_default_config (parameter, value, description) values
    ('clone_expiry_warning', '1 day',
     'How long before a clone expires (register_pitr_restore --expires) a CLONE_EXPIRY alert says it will be deleted');
