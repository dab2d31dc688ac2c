-- The second repository copy (issue 13; pgBackRest's multi-repo): a backup server (its default)
-- or a definition may name a repository every set stored in a repository is copied to; the agent
-- copies a complete set object by object and verifies the copy (level 1) before it counts. One
-- row per copy of a set: PENDING is never stored (a set without a VERIFIED row is due), FAILED
-- says why and how often, VERIFIED since when.
alter table backup_server add column copy_repository_id bigint references repository;
alter table backup_definition add column copy_repository_id bigint references repository;
create table backup_copy (
    bck_id         bigint not null references backup_catalog on delete cascade,
    repository_id  bigint not null references repository,
    object_prefix  text not null,
    state          text not null check (state in ('VERIFIED', 'FAILED')),
    attempts       integer not null default 1,
    error          text,
    verified       timestamptz,
    updated        timestamptz not null default now(),
    primary key (bck_id, repository_id)
);
create index backup_copy_repository_idx on backup_copy (repository_id);
