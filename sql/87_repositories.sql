-- Backup repositories (issue 13; table in migrations/V19__repositories.sql): a local directory
-- or an S3-compatible bucket. The catalog keeps where a repository is and which sets live there;
-- never its credentials (a file on the agent's host, or the agent's environment).

-- A repository by name (case-insensitive) or RepoID.
create function api.repository_id(p_ref text) returns bigint
language plpgsql stable as $$
declare
    v_ref text := btrim(coalesce(p_ref, ''));
    v_id bigint;
begin
    if v_ref = '' then
        raise exception 'no repository given'
            using errcode = '22023', hint = 'Give a repository name or RepoID; show_repositories lists them.';
    end if;
    if v_ref ~ '^[0-9]{1,18}$' then
        select repository_id into v_id from public.repository where repository_id = v_ref::bigint;
    else
        select repository_id into v_id from public.repository where lower(name) = lower(v_ref);
    end if;
    if v_id is null then
        raise exception 'repository % does not exist', api.q(v_ref)
            using errcode = 'P0002', hint = 'show_repositories lists the repositories; register_repository adds one.';
    end if;
    return v_id;
end $$;

-- The checks shared by register and update: what each field may hold, with the fix.
create function api.check_repository(p_kind text, p_name text, p_path text, p_endpoint text, p_bucket text,
                                     p_prefix text, p_region text, p_credentials_file text)
returns void language plpgsql immutable as $$
begin
    if p_name !~ '^[A-Za-z][A-Za-z0-9_.-]{0,62}$' then
        raise exception 'repository name % is not valid', api.q(p_name)
            using errcode = '22023', hint = 'A name starts with a letter and has at most 63 letters, digits, "_", "." or "-", e.g. offsite-s3.';
    end if;
    if p_kind = 'local' then
        if p_path is null or p_path !~ '^/' or p_path ~ '(^|/)\.\.(/|$)' or p_path ~ '[\r\n\t]' then
            raise exception 'local repository path % is not an absolute directory', api.q(p_path)
                using errcode = '22023', hint = 'Give the absolute directory on the backup server, e.g. register_repository archive local /srv/pgbackman-archive.';
        end if;
        return;
    elsif p_kind <> 's3' then
        raise exception 'repository kind % is not known', api.q(p_kind)
            using errcode = '22023', hint = 'A repository is "local PATH" or "s3 --endpoint URL --bucket NAME".';
    end if;
    if p_endpoint is null or p_endpoint !~ '^https?://[^\s/@]+(/[^\s]*)?$' then
        raise exception 'S3 endpoint % is not an http(s) URL', api.q(p_endpoint)
            using errcode = '22023',
                  hint = 'Give --endpoint with the scheme and host, without user or password, e.g. https://s3.eu-west-1.amazonaws.com or http://127.0.0.1:8333.';
    end if;
    if p_bucket is null or p_bucket !~ '^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$' then
        raise exception 'bucket name % is not valid', api.q(p_bucket)
            using errcode = '22023', hint = 'A bucket name has 3 to 63 lower-case letters, digits, "." or "-" (S3''s rule), e.g. --bucket pgbackman-backups.';
    end if;
    if p_prefix ~ '^/' or p_prefix ~ '/$' or p_prefix ~ '\s' or p_prefix ~ '(^|/)\.\.?(/|$)' or p_prefix ~ '//' then
        raise exception 'prefix % is not a key prefix', api.q(p_prefix)
            using errcode = '22023', hint = 'A prefix is a path inside the bucket without leading or trailing "/", e.g. --prefix site1/pgbackman.';
    end if;
    if p_region !~ '^[a-z0-9-]{1,32}$' then
        raise exception 'region % is not valid', api.q(p_region)
            using errcode = '22023', hint = 'Give the bucket''s region, e.g. --region eu-west-1 (us-east-1 for most S3-compatible servers).';
    end if;
    if p_credentials_file is not null and (p_credentials_file !~ '^/' or p_credentials_file ~ '[\r\n\t]') then
        raise exception 'credentials file % is not an absolute path', api.q(p_credentials_file)
            using errcode = '22023',
                  hint = 'Give the absolute path of the file on the agent''s host (lines access_key_id=… and secret_access_key=…), or leave it out: the agent then takes AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY from its environment.';
    end if;
