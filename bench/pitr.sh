#!/usr/bin/env bash
# Whole-process benchmark of a point-in-time recovery (issue 12, "Speed"): the reference database
# (../shared/bench/reference-db.sql) plus pgbench tables, a BASEBACKUP by a real pgbackman-agent
# that keeps the node's WAL archive, then PGBENCH_SECONDS of pgbench; the target is the time
# pgbench ended. Then, in ROUNDS rounds (order alternating, so neither always runs on the warmer
# page cache):
#   (a) pgbackman: `register_pitr_restore <BckID> --clone rN --target-time T --target-action promote`,
#       wall = the CLONE job's claimed_at -> finished_at (extract, recovery through wal-get, promote,
#       check), plus the clone's phase timings; `delete_clone` after (not timed);
#   (b) by hand: `zstd -d < base.tar.zst | tar -x` into a directory, recovery.signal and
#       restore_command = 'zstd -d -q -f -o %p <archive>/<TLI>/%f.zst' (the archive stores
#       zstd-compressed segments, so a hand-made restore of it decompresses too), the same target
#       and action, pg_ctl start, wait until pg_is_in_recovery() is false;
#       wall = start of extraction -> promoted.
# Both restore the same base backup with the same postgresql.conf (the node's, inside the tar).
# Nothing fails on a number: the PASS/MISS line compares the medians with the target (<= 1.1x).
#
# Usage: bench/pitr.sh [scale]     (scale of reference-db.sql, default 4, about 1.4 GB)
#   env: BIN_DIR=DIR uses pgbackman and pgbackman-agent from DIR instead of building the tree;
#        PGBENCH_SECONDS (default 120), PGBENCH_SCALE (default 4; pgbench -i -s, before the
#        base backup), ROUNDS (default 2), KEEP=1 keeps the work directory.
# Runs as root (servers and the agent then run as the postgres OS user) or as an ordinary user.
set -euo pipefail
shopt -s inherit_errexit

SCALE=${1:-4}
ROUNDS=${ROUNDS:-2}
PGBENCH_SECONDS=${PGBENCH_SECONDS:-120}
PGBENCH_SCALE=${PGBENCH_SCALE:-4}
[[ $SCALE =~ ^[0-9]+$ && $SCALE -ge 1 ]] || { echo "usage: $0 [scale>=1]" >&2; exit 2; }
[[ $ROUNDS =~ ^[0-9]+$ && $ROUNDS -ge 1 ]] || { echo "ROUNDS must be a positive integer" >&2; exit 2; }
[[ $PGBENCH_SECONDS =~ ^[0-9]+$ && $PGBENCH_SECONDS -ge 1 ]] || { echo "PGBENCH_SECONDS must be a positive integer" >&2; exit 2; }
command -v zstd >/dev/null || { echo "zstd is needed for the hand-made restore" >&2; exit 2; }

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
REFDB=${REFDB:-$ROOT/../shared/bench/reference-db.sql}
PGBIN=/usr/lib/postgresql/15/bin
NODE_ADDR=127.0.0.2
SERVER=bench.example.org
DB=bench
WORK=/var/tmp/pgbackman-bench-$$
# shellcheck source=bench/lib.sh
source "$(dirname "$0")/lib.sh"

# ---- build -------------------------------------------------------------------------------------
if [[ -n ${BIN_DIR:-} ]]; then
    PGBACKMAN=$BIN_DIR/pgbackman AGENT=$BIN_DIR/pgbackman-agent
    BUILD="prebuilt binaries in $BIN_DIR"
else
    log "building release binaries (cargo build --release -p pgbackman -p pgbackman-agent)"
    (cd "$ROOT" && CARGO_INCREMENTAL=0 cargo build --release -p pgbackman -p pgbackman-agent --quiet)
    PGBACKMAN=$ROOT/target/release/pgbackman AGENT=$ROOT/target/release/pgbackman-agent
    BUILD="$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')$(git -C "$ROOT" diff --quiet HEAD 2>/dev/null || echo ' + uncommitted changes')"
fi
[[ -x $PGBACKMAN && -x $AGENT ]] || { echo "pgbackman binaries not found: $PGBACKMAN, $AGENT" >&2; exit 2; }
# The agent runs as postgres: it must be able to reach its own binary.
[[ $(id -u) -eq 0 ]] && { runuser -u postgres -- test -x "$AGENT" || { echo "the postgres user cannot run $AGENT (copy the binaries somewhere it can, BIN_DIR=...)" >&2; exit 2; }; }

