-- Lookups and validation shared by the API functions. Errors carry a SQLSTATE and a HINT that
-- names the command to run next; the shell prints message, detail and hint.

create function api.server_id(p_ref text) returns bigint
language plpgsql stable as $$
declare
    v_id bigint;
begin
    if p_ref is null or btrim(p_ref) = '' then
        raise exception 'no backup server given'
            using errcode = '22023', hint = 'Give a SrvID or an FQDN; show_backup_servers lists them.';
    end if;
    if btrim(p_ref) ~ '^[0-9]+$' then
        select server_id into v_id from public.backup_server where server_id = btrim(p_ref)::bigint;
    else
        select server_id into v_id from public.backup_server where lower(fqdn) = lower(btrim(p_ref));
    end if;
    if v_id is null then
        raise exception 'backup server "%" is not registered', btrim(p_ref)
            using errcode = 'P0002',
                  hint = 'show_backup_servers lists registered servers; register_backup_server adds one.';
    end if;
    return v_id;
end $$;

-- A node is "NodeID", "fqdn" (when only one node has that FQDN) or "fqdn:port".
create function api.node_id(p_ref text) returns bigint
language plpgsql stable as $$
declare
    v_ref text := btrim(coalesce(p_ref, ''));
    v_ids bigint[];
begin
    if v_ref = '' then
        raise exception 'no PgSQL node given'
            using errcode = '22023', hint = 'Give a NodeID or an FQDN; show_pgsql_nodes lists them.';
    end if;
    if v_ref ~ '^[0-9]+$' then
        select array_agg(node_id) into v_ids from public.pgsql_node where node_id = v_ref::bigint;
    elsif v_ref ~ ':[0-9]+$' then
        select array_agg(node_id) into v_ids from public.pgsql_node
         where lower(fqdn) = lower(regexp_replace(v_ref, ':[0-9]+$', ''))
           and pgport = substring(v_ref from ':([0-9]+)$')::integer;
    else
        select array_agg(node_id order by node_id) into v_ids from public.pgsql_node
         where lower(fqdn) = lower(v_ref);
    end if;
    if v_ids is null then
        raise exception 'PgSQL node "%" is not registered', v_ref
            using errcode = 'P0002',
                  hint = 'show_pgsql_nodes lists registered nodes; register_pgsql_node adds one.';
    end if;
    if cardinality(v_ids) > 1 then
        raise exception 'PgSQL node "%" is ambiguous: NodeIDs % share that FQDN', v_ref, array_to_string(v_ids, ', ')
            using errcode = '22023', hint = 'Use the NodeID or fqdn:port.';
    end if;
    return v_ids[1];
end $$;

create function api.server_fqdn(p_id bigint) returns text
language sql stable as $$ select fqdn from public.backup_server where server_id = p_id $$;

create function api.node_fqdn(p_id bigint) returns text
language sql stable as $$ select fqdn from public.pgsql_node where node_id = p_id $$;

create function api.node_config_value(p_node bigint, p_parameter text) returns text
language plpgsql stable as $$
declare
    v text;
begin
    select value into v from public.pgsql_node_config where node_id = p_node and parameter = p_parameter;
    if not found then
        select value into v from public.pgsql_node_default_config where parameter = p_parameter;
    end if;
    if v is null then
        raise exception 'configuration parameter "%" is missing for NodeID %', p_parameter, p_node
            using errcode = 'P0002', hint = 'Run pgbackman db upgrade to restore the default configuration.';
    end if;
    return v;
end $$;

create function api.server_config_value(p_server bigint, p_parameter text) returns text
language plpgsql stable as $$
declare
    v text;
begin
    select value into v from public.backup_server_config where server_id = p_server and parameter = p_parameter;
    if not found then
        select value into v from public.backup_server_default_config where parameter = p_parameter;
    end if;
    if v is null then
        raise exception 'configuration parameter "%" is missing for SrvID %', p_parameter, p_server
            using errcode = 'P0002', hint = 'Run pgbackman db upgrade to restore the default configuration.';
    end if;
    return v;
end $$;

create function api.check_interval(p_what text, p_value text) returns interval
language plpgsql immutable as $$
declare
    v interval;