end $$;

-- `register_repository NAME local PATH` / `register_repository NAME s3 --endpoint URL --bucket B
-- [--prefix P] [--region R] [--credentials-file FILE]`.
create function api.register_repository(p_name text, p_kind text, p_path text, p_endpoint text, p_bucket text,
                                        p_prefix text, p_region text, p_credentials_file text, p_remarks text)
returns bigint language plpgsql as $$
declare
    v_name text := btrim(coalesce(p_name, ''));
    v_kind text := lower(btrim(coalesce(p_kind, '')));
    v_path text := nullif(rtrim(btrim(coalesce(p_path, '')), '/'), '');
    v_endpoint text := nullif(rtrim(btrim(coalesce(p_endpoint, '')), '/'), '');
    v_bucket text := nullif(btrim(coalesce(p_bucket, '')), '');
    v_prefix text := btrim(coalesce(p_prefix, ''));
    v_region text := coalesce(nullif(btrim(coalesce(p_region, '')), ''), 'us-east-1');
    v_creds text := nullif(btrim(coalesce(p_credentials_file, '')), '');
    v_id bigint;
begin
    if v_kind = 'local' and p_path ~ '^/+$' then
        v_path := '/';
    end if;
    perform api.check_repository(v_kind, v_name, v_path, v_endpoint, v_bucket, v_prefix, v_region, v_creds);
    if v_kind = 'local' and (v_endpoint is not null or v_bucket is not null or v_prefix <> '' or v_creds is not null
                             or nullif(btrim(coalesce(p_region, '')), '') is not null) then
        raise exception 'a local repository takes a path only'
            using errcode = '22023', hint = '--endpoint, --bucket, --prefix, --region and --credentials-file are for s3 repositories.';
    end if;
    if v_kind = 's3' and v_path is not null then
        raise exception 'an s3 repository takes no path'
            using errcode = '22023', hint = 'Give --endpoint URL --bucket NAME [--prefix P] instead.';
    end if;
    if exists (select 1 from public.repository where lower(name) = lower(v_name)) then
        raise exception 'repository % already exists', api.q(v_name)
            using errcode = '23505', hint = 'Choose another name; update_repository changes an existing one.';
    end if;
    if exists (select 1 from public.repository r where r.kind = v_kind
                 and (r.path = v_path or (r.endpoint = v_endpoint and r.bucket = v_bucket and r.prefix = v_prefix))) then
        raise exception 'another repository already stores at this location (%)',
                        coalesce(v_path, v_endpoint || '/' || v_bucket || coalesce('/' || nullif(v_prefix, ''), ''))
            using errcode = '23505', hint = 'Two repositories at one location would see each other''s objects: give another --prefix or path.';
    end if;
    insert into public.repository (name, kind, path, endpoint, bucket, prefix, region, credentials_file, remarks)
    values (v_name, v_kind, v_path, v_endpoint, v_bucket, v_prefix,
            case when v_kind = 's3' then v_region else 'us-east-1' end, v_creds, coalesce(p_remarks, ''))
    returning repository_id into v_id;
    return v_id;
end $$;

-- How many live sets a repository holds (rows of backup_catalog not yet forgotten).
create function api.repository_sets(p_id bigint) returns bigint
language sql stable as $$
    select (select count(*) from public.backup_catalog where repository_id = p_id)
         + (select count(*) from public.backup_copy where repository_id = p_id)
$$;

-- `update_repository REPO [--path P] [--endpoint URL] [--bucket B] [--prefix P] [--region R]
-- [--credentials-file FILE|none] [--remarks TEXT]`: NULL keeps a value. Where the objects are
-- (path, bucket, prefix) cannot move while sets live there; the endpoint, region and
-- credentials can (a new host name for the same store, rotated keys).
create function api.update_repository(p_ref text, p_path text, p_endpoint text, p_bucket text, p_prefix text,
                                      p_region text, p_credentials_file text, p_remarks text)
returns bigint language plpgsql as $$
declare
    v_id bigint := api.repository_id(p_ref);
    r public.repository;
    v_sets bigint;
