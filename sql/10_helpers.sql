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
    if btrim(p_ref) ~ '^[0-9]{19,}$' then
        raise exception 'SrvID % is out of range', api.q(btrim(p_ref))
            using errcode = '22003', hint = 'A SrvID is a whole number up to 9223372036854775807; show_backup_servers lists them.';
    elsif btrim(p_ref) ~ '^[0-9]+$' then
        select server_id into v_id from public.backup_server where server_id = btrim(p_ref)::bigint;
    else
        select server_id into v_id from public.backup_server where lower(fqdn) = lower(btrim(p_ref));
    end if;
    if v_id is null then
        -- A number is a SrvID, said as one (not echoed as if it were a name).
        raise exception 'backup server % is not registered',
            case when btrim(p_ref) ~ '^[0-9]+$' then 'SrvID ' || btrim(p_ref) else api.q(btrim(p_ref)) end
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
    if v_ref ~ '^[0-9]{19,}$' or v_ref ~ ':[0-9]{6,}$' then
        raise exception 'NodeID or port in % is out of range', api.q(v_ref)
            using errcode = '22003', hint = 'A NodeID is a whole number up to 9223372036854775807, a port at most 65535; show_pgsql_nodes lists the nodes.';
    elsif v_ref ~ '^[0-9]+$' then
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
        raise exception 'PgSQL node % is not registered',
            case when v_ref ~ '^[0-9]+$' then 'NodeID ' || v_ref else api.q(v_ref) end
            using errcode = 'P0002',
                  hint = 'show_pgsql_nodes lists registered nodes; register_pgsql_node adds one.';
    end if;
    if cardinality(v_ids) > 1 then
        raise exception 'PgSQL node % is ambiguous: NodeIDs % share that FQDN', api.q(v_ref), array_to_string(v_ids, ', ')
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
        raise exception '% % is not an interval', p_what, api.q(p_value)
            using errcode = '22007', hint = 'Use PostgreSQL interval syntax, e.g. ''7 days'', ''12 hours'', ''1 month''.';
    end;
    if v <= interval '0' then
        raise exception '% % must be positive', p_what, api.q(p_value)
            using errcode = '22023', hint = 'Use a positive interval, e.g. ''7 days''.';
    end if;
    return v;
end $$;

-- A size threshold ('1GB', '64MB', bytes): returned as given (trimmed) once it reads as at least
-- 1 MB; the readers use pg_size_bytes.
create function api.check_size(p_what text, p_value text) returns text
language plpgsql immutable as $$
declare
    v bigint;
begin
    begin
        v := pg_catalog.pg_size_bytes(btrim(p_value));
    exception when others then
        raise exception '% % is not a size', p_what, api.q(p_value)
            using errcode = '22023', hint = 'Give bytes or a size with a unit: 67108864, 64MB, 8GB.';
    end;
    if v < 1048576 then
        raise exception '% % is below 1 MB', p_what, api.q(p_value)
            using errcode = '22023', hint = 'A WAL segment is 16MB by default: a threshold below one segment alerts all the time.';
    end if;
    return btrim(p_value);
end $$;

create function api.check_int(p_what text, p_value text, p_min bigint, p_max bigint) returns bigint
language plpgsql immutable as $$
begin
    if p_value !~ '^\s*[0-9]+\s*$' or btrim(p_value)::numeric not between p_min and p_max then
        raise exception '% % is not valid', p_what, api.q(p_value)
            using errcode = '22023', hint = format('Use a whole number from %s to %s.', p_min, p_max);
    end if;
    return btrim(p_value)::bigint;
end $$;

create function api.check_choice(p_what text, p_value text, p_choices text[]) returns text
language plpgsql immutable as $$
begin
    if p_value is null or not (p_value = any (p_choices)) then
        raise exception '% % is not valid', p_what, api.q(p_value)
            using errcode = '22023', hint = 'Valid values: ' || array_to_string(p_choices, ', ') || '.';
    end if;
    return p_value;
end $$;

-- A value quoted in a message: at most 64 characters, so that a 100 kB argument does not make a
-- 300 kB error. The shell escapes control characters when it prints the message.
create function api.q(p_value text) returns text
language sql immutable as $$
    select case when p_value is null then 'NULL'
                when char_length(p_value) <= 64 then '"' || p_value || '"'
                else '"' || left(p_value, 64) || '…" (' || octet_length(p_value) || ' bytes)' end
