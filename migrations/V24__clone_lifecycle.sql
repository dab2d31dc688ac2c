-- Clone lifecycle additions (issue 12, part E; clones, stop/start/delete, expiry and max_clones
-- are V21's): a CLONE_EXPIRY alert clone_expiry_warning before a clone expires (once:
-- expiry_warned_at), and the clones' disk use as the agent measures it (disk_bytes) for
-- show_backup_server_stats.
alter table clone
    add column expiry_warned_at timestamptz,
    add column disk_bytes       bigint,
    add column disk_measured_at timestamptz;

insert into backup_server_default_config (parameter, value, description) values
    ('clone_expiry_warning', '1 day',
     'How long before a clone expires (register_pitr_restore --expires) a CLONE_EXPIRY alert says it will be deleted');

-- The alert type, added to whatever list the earlier migrations left (rebuilt, not restated).
do $$
declare
    v_types text[];
begin
    select array_agg(m[1] order by ord) into v_types
      from pg_catalog.pg_constraint c,
           regexp_matches(pg_catalog.pg_get_constraintdef(c.oid), '''([A-Z_]+)''', 'g') with ordinality as t(m, ord)
     where c.conrelid = 'public.alert'::regclass and c.conname = 'alert_alert_type_check';
    if not 'CLONE_EXPIRY' = any (coalesce(v_types, '{}')) then
        v_types := coalesce(v_types, '{}') || 'CLONE_EXPIRY'::text;
    end if;
    alter table alert drop constraint if exists alert_alert_type_check;
    execute format('alter table alert add constraint alert_alert_type_check check (alert_type in (%s))',
                   (select string_agg(quote_literal(t), ', ' order by o) from unnest(v_types) with ordinality u(t, o)));
end $$;
