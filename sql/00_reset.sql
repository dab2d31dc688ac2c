-- Everything in sql/ lives in schema "api" and is re-created from scratch, in one transaction, on
-- every `pgbackman db init` / `db upgrade`: files run in name order after this one. Tables live in
-- "public" and belong to migrations/. Nothing in "public" may depend on "api" (no defaults or
-- constraints calling api functions), so this drop never touches data.
drop schema if exists api cascade;
create schema api;