$$;

-- Host names as crates/core/src/hostname.rs checks them (the shell checks first; this is the
-- last guard for anyone calling the API): RFC 1123 labels; a node may also be an IP address
-- or an absolute socket directory; an empty domain means none.
create function api.check_host_name(p_what text, p_value text, p_kind text) returns text
language plpgsql immutable as $$
declare
    v text := coalesce(p_value, '');
begin
    if p_kind = 'domain' and v = '' then
        return v;
    end if;
    if p_kind = 'node' and v ~ '^/' then
        if char_length(v) <= 90 and v ~ '^[A-Za-z0-9/._+@~-]+$' and v !~ '(^|/)\.\.(/|$)' then
            return v;
        end if;
    elsif p_kind = 'node' and (v ~ ':' or v ~ '^[0-9.]+$') then
        if v ~ '^[0-9A-Fa-f:.]+$' then
            begin
                perform v::inet;
                return v;
            exception when others then
                null;
            end;
        end if;
    elsif char_length(v) <= 253
          and v ~ '^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$' then
        return v;
    end if;
    raise exception '% % is not valid', p_what, api.q(v)
        using errcode = '22023',
              hint = case p_kind
                  when 'domain' then 'Give a domain of dot-separated labels of letters, digits and hyphens, e.g. example.org, or "" for none.'
                  when 'node' then 'Give a host name of letters, digits and hyphens (e.g. pg01), an IP address or an absolute socket directory.'
                  else 'Give the short host name of letters, digits and hyphens, e.g. backup01, and the domain separately.' end;
end $$;

-- One value of a cron field (a number or a name), or -1 when it is neither.
create function api.cron_value(p_text text, p_names text[], p_first integer) returns integer
language sql immutable as $$
    select case when p_text is null then null
                when p_text ~ '^[0-9]{1,3}$' then p_text::integer
                when array_position(p_names, p_text) is not null then array_position(p_names, p_text) - 1 + p_first
                else -1 end
$$;

-- Cron fields are fully validated (ranges, names, steps) by the shell before they get here; this
-- is the last line of defence for anyone calling the API directly, and for the node defaults:
-- the range of each field is checked (a month 13 or a weekday 8 would make every run fail).
create function api.check_cron_field(p_what text, p_value text) returns text
language plpgsql immutable as $$
declare
    v_lo integer;
    v_hi integer;
    v_names text[];
    v_first integer := 0;
    v_item text;
    m text[];
    v_a integer;
    v_b integer;
    v_ok boolean := p_value is not null and p_value ~ '^[0-9A-Za-z*/,-]+$';
    v_range text;