mkdir -p "$WORK/sock" "$WORK/home" "$WORK/agent" "$WORK/hand"
chmod 755 "$WORK"
[[ $(id -u) -eq 0 ]] && chown postgres: "$WORK" "$WORK/sock" "$WORK/hand"

CPORT=$(free_port)
NPORT=$(free_port)
log "catalog cluster (unix socket, port $CPORT); node cluster on $NODE_ADDR:$NPORT"
start_cluster catalog "" "$CPORT"
start_cluster node "$NODE_ADDR" "$NPORT" "$BENCH_NODE_CONF"
echo "host replication all 127.0.0.0/8 trust" | as_pg tee -a "$WORK/node/pg_hba.conf" >/dev/null
as_pg "$PGBIN/pg_ctl" -D "$WORK/node" reload >/dev/null

CATALOG="host=$WORK/sock port=$CPORT dbname=pgbackman user=postgres"
NODE_CONN=(-h "$NODE_ADDR" -p "$NPORT" -U postgres)

build_reference_db
log "pgbench -i -s $PGBENCH_SCALE into $DB"
"$PGBIN/pgbench" -q -i -s "$PGBENCH_SCALE" "${NODE_CONN[@]}" "$DB" >/dev/null 2>&1
psql -X -q "${NODE_CONN[@]}" -d "$DB" -c "vacuum analyze" -c checkpoint >/dev/null

# ---- catalog, WAL archive, definition, agent (as postgres: clone jobs refuse root) -----------------
register_site
pgb -C "register_wal_archive $SERVER $NODE_ADDR" >/dev/null
h=$(( ($(date -u +%-H) + 12) % 24 ))
pgb -C "register_backup_definition $SERVER $NODE_ADDR \"\" \"\" 0 $h \"*\" \"*\" \"*\" BASEBACKUP false \"7 days\" 1 \"\" ACTIVE bench --checkpoint fast" >/dev/null
DEF_ID=$(cpsql "select max(def_id) from backup_definition")
AGENT_AS_PG=1 start_agent "$PGBIN"
deadline=$((SECONDS + 60))
until [[ $(psql -X -At "${NODE_CONN[@]}" -d postgres -c "select count(*) from pg_replication_slots where active") == 1 ]]; do
    ((SECONDS < deadline)) || { tail -20 "$WORK/agent/agent.log" >&2; echo "the WAL archive did not start" >&2; exit 1; }
    sleep 0.5
done

# wait_job JOB MAX_SECONDS: until the job succeeded; shows why and exits otherwise.
wait_job() {
    local state deadline=$((SECONDS + $2))
    while :; do
        state=$(cpsql "select state from job where job_id = $1")
        case $state in
            SUCCEEDED) return ;;
            FAILED | CANCELLED | LOST)
                cpsql "select coalesce(error_step, '') || ': ' || coalesce(error_message, '') from clone where job_id = $1
                       union all select error_step || ': ' || error_message from backup_catalog where job_id = $1" >&2
                tail -20 "$WORK/agent/agent.log" >&2
                echo "job $1: $state" >&2; exit 1 ;;
        esac
        ((SECONDS < deadline)) || { tail -20 "$WORK/agent/agent.log" >&2; echo "job $1 did not finish in $2 s" >&2; exit 1; }
        sleep 0.1
    done
}

log "base backup (BASEBACKUP definition $DEF_ID, run by the agent)"
pgb -C "run_backup_definition_now $DEF_ID" >/dev/null
job=$(cpsql "select max(job_id) from job where def_id = $DEF_ID")
wait_job "$job" 3600
BCK=$(cpsql "select bck_id from backup_catalog where job_id = $job")
BASE_TAR=$(find "$WORK/agent/backups" -name base.tar.zst -path "*$BCK*" | head -1)
[[ -f $BASE_TAR ]] || BASE_TAR=$(find "$WORK/agent/backups" -name base.tar.zst | head -1)
[[ -f $BASE_TAR ]] || { echo "base.tar.zst of BckID $BCK not found under $WORK/agent/backups" >&2; exit 1; }
log "BckID $BCK: $BASE_TAR ($(mb "$(stat -c %s "$BASE_TAR")") MB)"

