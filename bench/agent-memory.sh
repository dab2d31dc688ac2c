#!/usr/bin/env bash
# Whole-process benchmark: memory and idle CPU of pgbackman-agent owning 10,000 backup definitions.
# The catalog gets one backup server, 50 RUNNING PgSQL nodes (api.register_pgsql_node, nothing
# listens behind them: no schedule fires during the measurement) and N definitions inserted with
# SQL, spread over the nodes with schedules "m h * * *" whose hours are at least two hours away from
# now (and more than the agent's one-hour catch-up window in the past). The agent starts with its
# default settings (repoll every 30 s); once it has loaded the definitions (its definition cache is
# written) and settled, VmRSS (/proc/PID/status) and utime+stime (/proc/PID/stat) are sampled at
# t=0 and t=SECONDS_IDLE. Nothing fails on a number: PASS/MISS against DESIGN.md §7's targets
# (RSS < 40 MB; CPU over an idle minute about 0).
#
# Usage: bench/agent-memory.sh [definitions]    (default 10000)
#   env: BIN_DIR=DIR uses pgbackman and pgbackman-agent from DIR instead of building the tree;
#        IDLE_SECONDS (default 60), KEEP=1 keeps the work directory for inspection.
set -euo pipefail
shopt -s inherit_errexit

NDEFS=${1:-10000}
IDLE=${IDLE_SECONDS:-60}
NNODES=50
[[ $NDEFS =~ ^[0-9]+$ && $NDEFS -ge 1 ]] || { echo "usage: $0 [definitions>=1]" >&2; exit 2; }
[[ $IDLE =~ ^[0-9]+$ && $IDLE -ge 1 && $IDLE -le 600 ]] || { echo "IDLE_SECONDS must be 1..600" >&2; exit 2; }

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PGBIN=/usr/lib/postgresql/15/bin
SERVER=bench.example.org
WORK=/var/tmp/pgbackman-bench-$$
# shellcheck source=bench/lib.sh
source "$(dirname "$0")/lib.sh"

rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
hwm_kb() { awk '/^VmHWM:/ {print $2}' "/proc/$1/status"; }
threads() { awk '/^Threads:/ {print $2}' "/proc/$1/status"; }
# utime + stime in clock ticks (fields 14 and 15; the command name may hold spaces, so cut after ")").
cpu_ticks() { sed -E 's/^.*\) //' "/proc/$1/stat" | awk '{print $12 + $13}'; }
TCK=$(getconf CLK_TCK)

pick_binaries

make_work

CPORT=$(free_port)
log "catalog cluster (unix socket, port $CPORT)"
start_cluster catalog "" "$CPORT"
CATALOG="host=$WORK/sock port=$CPORT dbname=pgbackman user=postgres"

pgb db init >/dev/null
pgb -C "register_backup_server bench example.org bench" >/dev/null
SRV=$(cpsql "select server_id from backup_server where fqdn = '$SERVER'")

# Hours (UTC) from now+3 to now+21: the next fire is >= 2 h away, the last one >= 3 h ago
# (outside the 1 h catch-up window).
H0=$(date -u +%-H)
log "inserting $NNODES nodes and $NDEFS definitions (hours $(( (H0 + 3) % 24 ))..$(( (H0 + 21) % 24 )) UTC)"
t=$EPOCHREALTIME
cpsql "select count(api.register_pgsql_node('node' || lpad(g::text, 2, '0'), 'bench.invalid', 5432, 'postgres',
                                            null, null, 'RUNNING', 'agent-memory bench'))
         from generate_series(1, $NNODES) g" >/dev/null
cpsql "insert into backup_definition (backup_server_id, pgsql_node_id, dbname, minutes_cron, hours_cron, remarks)
       select $SRV, n.node_ids[1 + g % $NNODES], 'db' || lpad(g::text, 5, '0'),
              (g % 60)::text, (($H0 + 3 + (g / 60) % 19) % 24)::text, 'agent-memory bench'
         from generate_series(1, $NDEFS) g,
              (select array_agg(node_id order by node_id) as node_ids from pgsql_node) n" >/dev/null
log "catalog filled in $(awk -v a="$t" -v b="$EPOCHREALTIME" 'BEGIN{printf "%.1f", b-a}') s: $(cpsql "select count(*) from backup_definition where job_status = 'ACTIVE'") ACTIVE definitions"

