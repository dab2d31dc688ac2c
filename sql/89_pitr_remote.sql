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
