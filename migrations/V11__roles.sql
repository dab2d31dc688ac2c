-- Catalog roles (sql/95_security.sql creates the group roles and grants): the login roles bound to
-- a backup server as its agent. An agent role may act only for the servers bound here
-- (api.acting_for in sql/15_agent_scope.sql); `pgbackman db grant ROLE agent --server NAME`
-- writes a row, `pgbackman db revoke ROLE` removes it.
create table agent_role (
    role_name         text not null,
    backup_server_id  bigint not null references backup_server on delete cascade,
    granted           timestamptz not null default now(),
    granted_by        text not null default session_user,
    primary key (role_name, backup_server_id)
);
create index agent_role_server_idx on agent_role (backup_server_id);
