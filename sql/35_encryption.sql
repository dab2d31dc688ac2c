-- Encryption at rest with age (issue 13; tables in migrations/V22__encryption.sql). Early in the
-- bundle: api.agent_definitions (40_jobs.sql) calls api.definition_recipients. The catalog
-- holds public keys (recipients) and their fingerprints only: agents encrypt every object of a
-- set to the definition's key and to the optional escrow key; identities (private keys) live only
-- where restores run. A set records the fingerprints that can read it (encrypted_with).

-- The fingerprint of a recipient: sha256 of its text, first 16 hex digits (64 bits: a label for
-- people and for rotation queries, not a security boundary).
create function api.encryption_fingerprint(p_recipient text) returns text
language sql immutable as $$
    select left(encode(sha256(convert_to(p_recipient, 'UTF8')), 'hex'), 16)
$$;

-- A key by name (case-insensitive), KeyID or fingerprint.
create function api.encryption_key_id(p_ref text) returns bigint
language plpgsql stable as $$
declare
    v_ref text := btrim(coalesce(p_ref, ''));
    v_id bigint;
begin
    if v_ref = '' then
        raise exception 'no encryption key given'
            using errcode = '22023', hint = 'Give an encryption key name; show_encryption_keys lists them.';
    end if;
    select key_id into v_id from public.encryption_key
     where lower(name) = lower(v_ref) or fingerprint = lower(v_ref)
        or (v_ref ~ '^[0-9]{1,18}$' and key_id = v_ref::bigint)
     order by (lower(name) = lower(v_ref)) desc
     limit 1;
    if v_id is null then
        raise exception 'encryption key % does not exist', api.q(v_ref)
            using errcode = 'P0002', hint = 'show_encryption_keys lists the keys; register_encryption_key NAME age1… adds one.';
    end if;
    return v_id;
end $$;

