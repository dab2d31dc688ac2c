#!/usr/bin/env bash
# Whole-process benchmark: WAL intake under load (issue 11). A node (wal_level = replica) with a
# WAL archive registered for the backup server; the real agent creates the slot and runs
# pg_receivewal; pgbench writes for DURATION seconds (default 180) unthrottled, as fast as this
# machine goes. Sampled every second: the agent's RSS and, separately, its children's
# (pg_receivewal), and the receiver lag (the node's current segment minus the newest segment in
# the catalog's ledger). At the end: the lag when pgbench stops; then, after a pg_switch_wal and
# the drain, every segment from the first archived one to the node's current one is in the ledger
# exactly once, with no hole, and on disk. Nothing fails on a number: PASS/MISS against the
# targets (lag <= 2 segments at the end, each segment once, agent RSS < 60 MB).
#
# Usage: bench/wal-intake.sh [seconds]     (default 180)
#   env: BIN_DIR=DIR uses pgbackman and pgbackman-agent from DIR instead of building the tree;
#        NODE_MAJOR=17 runs the node on PostgreSQL 17 (from .ci/install-pg-majors' cache,
#        $PGBACKMAN_PG_CACHE, default /var/cache/pgbackman/postgresql) with pg_receivewal 17;
#        WORKLOAD=write (default: 100 rows of ~1 KB rewritten a transaction, the most WAL a
#        second) or tpcb (pgbench's built-in); CLIENTS (default 4), SCALE (pgbench -i scale,
#        default 10); RATE=N throttles pgbench to N transactions/s (-R); KEEP=1.
set -euo pipefail
shopt -s inherit_errexit

DURATION=${1:-180}
CLIENTS=${CLIENTS:-4}
SCALE=${SCALE:-10}
NODE_MAJOR=${NODE_MAJOR:-15}
[[ $DURATION =~ ^[0-9]+$ && $DURATION -ge 10 && $DURATION -le 3600 ]] || { echo "usage: $0 [seconds 10..3600]" >&2; exit 2; }

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PGBIN=/usr/lib/postgresql/15/bin
if [[ $NODE_MAJOR == 15 ]]; then
    NODE_BIN=$PGBIN
else
    NODE_BIN=${PGBACKMAN_PG_CACHE:-/var/cache/pgbackman/postgresql}/$NODE_MAJOR/bin
    [[ -x $NODE_BIN/initdb ]] || { echo "PostgreSQL $NODE_MAJOR not in $NODE_BIN: run .ci/install-pg-majors $NODE_MAJOR" >&2; exit 2; }
fi
SERVER=bench.example.org
NODE_ADDR=127.0.0.2
SEG=$((16 * 1024 * 1024))
WORK=/var/tmp/pgbackman-bench-$$
# shellcheck source=bench/lib.sh
source "$(dirname "$0")/lib.sh"

pick_binaries

make_work

CPORT=$(free_port)
NPORT=$(free_port)
log "catalog cluster (unix socket, port $CPORT); node PostgreSQL $NODE_MAJOR on $NODE_ADDR:$NPORT"
start_cluster catalog "" "$CPORT"
# The node: durable enough to be realistic (full_page_writes on: more WAL per transaction).
PGBIN=$NODE_BIN start_cluster node "$NODE_ADDR" "$NPORT" "wal_level = replica
max_wal_senders = 10
synchronous_commit = off
shared_buffers = 128MB
max_wal_size = 1GB
checkpoint_timeout = 5min"
as_pg tee -a "$WORK/node/pg_hba.conf" >/dev/null <<<"host replication all 127.0.0.0/8 trust"
as_pg "$NODE_BIN/pg_ctl" -D "$WORK/node" reload >/dev/null
CATALOG="host=$WORK/sock port=$CPORT dbname=pgbackman user=postgres"
NODE_CONN=(-h "$WORK/sock" -p "$NPORT" -U postgres)
npsql() { psql -X -At -v ON_ERROR_STOP=1 "${NODE_CONN[@]}" -d postgres -c "$1"; }
node_segno() { npsql "select floor((pg_current_wal_lsn() - '0/0'::pg_lsn) / $SEG)::int8"; }
ledger_max() { cpsql "select coalesce(max(segno), -1) from wal_object where kind = 'full'"; }

