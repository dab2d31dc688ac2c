# Shared by the bench scripts (sourced, not run): logging, running as the postgres OS user,
# throwaway clusters, and a cleanup trap that stops the agent (AGENT_PID), any extra process
# (SLEEP_PID) and every cluster started, then removes $WORK unless KEEP=1; then the common steps
# (the reference database, the catalog and its registrations, the agent) and number helpers.
# The sourcing script sets PGBIN and WORK first.

AGENT_PID=
SLEEP_PID=
CLUSTERS=()

[[ -x $PGBIN/initdb ]] || { echo "PostgreSQL 15 server binaries not found in $PGBIN" >&2; exit 2; }

log() { printf '[%(%H:%M:%S)T] %s\n' -1 "$*" >&2; }

as_pg() {
    if [[ $(id -u) -eq 0 ]]; then runuser -u postgres -- "$@"; else "$@"; fi
}

cleanup() {
    local rc=$?
    set +e
    [[ -n $SLEEP_PID ]] && kill "$SLEEP_PID" 2>/dev/null
    if [[ -n $AGENT_PID ]] && kill -0 "$AGENT_PID" 2>/dev/null; then
        kill -TERM "$AGENT_PID" 2>/dev/null
        for _ in $(seq 50); do kill -0 "$AGENT_PID" 2>/dev/null || break; sleep 0.2; done
        kill -KILL "$AGENT_PID" 2>/dev/null
        wait "$AGENT_PID" 2>/dev/null
    fi
    for c in "${CLUSTERS[@]}"; do
        as_pg "$PGBIN/pg_ctl" -D "$c" -m immediate -w -t 30 stop >/dev/null 2>&1
    done
    if [[ ${KEEP:-0} == 1 ]]; then echo "kept $WORK" >&2; else rm -rf "$WORK"; fi
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# PGBACKMAN, AGENT and BUILD: the binaries of BIN_DIR, else a release build of this tree.
pick_binaries() {
    if [[ -n ${BIN_DIR:-} ]]; then
        PGBACKMAN=$BIN_DIR/pgbackman AGENT=$BIN_DIR/pgbackman-agent
        BUILD="prebuilt binaries in $BIN_DIR"
    else
        log "building release binaries (cargo build --release --bins)"
        (cd "$ROOT" && cargo build --release --bins --quiet)
        PGBACKMAN=$ROOT/target/release/pgbackman AGENT=$ROOT/target/release/pgbackman-agent
        BUILD="$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')$(git -C "$ROOT" diff --quiet HEAD 2>/dev/null || echo ' + uncommitted changes')"
    fi
    [[ -x $PGBACKMAN && -x $AGENT ]] || { echo "pgbackman binaries not found: $PGBACKMAN, $AGENT" >&2; exit 2; }
}

# $WORK with sock/, home/, agent/ and the subdirectories named as arguments; $WORK and its
# socket directory belong to postgres when run as root (the clusters run as that user).
make_work() {
    mkdir -p "$WORK/sock" "$WORK/home" "$WORK/agent"
    local d
    for d in "$@"; do mkdir -p "$WORK/$d"; done
    chmod 755 "$WORK"
    if [[ $(id -u) -eq 0 ]]; then chown postgres: "$WORK" "$WORK/sock"; fi
}

free_port() {
    local p
    for p in $(shuf -i 20000-60000 -n 200); do
        if ! ss -Hltn "( sport = :$p )" | grep -q .; then echo "$p"; return; fi
    done
    echo "no free port found" >&2; return 1
}

# start_cluster NAME LISTEN_ADDRESSES PORT [EXTRA_POSTGRESQL_CONF_LINES]
start_cluster() {
    local name=$1 addrs=$2 port=$3 extra=${4:-} dir=$WORK/$1
    as_pg "$PGBIN/initdb" -D "$dir" -U postgres -A trust -E UTF8 --locale=C.UTF-8 --no-sync >"$WORK/$name-initdb.log" 2>&1 ||
        as_pg "$PGBIN/initdb" -D "$dir" -U postgres -A trust -E UTF8 --locale=C --no-sync >"$WORK/$name-initdb.log" 2>&1
    as_pg tee "$dir/pg_hba.conf" >/dev/null <<CONF
local all all trust
host all all 127.0.0.0/8 trust
CONF
    as_pg tee -a "$dir/postgresql.conf" >/dev/null <<CONF
listen_addresses = '$addrs'
port = $port
unix_socket_directories = '$WORK/sock'
logging_collector = off
$extra
CONF
    CLUSTERS+=("$dir")
    as_pg "$PGBIN/pg_ctl" -D "$dir" -l "$WORK/$name.log" -w -t 120 start >/dev/null
}

# ---- shared by the bench scripts -------------------------------------------------------------
# The catalog cluster (unix socket) and a node on $NODE_ADDR (postgresql.conf lines in $1):
# sets CPORT, NPORT, CATALOG and NODE_CONN.
start_catalog_and_node() {
    CPORT=$(free_port)
    NPORT=$(free_port)
    log "catalog cluster (unix socket, port $CPORT); node cluster on $NODE_ADDR:$NPORT"
    start_cluster catalog "" "$CPORT"
    start_cluster node "$NODE_ADDR" "$NPORT" "$@"
    CATALOG="host=$WORK/sock port=$CPORT dbname=pgbackman user=postgres"
    NODE_CONN=(-h "$NODE_ADDR" -p "$NPORT" -U postgres)
}

median() { sort -g | awk '{a[NR]=$1} END {if (NR==0) print "nan"; else if (NR%2) print a[(NR+1)/2]; else printf "%.6f\n", (a[NR/2]+a[NR/2+1])/2}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.3f", a / b; else print "nan" }'; }
verdict() { awk -v r="$1" -v t="$2" 'BEGIN { print (r != "nan" && r <= t) ? "PASS" : "MISS" }'; }
mb() { awk -v b="$1" 'BEGIN { printf "%.1f", b / 1048576 }'; }
now() { date +%s.%N; }

# The node settings of the backup and restore benches (both methods restore onto the same node).
BENCH_NODE_CONF="fsync = off
synchronous_commit = off
full_page_writes = off
max_wal_size = 8GB
checkpoint_timeout = 30min
shared_buffers = 256MB
maintenance_work_mem = 256MB"

# Catalog and pgbackman helpers: need CATALOG and PGBACKMAN.
cpsql() { psql -X -At -v ON_ERROR_STOP=1 -d "$CATALOG" -c "$1"; }
pgb() { HOME=$WORK/home USER=bench TZ=UTC "$PGBACKMAN" --catalog "$CATALOG" "$@"; }

# build_reference_db: the reference database ($REFDB) at $SCALE as $DB on the node ($NODE_CONN);
# sets DBSIZE (bytes on disk).
build_reference_db() {
    local t
    log "building the reference database at scale $SCALE (this takes a while)"
    t=$(now)
    psql -X -q -v ON_ERROR_STOP=1 "${NODE_CONN[@]}" -d postgres -c "create database $DB" >/dev/null
    timeout 3600 psql -X -q -v ON_ERROR_STOP=1 -v scale="$SCALE" "${NODE_CONN[@]}" -d "$DB" -f "$REFDB" >/dev/null
    # Settled as a database in service is: autovacuum's first pass over the freshly loaded tables
    # would otherwise run during the first timed rounds.
    psql -X -q "${NODE_CONN[@]}" -d "$DB" -c vacuum >/dev/null
    psql -X -q "${NODE_CONN[@]}" -d "$DB" -c checkpoint >/dev/null
    DBSIZE=$(psql -X -At "${NODE_CONN[@]}" -d "$DB" -c "select pg_database_size(current_database())")
    log "database $DB: $(mb "$DBSIZE") MB on disk, built in $(awk -v a="$t" -v b="$(now)" 'BEGIN{printf "%.0f", b-a}') s"
}

# register_site: a new catalog, the backup server bench.example.org and the node
# $NODE_ADDR:$NPORT.
register_site() {
    pgb db init >/dev/null
    pgb -C "register_backup_server bench example.org bench" >/dev/null
    pgb -C "register_pgsql_node $NODE_ADDR \"\" $NPORT postgres RUNNING bench" >/dev/null
}

# register_full_definition: a FULL definition of $DB scheduled at a time that never comes during
# the run (it runs only when asked); sets DEF_ID.
register_full_definition() {
    local h=$(( ($(date -u +%-H) + 12) % 24 ))
    pgb -C "register_backup_definition $SERVER $NODE_ADDR $DB \"\" 0 $h \"*\" \"*\" \"*\" FULL false \"7 days\" 1 \"\" ACTIVE bench" >/dev/null
    DEF_ID=$(cpsql "select max(def_id) from backup_definition")
}

# start_agent BIN_DIR: an agent for $SERVER with BIN_DIR as its client programs of major 15
# (config and log under $WORK/agent); returns once it has started (AGENT_PID).
# AGENT_AS_PG=1 runs it as the postgres OS user when run as root (clone jobs refuse root):
# setpriv execs, so AGENT_PID is the agent itself and the cleanup trap's signals reach it.
start_agent() {
    local run=()
    if [[ ${AGENT_AS_PG:-0} == 1 && $(id -u) -eq 0 ]]; then
        chown -R postgres: "$WORK/agent"
        run=(env HOME="$WORK/agent" setpriv --reuid=postgres --regid=postgres --init-groups)
    fi
    cat >"$WORK/agent/agent.toml" <<CONF
[catalog]
conninfo = "$CATALOG"
[agent]
backup_server = "$SERVER"
state_dir = "$WORK/agent/state"
backup_dir = "$WORK/agent/backups"
http_listen = ""
[agent.bin_dirs]
"15" = "$1"
CONF
    PGBACKMAN_LOG=info TZ=UTC "${run[@]}" "$AGENT" --config "$WORK/agent/agent.toml" >/dev/null 2>>"$WORK/agent/agent.log" &
    AGENT_PID=$!
    local deadline=$((SECONDS + 30))
    until grep -q "pgbackman-agent started" "$WORK/agent/agent.log"; do
        kill -0 "$AGENT_PID" 2>/dev/null || { cat "$WORK/agent/agent.log" >&2; echo "agent died" >&2; exit 1; }
        ((SECONDS < deadline)) || { cat "$WORK/agent/agent.log" >&2; echo "agent did not start" >&2; exit 1; }
        sleep 0.2
    done
}