-- The value of a node's `encryption` parameter (and of a definition's encryption=): false,
-- true, or a key name (stored as the key's name, as registered).
create function api.check_encryption_value(p_value text) returns text
language plpgsql stable as $$
declare
    v text := lower(btrim(coalesce(p_value, '')));
begin
    if v in ('false', 'f', 'no', 'off', '0', '') then
        return 'false';
    elsif v in ('true', 't', 'yes', 'on', '1') then
        return 'true';
    end if;
    return (select name from public.encryption_key where key_id = api.encryption_key_id(p_value));
exception
    when sqlstate 'P0002' then
        raise exception 'encryption % is neither true, false nor a registered encryption key', api.q(p_value)
            using errcode = '22023',
                  hint = 'Give false, true (the backup server''s encryption_key) or a key name from show_encryption_keys.';
end $$;

-- A server parameter naming a key (encryption_key, encryption_escrow_key): empty or a key name.
create function api.check_encryption_key_parameter(p_parameter text, p_value text) returns text
language plpgsql stable as $$
begin
    if btrim(coalesce(p_value, '')) in ('', 'none') then
        return '';
    end if;
    return (select name from public.encryption_key where key_id = api.encryption_key_id(p_value));
exception
    when sqlstate 'P0002' then
        raise exception '% % is not a registered encryption key', p_parameter, api.q(p_value)
            using errcode = '22023', hint = 'Register it first (register_encryption_key NAME age1…), or give '''' for none.';
end $$;

-- `register_encryption_key NAME age1…`: a public key. The shell parses the recipient with the
-- age library first; the check here is its shape (the table's check, worded).
create function api.register_encryption_key(p_name text, p_recipient text, p_remarks text)
returns bigint language plpgsql as $$
declare
    v_name text := btrim(coalesce(p_name, ''));
    v_recipient text := btrim(coalesce(p_recipient, ''));
    v_other text;
    v_id bigint;
begin
    if v_name !~ '^[A-Za-z][A-Za-z0-9_.-]{0,62}$' or lower(v_name) in ('true', 'false', 'none', 'default') then
        raise exception 'encryption key name % is not valid', api.q(v_name)
            using errcode = '22023', hint = 'A name starts with a letter and has at most 63 letters, digits, "_", "." or "-" (not true, false, none or default), e.g. site-2026.';
    end if;
    if v_recipient ~ '^AGE-SECRET-KEY-' then
        -- Never echo it back: it would land in logs and terminals.
        raise exception 'this is an age identity (a private key), not a recipient'
            using errcode = '22023',
                  hint = 'Give the public key (age1…, printed by age-keygen -y FILE); keep the identity where restores run.';
    end if;
    if v_recipient !~ '^age1[02-9ac-hj-np-z]{58}$' then
        raise exception 'recipient % is not an age X25519 public key', api.q(v_recipient)
            using errcode = '22023', hint = 'Give the age1… line that age-keygen prints as "Public key", e.g. from age-keygen -y key.txt.';
    end if;
    select name into v_other from public.encryption_key where lower(name) = lower(v_name) or recipient = v_recipient;
    if found then
        raise exception 'encryption key % already exists (same name or same recipient)', v_other
            using errcode = '23505', hint = 'show_encryption_keys lists the keys; a key is registered once, under one name.';
    end if;
    insert into public.encryption_key (name, recipient, fingerprint, remarks)
    values (v_name, v_recipient, api.encryption_fingerprint(v_recipient), coalesce(p_remarks, ''))
    returning key_id into v_id;
    return v_id;
end $$;

-- `delete_encryption_key KEY`: refused while a set, a definition, a node's or server's
-- configuration uses it (a set's key is what tells its readers; rotation first, then deletion).
create function api.delete_encryption_key(p_ref text) returns bigint
language plpgsql as $$
declare
    v_id bigint := api.encryption_key_id(p_ref);
    k public.encryption_key;
    v_sets bigint;
    v_defs text;
    v_conf text;
begin
    select * into k from public.encryption_key where key_id = v_id for update;
    select count(*) into v_sets from public.backup_catalog where encrypted_with @> array[k.fingerprint];
    select string_agg(def_id::text, ', ' order by def_id) into v_defs from public.backup_definition
     where encryption_key_id = v_id and job_status <> 'DELETED';
    select string_agg(w, '; ') into v_conf from (
        select 'backup server ' || coalesce(s.fqdn, 'default') || ' ' || c.parameter as w
          from (select server_id, parameter, value from public.backup_server_config
                union all select null, parameter, value from public.backup_server_default_config) c
          left join public.backup_server s on s.server_id = c.server_id
         where c.parameter in ('encryption_key', 'encryption_escrow_key') and lower(c.value) = lower(k.name)
        union all
        select 'PgSQL node ' || coalesce(n.fqdn, 'default') || ' encryption'
          from (select node_id, parameter, value from public.pgsql_node_config
                union all select null, parameter, value from public.pgsql_node_default_config) c
          left join public.pgsql_node n on n.node_id = c.node_id
         where c.parameter = 'encryption' and lower(c.value) = lower(k.name)) x;
    if v_sets > 0 then
        raise exception 'encryption key % still protects % backup sets', k.name, v_sets
            using errcode = '23503',
                  hint = 'show_backup_catalog --encrypted-with ' || k.name || ' lists them; they could not be restored without it. Wait for retention to remove them.';
    end if;
    if v_defs is not null or v_conf is not null then
        raise exception 'encryption key % is still in use', k.name
            using errcode = '23503',
                  detail = concat_ws(' ', 'backup definitions (DefID) ' || v_defs || '.', v_conf || '.'),
                  hint = 'Point them to another key first (update_backup_server_config SERVER encryption_key=NEWKEY, update_pgsql_node_config NODE encryption=NEWKEY; definitions: set_definition_encryption DefID NEWKEY).';
    end if;
    delete from public.encryption_key where key_id = v_id;
    return v_id;
end $$;

-- The recipients of a set of backup server p_server encrypted to key p_key (NULL: the
-- server's encryption_key): that key first, then the escrow key (the server's, else the global
-- one), as [{name, recipient, fingerprint}]; [] when there is no key (the agent fails that job:
-- it never writes such a set in plain text).
create function api.recipients_of(p_server bigint, p_key bigint) returns jsonb
language plpgsql stable as $$
declare
    v_key bigint := coalesce(p_key, (select key_id from public.encryption_key
                                      where lower(name) = lower(api.server_config_value(p_server, 'encryption_key'))));
    v_escrow bigint;
begin
    if v_key is null then
        return '[]'::jsonb;
    end if;
    v_escrow := (select key_id from public.encryption_key
                  where lower(name) = lower(api.server_config_value(p_server, 'encryption_escrow_key')));
    return (select jsonb_agg(jsonb_build_object('name', k.name, 'recipient', k.recipient, 'fingerprint', k.fingerprint)
                             order by k.key_id <> v_key)
              from public.encryption_key k where k.key_id in (v_key, v_escrow));
end $$;

-- What a definition encrypts to, resolved now (api.recipients_of); NULL for a plain one.
create function api.definition_recipients(p_def_id bigint) returns jsonb
language sql stable as $$
    select case when d.encryption then api.recipients_of(d.backup_server_id, d.encryption_key_id) end
      from public.backup_definition d where d.def_id = p_def_id
$$;

-- What a snapshot encrypts to: as a live encrypted definition of the same database on the node
-- (a snapshot is no way around a definition's encryption), else as the node's `encryption`.
create function api.snapshot_recipients(p_snapshot_id bigint) returns jsonb
language plpgsql stable as $$
declare
    sd public.snapshot_definition;
    v_def bigint;
    v_enc text;
begin
    select * into sd from public.snapshot_definition where snapshot_id = p_snapshot_id;
    if not found then
        return null;
    end if;
    select def_id into v_def from public.backup_definition
     where pgsql_node_id = sd.pgsql_node_id and dbname = sd.dbname and encryption and job_status <> 'DELETED'
     order by def_id limit 1;
    if v_def is not null then
        return api.recipients_of(sd.backup_server_id, (select encryption_key_id from public.backup_definition where def_id = v_def));
    end if;
    v_enc := api.node_config_value(sd.pgsql_node_id, 'encryption');
    if v_enc = 'false' then
        return null;
    end if;
    return api.recipients_of(sd.backup_server_id,
                             case when v_enc <> 'true' then (select key_id from public.encryption_key where lower(name) = lower(v_enc)) end);
end $$;

-- The fingerprints a reported set lists (p_result -> 'encrypted_with'), checked; NULL: plain.
create function api.reported_encryption(p_result jsonb) returns text[]
language plpgsql immutable as $$
declare
    v text[];
begin
    if jsonb_typeof(p_result -> 'encrypted_with') is distinct from 'array' then
        return null;
    end if;
    v := array(select jsonb_array_elements_text(p_result -> 'encrypted_with'));
    if cardinality(v) = 0 or exists (select 1 from unnest(v) f where f !~ '^[0-9a-f]{16}$') then
        raise exception 'a backup report lists invalid key fingerprints: %', p_result -> 'encrypted_with'
            using errcode = '22023', hint = 'The agent writes 16 hex digits per recipient; upgrade the agent.';
    end if;
    return v;
end $$;

-- The BckIDs of the sets a key can read (`show_backup_catalog --encrypted-with KEY`).
create function api.sets_encrypted_with(p_ref text) returns setof bigint
language sql stable as $$
    select c.bck_id from public.backup_catalog c
     where c.encrypted_with @> array[(select fingerprint from public.encryption_key
                                       where key_id = api.encryption_key_id(p_ref))]
$$;

-- show_encryption_keys: public keys only, and what each protects.
create view api.show_encryption_keys as
select k.key_id as "KeyID", k.name as "Name", k.fingerprint as "Fingerprint", k.recipient as "Recipient",
       (select count(*) from public.backup_definition d
         where d.encryption_key_id = k.key_id and d.job_status <> 'DELETED') as "Definitions",
       coalesce((select string_agg(coalesce(s.fqdn, 'default') || ' ' || replace(c.parameter, 'encryption_', ''), ', ' order by 1)
                   from (select server_id, parameter, value from public.backup_server_config
                         union all select null, parameter, value from public.backup_server_default_config) c
                   left join public.backup_server s on s.server_id = c.server_id
                  where c.parameter in ('encryption_key', 'encryption_escrow_key') and lower(c.value) = lower(k.name)), '') as "Server key of",
       (select count(*) from public.backup_catalog c where c.encrypted_with @> array[k.fingerprint]) as "Sets",
       k.registered as "Registered", k.remarks as "Remarks"
  from public.encryption_key k;

-- `set_definition_encryption DefID false|true|KEY`: what new sets of a definition are encrypted
-- to (existing sets keep theirs; their fingerprints stay in the catalog).
create function api.set_definition_encryption(p_def_id bigint, p_value text) returns bigint
language plpgsql as $$
declare
    v_enc text := api.check_encryption_value(p_value);
    d public.backup_definition;
begin
    select * into d from public.backup_definition where def_id = p_def_id and job_status <> 'DELETED' for update;
    if not found then
        raise exception 'backup definition % does not exist or is deleted', p_def_id
            using errcode = 'P0002', hint = 'show_backup_definitions lists the live definitions.';
    end if;
    if v_enc <> 'false' and d.backup_code = 'BASEBACKUP' then
        raise exception 'backup definition % is a BASEBACKUP definition: base backups are not encrypted yet', p_def_id
            using errcode = '0A000', hint = 'Logical definitions (FULL, SCHEMA, DATA, CLUSTER, GLOBALS) can be encrypted.';
    end if;
    if v_enc = 'true' and api.server_config_value(d.backup_server_id, 'encryption_key') = '' then
        raise exception 'encryption=true needs an encryption key on backup server %, and it has none', api.server_fqdn(d.backup_server_id)
            using errcode = '22023',
                  hint = 'Name a key instead, or give the server one: update_backup_server_config ' || api.server_fqdn(d.backup_server_id) || ' encryption_key=KEYNAME.';
    end if;
    update public.backup_definition
       set encryption = v_enc <> 'false',
           encryption_key_id = case when v_enc not in ('true', 'false') then api.encryption_key_id(v_enc) end
     where def_id = p_def_id;
    return p_def_id;
end $$;

-- The identity files a restore reads an encrypted set with (`--identity FILE`): absolute paths
-- on the host of the agent that runs it, stored as paths; the keys never enter the catalog.
create function api.set_restore_identity_files(p_restore_def bigint, p_files text[]) returns bigint
language plpgsql as $$
declare
    v_bad text;
begin
    select f into v_bad from unnest(coalesce(p_files, '{}')) f
     where f !~ '^/' or f ~ '[\r\n\t]' or f ~ 'AGE-SECRET-KEY-' limit 1;
    if found then
        if v_bad ~ 'AGE-SECRET-KEY-' then
            raise exception 'an identity (private key) was given where its file''s path belongs'
                using errcode = '22023', hint = 'Give --identity /path/to/key.txt (a file on the host of the agent that restores); never the key itself.';
        end if;
        raise exception 'identity file % is not an absolute path', api.q(v_bad)
            using errcode = '22023', hint = 'Give the absolute path of an age identity file on the host of the agent that runs the restore, e.g. --identity /etc/pgbackman/site.key.';
    end if;
    update public.restore_definition set identity_files = coalesce(p_files, '{}') where restore_def = p_restore_def;
    if not found then
        raise exception 'restore definition % does not exist', p_restore_def
            using errcode = 'P0002', hint = 'show_restore_definitions lists them.';
    end if;
    return p_restore_def;
end $$;

-- The agent: the identity files of a restore job's definition ({} for none, and for drills).
create function api.restore_identity_files(p_job_id bigint) returns text[]
language plpgsql stable as $$
begin
    perform api.acting_for_job(p_job_id);
    return coalesce((select rd.identity_files from public.job j
                       join public.restore_definition rd on rd.restore_def = j.restore_def
                      where j.job_id = p_job_id), '{}');
end $$;
