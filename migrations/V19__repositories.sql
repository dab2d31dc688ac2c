-- Backup repositories (issue 13): where backup sets (and later base backups and WAL) are stored.
-- A repository is a local directory on the backup server or a bucket (with an optional prefix)
-- of an S3-compatible object store. Credentials are never stored here: an S3 repository names
-- the file on the agent's host that holds them (credentials_file), or none, and then the
-- agent's environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY) gives them.
create table repository (
    repository_id     bigint generated always as identity primary key,
    name              text not null check (name ~ '^[A-Za-z][A-Za-z0-9_.-]{0,62}$'),
    kind              text not null check (kind in ('local', 's3')),
    -- local: an absolute directory on the backup server.
    path              text check (path is null or path ~ '^/'),
    -- s3: the endpoint URL, bucket (S3's naming rule), key prefix (no leading or trailing /)
    -- and region (signature scope; most S3-compatible servers take any).
    endpoint          text check (endpoint is null or endpoint ~ '^https?://[^\s/]+'),
    bucket            text check (bucket is null or bucket ~ '^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$'),
    prefix            text not null default '' check (prefix !~ '^/' and prefix !~ '/$' and prefix !~ '\s'),
    region            text not null default 'us-east-1' check (region ~ '^[a-z0-9-]{1,32}$'),
    credentials_file  text check (credentials_file is null or credentials_file ~ '^/'),
    registered        timestamptz not null default now(),
    updated           timestamptz,
    remarks           text not null default '',
    check ((kind = 'local') = (path is not null)),
    check ((kind = 's3') = (endpoint is not null and bucket is not null)),
    check (kind = 's3' or (prefix = '' and credentials_file is null))
);
create unique index repository_name_key on repository (lower(name));

-- A backup server's primary repository: NULL keeps its local backup_dir (the default).
alter table backup_server add column repository_id bigint references repository;
create index backup_server_repository_idx on backup_server (repository_id) where repository_id is not null;
-- A definition may name a repository of its own; NULL takes its server's primary.
alter table backup_definition add column repository_id bigint references repository;
create index backup_definition_repository_idx on backup_definition (repository_id) where repository_id is not null;
-- Where a set lives: NULL = its backup_dir on the server's disk (every set before V19); else
-- the repository and the key prefix of its objects (files[].path are relative to it).
alter table backup_catalog add column repository_id bigint references repository;
alter table backup_catalog add column object_prefix text;
alter table backup_catalog add constraint backup_catalog_object_prefix_check
    check ((repository_id is null) = (object_prefix is null));
create index backup_catalog_repository_idx on backup_catalog (repository_id, finished desc) where repository_id is not null;
