-- Encryption at rest with age (issue 13). The catalog keeps public keys (age X25519 recipients,
-- `age1…`) and their fingerprints, never an identity (private key): agents encrypt to
-- recipients, identities exist only where restores run.
create table encryption_key (
    key_id       bigint generated always as identity primary key,
    name         text not null check (name ~ '^[A-Za-z][A-Za-z0-9_.-]{0,62}$'),
    -- Bech32 of an X25519 public key: "age1" and 58 characters of its alphabet.
    recipient    text not null check (recipient ~ '^age1[02-9ac-hj-np-z]{58}$'),
    -- sha256 of the recipient text, first 16 hex digits: what manifests and sets record.
    fingerprint  text not null check (fingerprint ~ '^[0-9a-f]{16}$'),
    registered   timestamptz not null default now(),
    remarks      text not null default ''
);
create unique index encryption_key_name_key on encryption_key (lower(name));
create unique index encryption_key_recipient_key on encryption_key (recipient);
create unique index encryption_key_fingerprint_key on encryption_key (fingerprint);

-- A definition's own key; NULL with encryption = true: its server's encryption_key at run time
-- (so changing the server's key rotates every such definition at once).
alter table backup_definition add column encryption_key_id bigint references encryption_key;
create index backup_definition_encryption_key_idx on backup_definition (encryption_key_id)
    where encryption_key_id is not null;

-- The fingerprints of every recipient a set was encrypted to; NULL: a plain set.
alter table backup_catalog add column encrypted_with text[];
create index backup_catalog_encrypted_with_idx on backup_catalog using gin (encrypted_with)
    where encrypted_with is not null;

insert into backup_server_default_config (parameter, value, description) values
    ('encryption_key', '', 'Encryption key (register_encryption_key name) of definitions with encryption=true; empty: none'),
    ('encryption_escrow_key', '', 'Escrow key every encrypted set is also encrypted to (e.g. an offline key); empty: none')
on conflict (parameter) do nothing;

update pgsql_node_default_config
   set description = 'Default encryption of new backup definitions: false, true (the backup server''s encryption_key) or an encryption key name'
 where parameter = 'encryption';

-- `register_restore_definition ... --identity FILE`: age identity files on the host of the agent
-- that runs the restore (paths only: the keys never enter the catalog).
alter table restore_definition add column identity_files text[] not null default '{}';