begin
    begin
        v := p_value::interval;
    exception when others then
        raise exception '% "%" is not an interval', p_what, p_value
            using errcode = '22007', hint = 'Use PostgreSQL interval syntax, e.g. ''7 days'', ''12 hours'', ''1 month''.';
    end;
    if v <= interval '0' then
        raise exception '% "%" must be positive', p_what, p_value
            using errcode = '22023', hint = 'Use a positive interval, e.g. ''7 days''.';
    end if;
    return v;
end $$;

create function api.check_int(p_what text, p_value text, p_min bigint, p_max bigint) returns bigint
language plpgsql immutable as $$
begin
    if p_value !~ '^\s*[0-9]+\s*$' or btrim(p_value)::numeric not between p_min and p_max then
        raise exception '% "%" is not valid', p_what, p_value
            using errcode = '22023', hint = format('Use a whole number from %s to %s.', p_min, p_max);
    end if;
    return btrim(p_value)::bigint;
end $$;

create function api.check_choice(p_what text, p_value text, p_choices text[]) returns text
language plpgsql immutable as $$
begin
    if p_value is null or not (p_value = any (p_choices)) then
        raise exception '% "%" is not valid', p_what, p_value
            using errcode = '22023', hint = 'Valid values: ' || array_to_string(p_choices, ', ') || '.';
    end if;
    return p_value;
end $$;

-- Cron fields are fully validated (ranges, names, steps) by the shell before they get here; this
-- is the last line of defence for anyone calling the API directly.
create function api.check_cron_field(p_what text, p_value text) returns text
language plpgsql immutable as $$
begin
    if p_value is null or p_value !~ '^[0-9A-Za-z*/,-]+$' then
        raise exception 'cron % field "%" is not valid', p_what, p_value
            using errcode = '22023',
                  hint = 'Use classic crontab syntax: *, 5, 1-5, */15, 1,15,30, or names such as mon-fri, jan.';
    end if;
    return p_value;
end $$;