begin
    select * into r from public.repository where repository_id = v_id for update;
    if r.kind = 'local' and (p_endpoint is not null or p_bucket is not null or p_prefix is not null
                             or p_region is not null or p_credentials_file is not null) then
        raise exception 'repository % is local: it has a path only', r.name
            using errcode = '22023', hint = '--endpoint, --bucket, --prefix, --region and --credentials-file are for s3 repositories.';
    elsif r.kind = 's3' and p_path is not null then
        raise exception 'repository % is on S3: it has no path', r.name
            using errcode = '22023', hint = 'Change --endpoint, --bucket or --prefix instead.';
    end if;
    v_sets := api.repository_sets(v_id);
    if v_sets > 0 and ((p_path is not null and rtrim(btrim(p_path), '/') is distinct from r.path)
                       or (p_bucket is not null and btrim(p_bucket) is distinct from r.bucket)
                       or (p_prefix is not null and btrim(p_prefix) is distinct from r.prefix)) then
        raise exception 'repository % holds % backup sets: its location cannot change', r.name, v_sets
            using errcode = '55006',
                  hint = 'The catalog would lose its sets. Register a new repository for the new location and point servers and definitions to it (set_primary_repository, set_definition_repository); the old one empties by retention.';
    end if;
    r.path := coalesce(nullif(rtrim(btrim(p_path), '/'), ''), r.path);
    r.endpoint := coalesce(nullif(rtrim(btrim(p_endpoint), '/'), ''), r.endpoint);
    r.bucket := coalesce(nullif(btrim(p_bucket), ''), r.bucket);
    r.prefix := coalesce(btrim(p_prefix), r.prefix);
    r.region := coalesce(nullif(btrim(p_region), ''), r.region);
    r.credentials_file := case when p_credentials_file is null then r.credentials_file
                               when lower(btrim(p_credentials_file)) in ('', 'none', 'environment') then null
                               else btrim(p_credentials_file) end;
    perform api.check_repository(r.kind, r.name, r.path, r.endpoint, r.bucket, r.prefix, r.region, r.credentials_file);
    update public.repository
       set path = r.path, endpoint = r.endpoint, bucket = r.bucket, prefix = r.prefix, region = r.region,
           credentials_file = r.credentials_file, remarks = coalesce(p_remarks, r.remarks), updated = now()
     where repository_id = v_id;
    return v_id;
end $$;

-- `delete_repository REPO`: refused while sets live there or a server or definition uses it.
create function api.delete_repository(p_ref text) returns bigint
language plpgsql as $$
declare
    v_id bigint := api.repository_id(p_ref);
    v_name text := (select name from public.repository where repository_id = v_id);
    v_sets bigint := api.repository_sets(v_id);
    v_servers text := (select string_agg(fqdn, ', ' order by fqdn) from public.backup_server
                        where v_id in (repository_id, copy_repository_id));
    v_defs text := (select string_agg(def_id::text, ', ' order by def_id) from public.backup_definition
                     where v_id in (repository_id, copy_repository_id) and job_status <> 'DELETED');
begin
    if v_sets > 0 then
        raise exception 'repository % still holds % backup sets', v_name, v_sets
            using errcode = '23503',
                  hint = 'show_repositories counts them; retention removes them (or delete their definitions with force-deletion) before the repository can go.';
    end if;
    if v_servers is not null or v_defs is not null then
        raise exception 'repository % is still in use', v_name
            using errcode = '23503',
                  detail = concat_ws(' ', 'primary or copy repository of backup servers ' || v_servers || '.',
                                     'named by backup definitions (DefID) ' || v_defs || '.'),
                  hint = 'Point them elsewhere first: set_primary_repository SERVER local, set_definition_repository DefID default, set_copy_repository SERVER|DefID none.';
    end if;
    update public.backup_definition set repository_id = null where repository_id = v_id;
    update public.backup_definition set copy_repository_id = null where copy_repository_id = v_id;
    delete from public.repository where repository_id = v_id;
    return v_id;
end $$;

-- `set_primary_repository SERVER REPO|local`: where the server's sets go unless a definition
-- names a repository. `local` (or `default`) is the server's own backup_dir.
create function api.set_primary_repository(p_server text, p_repository text) returns bigint
language plpgsql as $$
declare
    v_server bigint := api.server_id(p_server);
    v_repo bigint;
