-- Restores to another host (issue 12, `pgbackman-agent restore-cluster`): a credential of its own
-- per WAL archive, read-only (the node's base backups and WAL from that server), apart from the
-- wal-push one (which writes WAL): a restore host never holds the right to push as the node, and
-- an archive fed by a slot can be restored remotely too. Only the SHA-256 of the token is kept.
alter table wal_archive
    add column restore_token_sha256 text check (restore_token_sha256 ~ '^[0-9a-f]{64}$'),
    add column restore_token_created timestamptz;