cat >"$WORK/agent/agent.toml" <<EOF
[catalog]
conninfo = "$CATALOG"
[agent]
backup_server = "$SERVER"
state_dir = "$WORK/agent/state"
backup_dir = "$WORK/agent/backups"
http_listen = ""
[agent.bin_dirs]
"15" = "$PGBIN"
EOF
START=$EPOCHREALTIME
PGBACKMAN_LOG=info TZ=UTC "$AGENT" --config "$WORK/agent/agent.toml" >/dev/null 2>>"$WORK/agent/agent.log" &
AGENT_PID=$!
CACHE=$WORK/agent/state/definitions.json
deadline=$((SECONDS + 120))
until grep -q "pgbackman-agent started" "$WORK/agent/agent.log" && [[ -s $CACHE ]]; do
    kill -0 "$AGENT_PID" 2>/dev/null || { cat "$WORK/agent/agent.log" >&2; echo "agent died" >&2; exit 1; }
    ((SECONDS < deadline)) || { cat "$WORK/agent/agent.log" >&2; echo "agent did not load its definitions within 120 s" >&2; exit 1; }
    sleep 0.1
done
LOADED=$EPOCHREALTIME
CACHED=$(jq '.definitions | length' "$CACHE" 2>/dev/null || echo "?")
log "agent started and wrote its cache ($CACHED definitions, $(stat -c %s "$CACHE") bytes) in $(awk -v a="$START" -v b="$LOADED" 'BEGIN{printf "%.2f", b-a}') s; settling 5 s"
sleep 5

cpu0=$(cpu_ticks "$AGENT_PID"); rss0=$(rss_kb "$AGENT_PID"); w0=$EPOCHREALTIME
log "t=0: RSS $((rss0 / 1024)) MB; idling $IDLE s"
sleep "$IDLE" &
SLEEP_PID=$!
wait "$SLEEP_PID" # interruptible: a signal runs the cleanup at once
SLEEP_PID=
cpu1=$(cpu_ticks "$AGENT_PID"); rss1=$(rss_kb "$AGENT_PID"); w1=$EPOCHREALTIME
hwm=$(hwm_kb "$AGENT_PID"); thr=$(threads "$AGENT_PID")
kill -0 "$AGENT_PID" 2>/dev/null || { echo "agent died during the measurement" >&2; exit 1; }
jobs_fired=$(cpsql "select count(*) from job")
errors=$(grep -c -E ' (ERROR|WARN) ' "$WORK/agent/agent.log" || true)

cpu_s=$(awk -v a="$cpu0" -v b="$cpu1" -v t="$TCK" 'BEGIN { printf "%.2f", (b - a) / t }')
wall=$(awk -v a="$w0" -v b="$w1" 'BEGIN { printf "%.1f", b - a }')
pct=$(awk -v c="$cpu_s" -v w="$wall" 'BEGIN { printf "%.2f", 100 * c / w }')
mb() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }

echo
echo "pgbackman-agent with $NDEFS definitions on $NNODES nodes, idle ${IDLE} s (default repoll_seconds = 30)"
echo "build: $BUILD; host: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GB", $2/1048576}' /proc/meminfo), load avg $(cut -d' ' -f1-3 /proc/loadavg)"
printf '%-40s %12s\n' "" value
printf '%-40s %12s\n' "start -> definitions cached (s)" "$(awk -v a="$START" -v b="$LOADED" 'BEGIN{printf "%.2f", b-a}')"
printf '%-40s %12s\n' "definition cache file (KB)" "$(( $(stat -c %s "$CACHE") / 1024 ))"
printf '%-40s %12s\n' "VmRSS at t=0 (MB)" "$(mb "$rss0")"
printf '%-40s %12s\n' "VmRSS at t=${IDLE}s (MB)" "$(mb "$rss1")"
printf '%-40s %12s\n' "VmHWM, peak RSS since start (MB)" "$(mb "$hwm")"
printf '%-40s %12s\n' "threads" "$thr"
printf '%-40s %12s\n' "CPU used over ${wall} s idle (s)" "$cpu_s"
printf '%-40s %12s\n' "  = % of one core" "$pct"
printf '%-40s %12s\n' "jobs fired (must be 0)" "$jobs_fired"
printf '%-40s %12s\n' "WARN/ERROR lines in the agent log" "$errors"
echo
printf 'RSS %s MB (target < 40 MB)  %s\n' "$(mb "$rss1")" "$(awk -v k="$rss1" 'BEGIN { print (k < 40 * 1024) ? "PASS" : "MISS" }')"
printf 'idle CPU %s%% of one core (target about 0: <= 0.5%%)  %s\n' "$pct" "$(awk -v p="$pct" 'BEGIN { print (p <= 0.5) ? "PASS" : "MISS" }')"