log "pgbench for $PGBENCH_SECONDS s (2 clients)"
WAL0=$(psql -X -At "${NODE_CONN[@]}" -d postgres -c "select pg_current_wal_lsn()")
"$PGBIN/pgbench" -n -c 2 -j 2 -T "$PGBENCH_SECONDS" "${NODE_CONN[@]}" "$DB" >"$WORK/pgbench.out" 2>&1
TPS=$(awk '/^tps/ {printf "%.0f", $3; exit}' "$WORK/pgbench.out")
TARGET=$(psql -X -At "${NODE_CONN[@]}" -d postgres -c "select clock_timestamp()")
# Rows at the target, to check both restores reached it.
HIST=$(psql -X -At "${NODE_CONN[@]}" -d "$DB" -c "select count(*) from pgbench_history")
WAL1=$(psql -X -At "${NODE_CONN[@]}" -d postgres -c "select pg_current_wal_lsn()")
WAL_BYTES=$(psql -X -At "${NODE_CONN[@]}" -d postgres -c "select pg_wal_lsn_diff('$WAL1', '$WAL0')")
# A little more after the target, then switch: the segment holding the target is archived and
# the recovery finds a commit after the target (where it stops).
sleep 1
psql -X -q "${NODE_CONN[@]}" -d "$DB" -c "insert into pgbench_history (tid, bid, aid, delta, mtime) values (1, 1, 1, 0, now())" >/dev/null
SWITCH=$(psql -X -At "${NODE_CONN[@]}" -d postgres -c "select pg_walfile_name(pg_switch_wal())")
log "target $TARGET ($TPS tps, $(mb "$WAL_BYTES") MB of WAL after the backup, pgbench_history $HIST rows); waiting for $SWITCH in the ledger"
deadline=$((SECONDS + 300))
DRY="register_pitr_restore $BCK --clone dry --target-time '$TARGET' --dry-run"
until pgb -C "$DRY" >"$WORK/plan.txt" 2>&1; do
    ((SECONDS < deadline)) || { cat "$WORK/plan.txt" >&2; echo "the target never became restorable" >&2; exit 1; }
    sleep 0.5
done
ARCHIVE_TLI=$(dirname "$(find "$WORK/agent/backups" -path '*/wal/node*' -name "$SWITCH.zst" | head -1)")
[[ -d $ARCHIVE_TLI ]] || { echo "the archive directory holding $SWITCH.zst was not found" >&2; exit 1; }
SEGS=$(find "$ARCHIVE_TLI" -name '*.zst' | wc -l)
ARCHIVE_BYTES=$(du -sb "$ARCHIVE_TLI" | cut -f1)
log "archive: $ARCHIVE_TLI ($SEGS files, $(mb "$ARCHIVE_BYTES") MB compressed)"

run_pgbackman() { # sets W (wall seconds) and PH (phases, json); not in a subshell, so a failure exits
    local name=$1 port id job
    port=$(free_port)
    CLUSTERS+=("$WORK/agent/backups/clones/$name/data")
    pgb -C "register_pitr_restore $BCK --clone $name --port $port --target-time '$TARGET' --target-action promote" >"$WORK/$name.out"
    id=$(cpsql "select clone_id from clone where name = '$name' and state <> 'DELETED'")
    job=$(cpsql "select job_id from clone where clone_id = $id")
    wait_job "$job" 3600
    [[ $(cpsql "select state from clone where clone_id = $id") == RUNNING ]] || { cpsql "select * from clone where clone_id = $id" >&2; exit 1; }
    local rows
    rows=$(psql -X -At -h "$WORK/agent/backups/clones/$name" -p "$port" -U postgres -d "$DB" -c "select count(*) from pgbench_history")
    [[ $rows == "$HIST" ]] || { echo "clone $name has $rows rows in pgbench_history, the target $HIST" >&2; exit 1; }
    W=$(cpsql "select round(extract(epoch from finished_at - claimed_at)::numeric, 3) from job where job_id = $job")
    PH=$(cpsql "select phase_timings::text from clone where clone_id = $id" | tr -d ' ')
    pgb -C "delete_clone $id" >/dev/null
    local deadline=$((SECONDS + 120))
    until [[ $(cpsql "select state from clone where clone_id = $id") == DELETED ]]; do
        ((SECONDS < deadline)) || { echo "clone $name was not deleted" >&2; exit 1; }
        sleep 0.2
    done
}