-- "a-b" range of minutes or hours used to pick a random default (PgBackMan's rule).
create function api.check_hour_minute_range(p_what text, p_value text, p_max integer) returns text
language plpgsql immutable as $$
declare
    m text[];
begin
    m := regexp_match(btrim(p_value), '^([0-9]{1,2})(?:-([0-9]{1,2}))?$');
    if m is null or m[1]::int > p_max or coalesce(m[2], m[1])::int > p_max
       or m[1]::int > coalesce(m[2], m[1])::int then
        raise exception '% "%" is not a valid range', p_what, p_value
            using errcode = '22023', hint = format('Use "a-b" with 0 <= a <= b <= %s, e.g. "01-06".', p_max);
    end if;
    return p_value;
end $$;

create function api.random_in_range(p_range text) returns text
language sql volatile as $$
    select lpad((lo + floor(random() * (hi - lo + 1)))::int::text, 2, '0')
      from (select m[1]::int as lo, coalesce(m[2], m[1])::int as hi
              from regexp_match(btrim(p_range), '^([0-9]{1,2})(?:-([0-9]{1,2}))?$') m) r
$$;

create function api.check_bool(p_what text, p_value text) returns boolean
language plpgsql immutable as $$
begin
    if lower(btrim(p_value)) in ('true', 't', 'yes', 'y', 'on', '1') then return true; end if;
    if lower(btrim(p_value)) in ('false', 'f', 'no', 'n', 'off', '0') then return false; end if;
    raise exception '% "%" is not a boolean', p_what, p_value
        using errcode = '22023', hint = 'Use true or false.';
end $$;

-- Validates one configuration value; returns it normalised. Unknown parameters are refused.
create function api.check_config_value(p_scope text, p_parameter text, p_value text) returns text
language plpgsql stable as $$
declare
    v_known text[];
begin
    if p_scope = 'server' then
        select array_agg(parameter order by parameter) into v_known from public.backup_server_default_config;
    else
        select array_agg(parameter order by parameter) into v_known from public.pgsql_node_default_config;
    end if;
    if not (p_parameter = any (v_known)) then
        raise exception 'unknown % configuration parameter "%"', case p_scope when 'server' then 'backup server' else 'PgSQL node' end, p_parameter
            using errcode = '22023', hint = 'Known parameters: ' || array_to_string(v_known, ', ') || '.';
    end if;
    if p_value is null then
        raise exception 'no value given for "%"', p_parameter using errcode = '22023';
    end if;
    case p_parameter
    when 'retention_period', 'automatic_deletion_retention', 'sent_alerts_retention', 'overdue_grace_period' then
        perform api.check_interval(p_parameter, p_value);
    when 'retention_redundancy' then
        return api.check_int(p_parameter, p_value, 0, 10000)::text;
    when 'pgport' then
        return api.check_int('port', p_value, 1, 65535)::text;
    when 'max_concurrent_jobs' then
        return api.check_int(p_parameter, p_value, 1, 1000)::text;
    when 'backup_minutes_interval' then
        return api.check_hour_minute_range(p_parameter, p_value, 59);
    when 'backup_hours_interval' then
        return api.check_hour_minute_range(p_parameter, p_value, 23);
    when 'backup_day_month_cron', 'backup_month_cron', 'backup_weekday_cron' then
        return api.check_cron_field(p_parameter, p_value);
    when 'backup_code' then
        return api.check_choice(p_parameter, upper(btrim(p_value)), array['FULL', 'SCHEMA', 'DATA', 'CLUSTER', 'GLOBALS']);
    when 'backup_job_status' then
        return api.check_choice(p_parameter, upper(btrim(p_value)), array['ACTIVE', 'STOPPED']);
    when 'pgsql_node_status', 'backup_server_status' then
        return api.check_choice(p_parameter, upper(btrim(p_value)), array['RUNNING', 'STOPPED']);
    when 'sslmode' then
        return api.check_choice(p_parameter, lower(btrim(p_value)), array['disable', 'allow', 'prefer', 'require', 'verify-ca', 'verify-full']);
    when 'node_profile' then
        return api.check_choice(p_parameter, lower(btrim(p_value)), array['standard', 'managed']);
    when 'encryption', 'autoregister' then
        return api.check_bool(p_parameter, p_value)::text;
    when 'autoregister_backup_server' then
        -- Stored as the SrvID: an FQDN may be given, a renamed server stays the same one.
        if btrim(p_value) = '' then
            return '';
        end if;
        return api.server_id(p_value)::text;
    when 'drill_node' then
        if btrim(p_value) <> '' then
            perform api.node_id(p_value);   -- must name a registered node
        end if;
        return btrim(p_value);
    when 'root_backup_partition' then
        if p_value !~ '^/' then
            raise exception 'root_backup_partition "%" is not an absolute path', p_value
                using errcode = '22023', hint = 'Use an absolute directory, e.g. /srv/pgbackman.';
        end if;
        perform api.check_backup_partition(p_parameter, p_value);   -- sql/62_reconcile.sql
    when 'pgsql_bin_dir' then
        if p_value !~ '^/' then
            raise exception 'pgsql_bin_dir "%" is not an absolute path', p_value
                using errcode = '22023', hint = 'Use an absolute directory; {major} stands for the client major, e.g. /usr/lib/postgresql/{major}/bin.';
        end if;
    when 'pgnode_backup_partition' then
        if p_value = '' or p_value ~ '(^|/)\.\.(/|$)' then
            raise exception 'pgnode_backup_partition "%" is not a valid directory', p_value
                using errcode = '22023', hint = 'Use a name relative to root_backup_partition (e.g. pgsql_node_%%pgnode%%) or an absolute path, without "..".';
        end if;
        perform api.check_backup_partition(p_parameter, p_value);   -- sql/62_reconcile.sql
    when 'logs_email' then
        if p_value !~ '^[^@\s]+@[^@\s]+$' then
            raise exception 'logs_email "%" is not an e-mail address', p_value
                using errcode = '22023', hint = 'Use an address such as dba@example.org.';
        end if;
    when 'admin_user', 'admin_dbname' then
        if btrim(p_value) = '' then
            raise exception '% must not be empty', p_parameter using errcode = '22023';
        end if;
    else
        null;
    end case;
    return p_value;
end $$;
