-- Restores (issue 5): what V1's restore tables did not record yet.

-- How the dump reaches pg_restore: auto (the agent decides), stream (decoded into pg_restore's
-- stdin, serial), file (decoded to a staging file first, so that -j N works) or tee (data
-- streamed serially while a staging file is written, then post-data with -j N from the file).
alter table restore_definition
    add column decompression text not null default 'auto' check (decompression in ('auto', 'stream', 'file', 'tee'));

alter table restore_catalog
    add column backup_code     text,
    add column roles_reused    text[] not null default '{}',
    add column command         text,                        -- pg_restore / psql argv, no secret in it
    add column phase_timings   jsonb not null default '{}',
    add column restored_size   bigint,                      -- pg_database_size of the restored database
    add column cleanup         text;                        -- what a failed restore undid on the target

-- show_restore_definitions lists newest first, by server or by target.
create index restore_definition_server_idx on restore_definition (backup_server_id, restore_def desc);
create index job_restore_def_idx on job (restore_def) where restore_def is not null;