register_site
log "pgbench -i -s $SCALE"
"$NODE_BIN/pgbench" -i -q -s "$SCALE" "${NODE_CONN[@]}" postgres >"$WORK/pgbench-init.log" 2>&1
# The write-heavy script (WORKLOAD=write, the default): each transaction rewrites 100 rows of
# ~1 KB (HOT updates in a half-empty table, so it does not grow), about 120 KB of WAL: the
# most WAL a second this machine makes. WORKLOAD=tpcb runs pgbench's built-in TPC-B instead.
npsql "create table intake (id int primary key, pad text) with (fillfactor = 50);
       insert into intake select g, repeat(md5(g::text), 31) from generate_series(1, 20000) g" >/dev/null
npsql "vacuum analyze intake" >/dev/null
cat >"$WORK/write.sql" <<'SQL'
\set a random(1, 19900)
update intake set pad = lpad(md5(random()::text), 1000, md5(random()::text)) where id between :a and :a + 99;
SQL
chmod 644 "$WORK/write.sql"
case ${WORKLOAD:-write} in
    write) SCRIPT=(-f "$WORK/write.sql") ;;
    tpcb) SCRIPT=() ;;
    *) echo "WORKLOAD is write or tpcb" >&2; exit 2 ;;
esac
pgb -C "register_wal_archive $SERVER $NODE_ADDR" >/dev/null

cat >"$WORK/agent/agent.toml" <<CONF
[catalog]
conninfo = "$CATALOG"
[agent]
backup_server = "$SERVER"
state_dir = "$WORK/agent/state"
backup_dir = "$WORK/agent/backups"
http_listen = ""
[agent.bin_dirs]
"15" = "$PGBIN"
$([[ $NODE_MAJOR == 15 ]] || echo "\"$NODE_MAJOR\" = \"$NODE_BIN\"")
CONF
PGBACKMAN_LOG=info TZ=UTC "$AGENT" --config "$WORK/agent/agent.toml" >/dev/null 2>>"$WORK/agent/agent.log" &
AGENT_PID=$!
deadline=$((SECONDS + 60))
until [[ $(npsql "select count(*) from pg_replication_slots where active") == 1 ]]; do
    kill -0 "$AGENT_PID" 2>/dev/null || { cat "$WORK/agent/agent.log" >&2; echo "agent died" >&2; exit 1; }
    ((SECONDS < deadline)) || { cat "$WORK/agent/agent.log" >&2; echo "the receiver did not start within 60 s" >&2; exit 1; }
    sleep 0.2
done
# The first segment the archive will hold in full: the one after the slot's start.
npsql "select pg_switch_wal()" >/dev/null
FIRST=$(node_segno)
log "receiver streaming; first full segment $FIRST; pgbench -c $CLIENTS -j 2 for $DURATION s"

# RSS in kB of a pid (0 when gone), and of every descendant of a pid.
rss_of() { awk '/^VmRSS:/ {print $2; f=1} END {if (!f) print 0}' "/proc/$1/status" 2>/dev/null || echo 0; }
descendants() {
    local p c
    for p in "$@"; do
        for c in $(ps -o pid= --ppid "$p" 2>/dev/null); do echo "$c"; descendants "$c"; done
    done
}
children_rss() {
    local s=0 p
    for p in $(descendants "$AGENT_PID"); do s=$((s + $(rss_of "$p"))); done
    echo "$s"
}

