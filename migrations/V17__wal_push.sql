-- The wal-push intake (issue 11): a WAL archive fed by the node's archive_command
-- (`pgbackman-agent wal-push %p` on the node host) instead of a replication slot and a receiver.
-- intake: stream (slot + pg_receivewal, V15) or push (no slot: slot_name is NULL).
-- push_token_sha256: the SHA-256 of the node's credential (a random token the shell wrote to a
-- file for the node host); the token itself is never stored. NULL: no credential yet, every push
-- is refused until create_wal_push_credential makes one.
alter table wal_archive
    add column intake text not null default 'stream' check (intake in ('stream', 'push')),
    add column push_token_sha256 text check (push_token_sha256 ~ '^[0-9a-f]{64}$'),
    add column push_token_created timestamptz,
    alter column slot_name drop not null,
    add constraint wal_archive_intake_slot_check check ((intake = 'stream') = (slot_name is not null)),
    add constraint wal_archive_push_token_check check (intake = 'push' or push_token_sha256 is null);
