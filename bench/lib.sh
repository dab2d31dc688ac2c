# Shared by the bench scripts (sourced, not run): logging, running as the postgres OS user,
# throwaway clusters, and a cleanup trap that stops the agent (AGENT_PID), any extra process
# (SLEEP_PID) and every cluster started, then removes $WORK unless KEEP=1.
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