# utime + stime in clock ticks (fields 14 and 15; cut after the command name's ")").
cpu_ticks() { sed -E 's/^.*\) //' "/proc/$1/stat" 2>/dev/null | awk '{print $12 + $13}' || echo 0; }
TCK=$(getconf CLK_TCK)
# Where the lag is: segments pg_receivewal completed that the agent has not stored yet (the
# newest stored one stays in incoming/), and stored ones whose ledger row is not delivered.
incoming_backlog() {
    local n
    n=$({ find "$WORK/agent/backups" -path '*/incoming/*' -regextype posix-extended -regex '.*/[0-9A-F]{24}' 2>/dev/null || true; } | wc -l)
    echo $((n > 0 ? n - 1 : 0))
}
# The segment pg_receivewal is writing: the newest name in incoming/ (its .partial). Not
# pg_stat_replication.write_lsn: pg_receivewal reports it only every 10 s.
receiving() {
    local f
    f=$({ find "$WORK/agent/backups" -path '*/incoming/*' -regextype posix-extended -regex '.*/[0-9A-F]{24}(\.partial)?' -printf '%f\n' 2>/dev/null || true; } | sort | tail -1)
    [[ -n $f ]] || { echo "$FIRST"; return; }
    echo $(( 16#${f:8:8} * 256 + 16#${f:16:8} ))
}
pending_backlog() { { find "$WORK/agent/state/wal_pending" -maxdepth 1 -name '*.json' 2>/dev/null || true; } | wc -l; }
RECV_PID=$(pgrep -P "$AGENT_PID" pg_receivewal | head -1 || true)
AGENT_CPU0=$(cpu_ticks "$AGENT_PID"); RECV_CPU0=$(cpu_ticks "$RECV_PID")
LSN0=$(npsql "select pg_current_wal_lsn() - '0/0'::pg_lsn")
THROTTLE=()
[[ -n ${RATE:-} ]] && THROTTLE=(-R "$RATE")
"$NODE_BIN/pgbench" -n "${SCRIPT[@]}" "${THROTTLE[@]}" -c "$CLIENTS" -j 2 -T "$DURATION" -P 30 "${NODE_CONN[@]}" postgres >"$WORK/pgbench.log" 2>&1 &
BENCH_PID=$!
T0=$EPOCHREALTIME
max_agent=0 max_children=0 max_lag=0 samples=0 lag_sum=0 max_in=0 in_sum=0 max_pend=0 pend_sum=0 max_stream=0 stream_sum=0
while kill -0 "$BENCH_PID" 2>/dev/null; do
    a=$(rss_of "$AGENT_PID"); c=$(children_rss)
    ((a > max_agent)) && max_agent=$a
    ((c > max_children)) && max_children=$c
    l=$(ledger_max); ((l < FIRST - 1)) && l=$((FIRST - 1))
    lag=$(( $(node_segno) - l - 1 ))
    ((lag > max_lag)) && max_lag=$lag
    samples=$((samples + 1)); lag_sum=$((lag_sum + lag))
    # Segments the node completed that pg_receivewal has not (the stream's share).
    b=$(( $(node_segno) - $(receiving) )); ((b < 0)) && b=0
    ((b > max_stream)) && max_stream=$b; stream_sum=$((stream_sum + b))
    b=$(incoming_backlog); ((b > max_in)) && max_in=$b; in_sum=$((in_sum + b))
    b=$(pending_backlog); ((b > max_pend)) && max_pend=$b; pend_sum=$((pend_sum + b))
    sleep 1
done
wait "$BENCH_PID" || { cat "$WORK/pgbench.log" >&2; echo "pgbench failed" >&2; exit 1; }
T1=$EPOCHREALTIME
AGENT_CPU1=$(cpu_ticks "$AGENT_PID"); RECV_CPU1=$(cpu_ticks "$RECV_PID")
LSN1=$(npsql "select pg_current_wal_lsn() - '0/0'::pg_lsn")
END_SEG=$(node_segno)
END_LEDGER=$(ledger_max)
# Of that lag: segments pg_receivewal had completed that were not in the ledger yet (the
# agent's share); the rest is the stream's (walsender to pg_receivewal).
END_INTAKE_LAG=$(( $(receiving) - END_LEDGER - 1 ))
# Segments completed on the node but not yet in the ledger when the writing stopped.
END_LAG=$((END_SEG - END_LEDGER - 1))
log "pgbench done; lag at the end $END_LAG segment(s); draining"

# Drain: the segment being written is completed, then all must arrive.
npsql "select pg_switch_wal()" >/dev/null
LAST=$(( $(node_segno) - 1 ))
deadline=$((SECONDS + 120))
until (( $(ledger_max) >= LAST )); do
    ((SECONDS < deadline)) || { echo "the ledger did not reach segment $LAST within 120 s" >&2; break; }
    sleep 0.5
done
T2=$EPOCHREALTIME
a=$(rss_of "$AGENT_PID"); ((a > max_agent)) && max_agent=$a
HWM=$(awk '/^VmHWM:/ {print $2}' "/proc/$AGENT_PID/status")
kill -0 "$AGENT_PID" 2>/dev/null || { echo "agent died during the measurement" >&2; exit 1; }

read -r ROWS DISTINCT MIN MAX < <(cpsql "select count(*), count(distinct segno), min(segno), max(segno) from wal_object where kind = 'full' and segno >= $FIRST" | tr '|' ' ')
HOLES=$(cpsql "select count(*) from api.wal_holes(1)")
FILES=$(find "$WORK/agent/backups" -path '*/incoming' -prune -o -name '*.zst' -print | wc -l)
ALLROWS=$(cpsql "select count(*) from wal_object where kind = 'full'")
STORED=$(cpsql "select coalesce(sum(stored_size), 0) from wal_object where kind = 'full'")
BADHDR=$(cpsql "select count(*) from wal_object where header_check <> 'PASSED'")
WANT=$((LAST - FIRST + 1))
SEGS_RUN=$((END_LEDGER - FIRST + 1))
wall=$(awk -v a="$T0" -v b="$T1" 'BEGIN { printf "%.1f", b - a }')
tps=$(awk '/^tps = / {print $3; exit}' "$WORK/pgbench.log")
walmb=$(awk -v a="$LSN0" -v b="$LSN1" 'BEGIN { printf "%.0f", (b - a) / 1048576 }')
segps=$(awk -v n="$SEGS_RUN" -v w="$wall" 'BEGIN { printf "%.2f", n / w }')
nodesegps=$(awk -v a="$LSN0" -v b="$LSN1" -v w="$wall" -v s="$SEG" 'BEGIN { printf "%.2f", (b - a) / s / w }')
errors=$(grep -c -E ' (ERROR|WARN) ' "$WORK/agent/agent.log" || true)
kb2mb() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }

echo
echo "WAL intake of a PostgreSQL $NODE_MAJOR node under pgbench (${WORKLOAD:-write}, -c $CLIENTS -j 2, $DURATION s, ${RATE:+at most $RATE tps}${RATE:-unthrottled})"
echo "build: $BUILD; host: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GB", $2/1048576}' /proc/meminfo), load avg $(cut -d' ' -f1-3 /proc/loadavg)"
printf '%-52s %14s\n' "" value
printf '%-52s %14s\n' "pgbench tps" "$tps"
printf '%-52s %14s\n' "WAL written by the node (MB)" "$walmb"
printf '%-52s %14s\n' "segments/s written by the node" "$nodesegps"
printf '%-52s %14s\n' "segments/s in the ledger during the run" "$segps"
printf '%-52s %14s\n' "receiver lag, mean over the run (segments)" "$(awk -v s="$lag_sum" -v n="$samples" 'BEGIN { printf "%.2f", n ? s / n : 0 }')"
printf '%-52s %14s\n' "receiver lag, max over the run (segments)" "$max_lag"
printf '%-52s %14s\n' "receiver lag when pgbench stopped (segments)" "$END_LAG"
printf '%-52s %14s\n' "  of which pg_receivewal had completed (agent's share)" "$END_INTAKE_LAG"
printf '%-52s %14s\n' "not yet completed by pg_receivewal, mean / max (seg.)" "$(awk -v s="$stream_sum" -v n="$samples" 'BEGIN { printf "%.1f", n ? s / n : 0 }') / $max_stream"
printf '%-52s %14s\n' "not yet stored (incoming/), mean / max (segments)" "$(awk -v s="$in_sum" -v n="$samples" 'BEGIN { printf "%.1f", n ? s / n : 0 }') / $max_in"
printf '%-52s %14s\n' "stored, not yet in the ledger, mean / max" "$(awk -v s="$pend_sum" -v n="$samples" 'BEGIN { printf "%.1f", n ? s / n : 0 }') / $max_pend"
printf '%-52s %14s\n' "agent CPU during the run (s) / per segment (ms)" "$(awk -v a="$AGENT_CPU0" -v b="$AGENT_CPU1" -v t="$TCK" -v n="$SEGS_RUN" 'BEGIN { c = (b - a) / t; printf "%.1f / %.0f", c, (n > 0 ? 1000 * c / n : 0) }')"
printf '%-52s %14s\n' "pg_receivewal CPU during the run (s)" "$(awk -v a="$RECV_CPU0" -v b="$RECV_CPU1" -v t="$TCK" 'BEGIN { printf "%.1f", (b - a) / t }')"
printf '%-52s %14s\n' "drain after pg_switch_wal (s)" "$(awk -v a="$T1" -v b="$T2" 'BEGIN { printf "%.1f", b - a }')"
printf '%-52s %14s\n' "segments expected ($FIRST..$LAST)" "$WANT"
printf '%-52s %14s\n' "ledger rows / distinct segments in that range" "$ROWS / $DISTINCT"
printf '%-52s %14s\n' "ledger rows in all / stored .zst files on disk" "$ALLROWS / $FILES"
printf '%-52s %14s\n' "holes (api.wal_holes) / header checks not PASSED" "$HOLES / $BADHDR"
printf '%-52s %14s\n' "stored size (MB, zstd) / WAL size (MB)" "$(mb "$STORED") / $((ALLROWS * 16))"
printf '%-52s %14s\n' "agent RSS, max sampled (MB)" "$(kb2mb "$max_agent")"
printf '%-52s %14s\n' "agent VmHWM, peak since start (MB)" "$(kb2mb "$HWM")"
printf '%-52s %14s\n' "children RSS (pg_receivewal), max sampled (MB)" "$(kb2mb "$max_children")"
printf '%-52s %14s\n' "WARN/ERROR lines in the agent log" "$errors"
echo
ok_once=$([[ $ROWS == "$WANT" && $DISTINCT == "$WANT" && $MIN == "$FIRST" && $MAX == "$LAST" && $HOLES == 0 && $FILES == "$ALLROWS" ]] && echo PASS || echo MISS)
printf 'lag when pgbench stopped %s segment(s) (target <= 2)  %s\n' "$END_LAG" "$(awk -v l="$END_LAG" 'BEGIN { print (l <= 2) ? "PASS" : "MISS" }')"
printf "  the agent's share: %s segment(s) completed by pg_receivewal, not yet in the ledger (<= 2)  %s\n" "$END_INTAKE_LAG" "$(awk -v l="$END_INTAKE_LAG" 'BEGIN { print (l <= 2) ? "PASS" : "MISS" }')"
printf 'every segment in the ledger once, none missing, all on disk  %s\n' "$ok_once"
printf 'agent peak RSS %s MB (target < 60 MB, pg_receivewal not counted)  %s\n' "$(kb2mb "$HWM")" "$(awk -v k="$HWM" 'BEGIN { print (k < 60 * 1024) ? "PASS" : "MISS" }')"
printf 'intake: %s segments/s (%s MB/s of WAL)\n' "$segps" "$(awk -v s="$segps" 'BEGIN { printf "%.1f", s * 16 }')"
