-- Restores to a data directory on another host (issue 12: `pgbackman-agent restore-cluster`).
-- The host asks the backup server's agent over its TLS wal-push channel with the node's
-- credential; the agent asks here, for that node and that server only: the plan, and the
-- files of one base backup set. WAL files are looked up with api.wal_get_lookup.

-- The plan of a restore of p_node on another host, made by api.pitr_plan, with the files of
-- the base backup set ({name, size, sha256}) the agent serves. The set must be on p_server.
create function api.agent_remote_restore_plan(p_server bigint, p_node bigint, p_bck bigint, p_kind text,
                                              p_value text, p_timeline text)
returns jsonb language plpgsql stable as $$
declare
    v_plan jsonb;
    v_set jsonb;
begin
    perform api.acting_for(p_server);
    v_plan := api.pitr_plan(p_node, p_bck, p_kind, p_value, p_timeline);
    if (v_plan ->> 'backup_server_id')::bigint <> p_server then
        raise exception 'the base backup chosen for PgSQL node % (BckID %) and its WAL are on backup server %, not on %',
                        api.node_fqdn(p_node), v_plan ->> 'bck_id', v_plan ->> 'backup_server', api.server_fqdn(p_server)
            using errcode = '22023',
                  hint = format('Point `agent` of the restore config at the agent of %s (and use its credential), or give --bck-id of a base backup on %s.',
                                v_plan ->> 'backup_server', api.server_fqdn(p_server));
    end if;
    v_set := api.agent_remote_restore_set(p_server, p_node, (v_plan ->> 'bck_id')::bigint);
    return v_plan || jsonb_build_object('set_files', v_set -> 'files');
end $$;

-- The directory and files of base backup p_bck of node p_node on server p_server, when it can
-- be restored (SUCCEEDED and kept).
create function api.agent_remote_restore_set(p_server bigint, p_node bigint, p_bck bigint)
returns jsonb language plpgsql stable as $$
declare
    r record;
begin
    perform api.acting_for(p_server);
    select c.backup_dir, c.files, c.backup_server_id, c.retention_state, b.state, b.pgsql_node_id into r
      from public.base_backup b join public.backup_catalog c using (bck_id)
     where b.bck_id = p_bck;
    if not found or r.pgsql_node_id <> p_node then
        raise exception 'BckID % is not a base backup of PgSQL node %', p_bck, api.node_fqdn(p_node)
            using errcode = 'P0002', hint = format('show_restore_points %s lists its base backups.', api.node_fqdn(p_node));
    end if;
    if r.backup_server_id <> p_server then
        raise exception 'base backup BckID % of PgSQL node % is on backup server %, not on %', p_bck,
                        api.node_fqdn(p_node), api.server_fqdn(r.backup_server_id), api.server_fqdn(p_server)
            using errcode = '22023', hint = format('Point `agent` of the restore config at the agent of %s.', api.server_fqdn(r.backup_server_id));
    end if;
    if r.state <> 'SUCCEEDED' or r.retention_state <> 'KEPT' then
        raise exception 'base backup BckID % is % (retention %): it cannot be restored', p_bck, r.state, r.retention_state
            using errcode = '22023', hint = format('show_restore_points %s lists the restorable ones.', api.node_fqdn(p_node));
    end if;
    return jsonb_build_object('backup_dir', r.backup_dir, 'files', r.files);
end $$;

-- create_wal_push_credential SERVER NODE --restore --file PATH: the SHA-256 of a new restore
-- credential of the node's live WAL archive on the server (any intake). Returns the ArchiveID.
create function api.set_restore_credential(p_server text, p_node text, p_sha256 text, p_replace boolean)
returns bigint language plpgsql as $$
declare
    v_server bigint := api.server_id(p_server);
    v_node bigint := api.node_id(p_node);
    a public.wal_archive%rowtype;
begin
    if coalesce(p_sha256, '') !~ '^[0-9a-f]{64}$' then
        raise exception 'a restore credential is stored as a SHA-256 (64 hexadecimal digits)'
            using errcode = '22023', hint = 'This is a bug of the program that called it: create_wal_push_credential makes the token and its hash.';
    end if;
    select * into a from public.wal_archive
     where pgsql_node_id = v_node and backup_server_id = v_server and status = 'ACTIVE' for update;
    if not found then
        raise exception 'PgSQL node % has no WAL archive on backup server %', api.node_fqdn(v_node), api.server_fqdn(v_server)
            using errcode = 'P0002',
                  hint = format('A restore reads the archive: register_wal_archive %s %s first.', api.server_fqdn(v_server), api.node_fqdn(v_node));
    end if;
    if a.restore_token_sha256 is not null and not coalesce(p_replace, false) then
        raise exception 'the WAL archive of PgSQL node % on backup server % already has a restore credential (created %)',
                        api.node_fqdn(v_node), api.server_fqdn(v_server), to_char(a.restore_token_created, 'YYYY-MM-DD HH24:MI:SS TZ')
            using errcode = '23505',
                  hint = 'Replacing it makes the current restore credential file stop working at once.';
    end if;
    update public.wal_archive set restore_token_sha256 = p_sha256, restore_token_created = now()
     where archive_id = a.archive_id;
    return a.archive_id;
end $$;

-- The agent checks a restore request's credential: the node's live archive on this server and
-- the SHA-256 of its restore credential (NULL: none made). No row: no archive.
create function api.agent_restore_credential(p_server bigint, p_node bigint)
returns table (archive_id bigint, node_fqdn text, pgport integer, restore_token_sha256 text)
language plpgsql stable as $$
begin
    perform api.acting_for(p_server);
    return query
    select a.archive_id, n.fqdn::text, n.pgport::integer, a.restore_token_sha256
      from public.wal_archive a join public.pgsql_node n on n.node_id = a.pgsql_node_id
     where a.backup_server_id = p_server and a.pgsql_node_id = p_node and a.status = 'ACTIVE';
end $$;
