-- A database dominated by one table with a jsonb column (the shape of issue 10's 1 GB report):
-- app.documents holds ~95 % of the bytes, one jsonb document of ~1 KB per row (nested objects,
-- an array of line items, hex strings that compress poorly next to keys that compress well).
-- Usage (into an empty database):
--   psql -v ON_ERROR_STOP=1 -v scale=4 -d DBNAME -f jsonb-db.sql
-- scale=1 makes about 250 MB on disk, scale=4 about 1 GB. Deterministic (no random()).

\if :{?scale}
\else
  \set scale 1
\endif

do $$
begin
  if not exists (select 1 from pg_roles where rolname = 'bench_owner') then
    create role bench_owner login;
  end if;
end
$$;

create schema app authorization bench_owner;
set role bench_owner;

create table app.tenants (
  id    integer primary key,
  name  text not null
);
insert into app.tenants select g, 'tenant ' || g from generate_series(1, 500) g;

create table app.documents (
  id          bigint primary key,
  tenant_id   integer not null references app.tenants(id),
  created_at  timestamptz not null,
  doc         jsonb not null
);

insert into app.documents
select g,
       1 + g % 500,
       timestamptz '2024-01-01' + make_interval(secs => g * 7),
       jsonb_build_object(
         'id', g,
         'type', (array['order','invoice','shipment','ticket'])[1 + g % 4],
         'status', (array['new','open','paid','shipped','closed','void'])[1 + (g / 3) % 6],
         'customer', jsonb_build_object(
           'name', 'customer ' || (g * 7919) % 100003,
           'email', 'c' || (g * 7919) % 100003 || '@example.com',
           'country', (array['DE','FR','NO','ES','US','JP','BR'])[1 + g % 7],
           'tags', jsonb_build_array('t' || g % 7, 't' || g % 11, 't' || g % 13)),
         'items', (select jsonb_agg(jsonb_build_object(
                            'sku', 'SKU-' || (g * 31 + i) % 5000,
                            'qty', 1 + (g + i) % 5,
                            'price', round(((g * i * 7919) % 100000)::numeric / 100, 2),
                            'ref', md5((g * 10 + i)::text)))
                   from generate_series(1::bigint, 3 + g % 5) i),
         'meta', jsonb_build_object(
           'ip', (g % 223) || '.' || (g * 7 % 251) || '.' || (g * 13 % 251) || '.' || (g * 17 % 251),
           'trace', md5(g::text) || md5((-g)::text),
           'version', 1 + g % 9,
           'flags', jsonb_build_object('a', g % 2 = 0, 'b', g % 3 = 0, 'c', g % 5 = 0)))
from generate_series(1::bigint, 250000 * :scale) g;

create index documents_tenant_idx on app.documents (tenant_id, created_at);

reset role;
analyze;
