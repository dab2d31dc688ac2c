-- A restore checks every file of its set against the manifest before it touches the target
-- (verification level 1). When that fails, the verdict is the backup's, recorded at once as a
-- verification of kind RESTORE (api.record_restore_verification), as verify_backup would.
alter table verification drop constraint verification_kind_check;
alter table verification add constraint verification_kind_check
    check (kind in ('VERIFY', 'DRILL', 'RESTORE'));