run_hand() { # sets W (wall), E (extract) and R (start, recovery, promote), in seconds
    local d=$WORK/hand/$1 port t0 t1 t2 rows
    port=$(free_port)
    CLUSTERS+=("$d")
    as_pg mkdir -m 700 "$d"
    t0=$(now)
    zstd -d -q <"$BASE_TAR" | as_pg tar -x -C "$d"
    as_pg mkdir -p -m 700 "$d/pg_wal"
    as_pg tee -a "$d/postgresql.auto.conf" >/dev/null <<CONF
restore_command = 'zstd -d -q -f -o %p $ARCHIVE_TLI/%f.zst'
recovery_target_time = '$TARGET'
recovery_target_action = 'promote'
archive_mode = off
primary_conninfo = ''
port = $port
listen_addresses = ''
unix_socket_directories = '$d'
CONF
    as_pg touch "$d/recovery.signal"
    t1=$(now)
    as_pg "$PGBIN/pg_ctl" -D "$d" -l "$WORK/hand-$1.log" -w -t 3600 start >/dev/null
    until [[ $(psql -X -At -h "$d" -p "$port" -U postgres -d postgres -c "select pg_is_in_recovery()" 2>/dev/null) == f ]]; do
        sleep 0.05
    done
    t2=$(now)
    rows=$(psql -X -At -h "$d" -p "$port" -U postgres -d "$DB" -c "select count(*) from pgbench_history")
    [[ $rows == "$HIST" ]] || { echo "hand restore $1 has $rows rows in pgbench_history, the target $HIST" >&2; exit 1; }
    as_pg "$PGBIN/pg_ctl" -D "$d" -m immediate -w stop >/dev/null
    rm -rf "$d"
    read -r W E R <<<"$(awk -v a="$t0" -v b="$t1" -v c="$t2" 'BEGIN{printf "%.3f %.3f %.3f", c-a, b-a, c-b}')"
}

log "warm-up: base.tar.zst and the archive read once (page cache)"
cat "$BASE_TAR" "$ARCHIVE_TLI"/*.zst >/dev/null

A_WALL=() A_PH=() H_WALL=() H_EXT=() H_REC=() LOADS=()
for i in $(seq "$ROUNDS"); do
    order=(a h); ((i % 2 == 0)) && order=(h a)
    for m in "${order[@]}"; do
        if [[ $m == a ]]; then
            run_pgbackman "r$i"
            A_WALL+=("$W") A_PH+=("$PH")
            log "round $i/$ROUNDS pgbackman clone: ${W}s  phases $PH"
        else
            run_hand "r$i"
            H_WALL+=("$W") H_EXT+=("$E") H_REC+=("$R")
            log "round $i/$ROUNDS by hand: ${W}s (extract ${E}s, start+recovery+promote ${R}s)"
        fi
    done
    LOADS+=("$(cut -d' ' -f1-3 /proc/loadavg)")
done

am=$(printf '%s\n' "${A_WALL[@]}" | median)
hm=$(printf '%s\n' "${H_WALL[@]}" | median)
r=$(ratio "$am" "$hm")

echo
echo "PITR of the reference database, scale $SCALE ($(mb "$DBSIZE") MB on disk before pgbench -i -s $PGBENCH_SCALE), to the end of $PGBENCH_SECONDS s of pgbench after the base backup"
echo "  $TPS tps, $(mb "$WAL_BYTES") MB of WAL after the base backup; archive $SEGS files, $(mb "$ARCHIVE_BYTES") MB zstd; base.tar.zst $(mb "$(stat -c %s "$BASE_TAR")") MB"
echo "build: $BUILD; host: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GB", $2/1048576}' /proc/meminfo); load avg after each round: ${LOADS[*]}"
printf '%-62s %10s   %s\n' "method ($ROUNDS rounds, median)" "wall (s)" "runs (s)"
printf '%-62s %10.2f   %s\n' "pgbackman clone (job claimed -> finished)" "$am" "${A_WALL[*]}"
printf '%-62s %10.2f   %s\n' "by hand (zstd -d | tar -x; restore_command zstd -d; promoted)" "$hm" "${H_WALL[*]}"
printf '%-62s %10.2f   %s\n' "  of which extract" "$(printf '%s\n' "${H_EXT[@]}" | median)" "${H_EXT[*]}"
printf '%-62s %10.2f   %s\n' "  of which start, recovery, promote" "$(printf '%s\n' "${H_REC[@]}" | median)" "${H_REC[*]}"
echo "pgbackman phases (s), each round:"
for p in "${A_PH[@]}"; do echo "  $p"; done
echo
printf 'wall  pgbackman / by hand = %s   (target <= 1.10)  %s\n' "$r" "$(verdict "$r" 1.10)"