begin
    if lower(btrim(coalesce(p_repository, ''))) not in ('', 'local', 'default') then
        v_repo := api.repository_id(p_repository);
    end if;
    update public.backup_server set repository_id = v_repo where server_id = v_server;
    return v_server;
end $$;

-- `set_definition_repository DefID REPO|default`: `default` follows the server's primary.
create function api.set_definition_repository(p_def_id bigint, p_repository text) returns bigint
language plpgsql as $$
declare
    v_repo bigint;
begin
    if lower(btrim(coalesce(p_repository, ''))) not in ('', 'default') then
        v_repo := api.repository_id(p_repository);
        -- Base backups are written by pg_basebackup's stream into the server's backup_dir; they
        -- do not go through the repository layer yet (issue 13's next slice).
        if exists (select 1 from public.backup_definition
                    where def_id = p_def_id and backup_code = 'BASEBACKUP') then
            raise exception 'backup definition % is a BASEBACKUP definition: base backups are kept in the backup server''s backup directory, not in a repository yet', p_def_id
                using errcode = '0A000',
                      hint = 'Keep the definition on its default; logical definitions (FULL, SCHEMA, DATA, CLUSTER, GLOBALS) can name a repository.';
        end if;
    end if;
    update public.backup_definition set repository_id = v_repo where def_id = p_def_id and job_status <> 'DELETED';
    if not found then
        raise exception 'backup definition % does not exist or is deleted', p_def_id
            using errcode = 'P0002', hint = 'show_backup_definitions lists the live definitions.';
    end if;
    return p_def_id;
end $$;

-- The agent: every repository it may write to or read from (its primary, its definitions',
-- those holding its sets), with what it needs to reach it. Never a credential: the file path.
create function api.agent_repositories(p_server bigint)
returns table (repository_id bigint, name text, kind text, path text, endpoint text, bucket text, prefix text,
               region text, credentials_file text, is_primary boolean)
language plpgsql stable as $$
begin
    perform api.acting_for(p_server);
    return query
    select r.repository_id, r.name, r.kind, r.path, r.endpoint, r.bucket, r.prefix, r.region, r.credentials_file,
           r.repository_id = (select s.repository_id from public.backup_server s where s.server_id = p_server)
      from public.repository r
     where r.repository_id in (select s.repository_id from public.backup_server s where s.server_id = p_server
                               union select d.repository_id from public.backup_definition d
                                      where d.backup_server_id = p_server and d.job_status <> 'DELETED'
                               union select c.repository_id from public.backup_catalog c
                                      where c.backup_server_id = p_server
                               -- second copies (sql/87_repository_copies.sql)
                               union select s.copy_repository_id from public.backup_server s where s.server_id = p_server
                               union select d.copy_repository_id from public.backup_definition d
                                      where d.backup_server_id = p_server and d.job_status <> 'DELETED'
                               union select bc.repository_id from public.backup_copy bc
                                 join public.backup_catalog c on c.bck_id = bc.bck_id
                                where c.backup_server_id = p_server)
     order by r.repository_id;
end $$;

create trigger audit after insert or update or delete on public.repository for each row execute function api.audit_row();

-- show_repositories: where each repository is, how the agent authenticates (never a secret),
-- who writes there and what it holds.
create view api.show_repositories as
select r.repository_id as "RepoID", r.name as "Name", r.kind as "Kind",
       case r.kind when 'local' then r.path
            else r.endpoint || '/' || r.bucket || coalesce('/' || nullif(r.prefix, ''), '') end as "Location",
       case r.kind when 's3' then r.region end as "Region",
       case r.kind when 'local' then '' when 's3' then coalesce('file ' || r.credentials_file, 'agent environment') end as "Credentials",
       coalesce((select string_agg(s.fqdn, ', ' order by s.fqdn) from public.backup_server s where s.repository_id = r.repository_id), '') as "Primary of",
       (select count(*) from public.backup_definition d where d.repository_id = r.repository_id and d.job_status <> 'DELETED') as "Definitions",
       st.sets as "Sets", pg_catalog.pg_size_pretty(st.bytes) as "Stored",
       r.registered as "Registered", r.remarks as "Remarks"
  from public.repository r
  left join lateral (select count(*) as sets, coalesce(sum(c.total_size), 0)::bigint as bytes
                       from public.backup_catalog c where c.repository_id = r.repository_id) st on true;