begin
    if p_what ~ 'minute' then v_lo := 0; v_hi := 59;
    elsif p_what ~ 'hour' then v_lo := 0; v_hi := 23;
    elsif p_what ~ 'day.of.month|day_month' then v_lo := 1; v_hi := 31;
    elsif p_what ~ 'week' then
        v_lo := 0; v_hi := 7; v_names := array['sun', 'mon', 'tue', 'wed', 'thu', 'fri', 'sat'];
    else
        v_lo := 1; v_hi := 12; v_first := 1;
        v_names := array['jan', 'feb', 'mar', 'apr', 'may', 'jun', 'jul', 'aug', 'sep', 'oct', 'nov', 'dec'];
    end if;
    if v_ok then
        foreach v_item in array string_to_array(lower(p_value), ',') loop
            m := regexp_match(v_item, '^(\*|([0-9a-z]+)(?:-([0-9a-z]+))?)(?:/([0-9]{1,3}))?$');
            if m is null or (m[4] is not null and (m[4]::integer < 1 or m[4]::integer > v_hi)) then
                v_ok := false;
                exit;
            end if;
            if m[1] <> '*' then
                v_a := api.cron_value(m[2], v_names, v_first);
                v_b := coalesce(api.cron_value(m[3], v_names, v_first), v_a);
                if v_a < v_lo or v_b < v_lo or v_a > v_hi or v_b > v_hi or v_a > v_b then
                    v_ok := false;
                    exit;
                end if;
            end if;
        end loop;
    end if;
    if not v_ok then
        v_range := format('%s-%s', v_lo, v_hi) || case when v_names is null then '' else ' or names ' || v_names[1] || '-' || v_names[array_length(v_names, 1)] end;
        raise exception 'cron % field % is not valid', p_what, api.q(p_value)
            using errcode = '22023',
                  hint = format('Use classic crontab syntax with values %s: *, 5, 1-5, */15, 1,15,30.', v_range);
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
        raise exception '% % is not a valid range', p_what, api.q(p_value)
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
    raise exception '% % is not a boolean', p_what, api.q(p_value)
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
        raise exception 'unknown % configuration parameter %', case p_scope when 'server' then 'backup server' else 'PgSQL node' end, api.q(p_parameter)
            using errcode = '22023', hint = 'Known parameters: ' || array_to_string(v_known, ', ') || '.';
    end if;
    if p_value is null then
        raise exception 'no value given for "%"', p_parameter using errcode = '22023';
    end if;
    case p_parameter
    when 'retention_period', 'automatic_deletion_retention', 'sent_alerts_retention', 'overdue_grace_period',
         'agent_not_seen_threshold', 'wal_receiver_down_threshold', 'clone_expiry_warning' then
        perform api.check_interval(p_parameter, p_value);
    -- WAL sizes (sql/87_wal_monitor.sql): stored as pg_size_pretty-readable text, checked here.
    when 'replication_lag_threshold', 'slot_retained_wal_threshold' then
        return api.check_size(p_parameter, p_value);
    when 'retention_redundancy' then
        return api.check_int(p_parameter, p_value, 0, 10000)::text;
    when 'pgport' then
        return api.check_int('port', p_value, 1, 65535)::text;
    when 'max_concurrent_jobs' then
        return api.check_int(p_parameter, p_value, 1, 1000)::text;
    when 'max_clones' then
        return api.check_int(p_parameter, p_value, 0, 1000)::text;
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
    when 'encryption' then
        return api.check_encryption_value(p_value);   -- sql/35_encryption.sql
    when 'encryption_key', 'encryption_escrow_key' then
        return api.check_encryption_key_parameter(p_parameter, p_value);
    when 'autoregister', 'pause_recovery_on_standby' then
        return api.check_bool(p_parameter, p_value)::text;
    when 'max_recovery_pause' then
        -- The agent's timer: whole seconds, from 1 second to 7 days (a paused standby keeps
        -- every WAL segment since the pause, so an unbounded pause could fill its disk).
        if api.check_interval(p_parameter, p_value) < interval '1 second'
           or api.check_interval(p_parameter, p_value) > interval '7 days' then
            raise exception 'max_recovery_pause % is out of range', api.q(p_value)
                using errcode = '22023', hint = 'Use an interval from 1 second to 7 days, e.g. ''1 hour''.';
        end if;
        return api.check_interval(p_parameter, p_value)::text;
    when 'domain' then
        return api.check_host_name('domain', btrim(p_value), 'domain');
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
            raise exception 'root_backup_partition % is not an absolute path', api.q(p_value)
                using errcode = '22023', hint = 'Use an absolute directory, e.g. /srv/pgbackman.';
        end if;
        perform api.check_backup_partition(p_parameter, p_value);   -- sql/62_reconcile.sql
    when 'pgsql_bin_dir' then
        if p_value !~ '^/' then
            raise exception 'pgsql_bin_dir % is not an absolute path', api.q(p_value)
                using errcode = '22023', hint = 'Use an absolute directory; {major} stands for the client major, e.g. /usr/lib/postgresql/{major}/bin.';
        end if;
    when 'pgnode_backup_partition' then
        if p_value = '' or p_value ~ '(^|/)\.\.(/|$)' then
            raise exception 'pgnode_backup_partition % is not a valid directory', api.q(p_value)
                using errcode = '22023', hint = 'Use a name relative to root_backup_partition (e.g. pgsql_node_%%pgnode%%) or an absolute path, without "..".';
        end if;
        perform api.check_backup_partition(p_parameter, p_value);   -- sql/62_reconcile.sql
    when 'logs_email' then
        if p_value !~ '^[^@\s]+@[^@\s]+$' then
            raise exception 'logs_email % is not an e-mail address', api.q(p_value)
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
