-- Import from a PgBackMan 1.x catalog (issue 14, `pgbackman db import-pgbackman`).
--
-- import_map: which object of which old catalog became which row here. It makes the import
-- idempotent: a second run skips every object it finds here, and only what was skipped before
-- (a missing file, a refused value) is tried again. source names the old catalog (its system
-- identifier and database name), so two PgBackMan installations can be merged.
create table import_map (
    source       text not null,
    kind         text not null check (kind in ('SERVER', 'NODE', 'DEFINITION', 'SNAPSHOT', 'CATALOG')),
    old_id       bigint not null,
    new_id       bigint not null,
    imported_at  timestamptz not null default now(),
    primary key (source, kind, old_id)
);
