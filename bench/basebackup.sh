#!/usr/bin/env bash
# Whole-process benchmark: one base backup of the reference database (../shared/bench/reference-db.sql)
#   (a) pgbackman: `pgbackman -C "run_backup_definition_now N"` of a BASEBACKUP definition, run by
#       a real pgbackman-agent that also keeps the node's WAL archive (so pg_basebackup runs with
#       -X none and the job ends once the backup's WAL is in the ledger); the tar is read in
#       flight (SHA-256 of every member against backup_manifest), zstd (level $LEVEL) and sha256 into the set;
#       wall = job.finished_at - job.claimed_at, size = backup_catalog.total_size;
#   (b) the ceiling: pg_basebackup -D - -Ft -X none --checkpoint=fast > /dev/null;
#   (c) the peers' gzip default: pg_basebackup -D DIR -Ft -z --checkpoint=fast (WAL streamed into
#       pg_wal.tar.gz beside base.tar.gz), size = du -sb DIR (base.tar.gz alone shown too);
#   (d) for reference only (no target): pg_basebackup -D - -Ft -X none | zstd -$LEVEL -T2 > file, what
#       compression alone costs on this machine. The agent's CPU time per backup is shown too.
# Each is repeated REPS times (interleaved) and the median is reported. Nothing here fails on a
# number: PASS/MISS lines compare with issue 11's targets (wall <= 1.3 x ceiling, size <= gzip).
#
# Usage: bench/basebackup.sh [scale]     (scale of reference-db.sql, default 4, about 1.4 GB)
#   env: BIN_DIR=DIR uses pgbackman and pgbackman-agent from DIR instead of building the tree;
#        REPS (default 3), KEEP=1 keeps the work directory for inspection, LEVEL (default 3) is
#        the zstd level of the definition (--compression-level) and of the reference pipe (d),
#        GZIP_REPS (default REPS) runs (c) in the first GZIP_REPS rounds only (its minute a round).
# Runs as root (servers then run as the postgres OS user) or as an ordinary user.
set -euo pipefail
shopt -s inherit_errexit

SCALE=${1:-4}
REPS=${REPS:-3}
LEVEL=${LEVEL:-3}
GZIP_REPS=${GZIP_REPS:-$REPS}
[[ $SCALE =~ ^[0-9]+$ && $SCALE -ge 1 ]] || { echo "usage: $0 [scale>=1]" >&2; exit 2; }
[[ $REPS =~ ^[0-9]+$ && $REPS -ge 1 ]] || { echo "REPS must be a positive integer" >&2; exit 2; }
[[ $LEVEL =~ ^[0-9]+$ && $LEVEL -ge 1 && $LEVEL -le 19 ]] || { echo "LEVEL must be 1 to 19" >&2; exit 2; }

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
pick_binaries

make_work

CPORT=$(free_port)
NPORT=$(free_port)
log "catalog cluster (unix socket, port $CPORT); node cluster on $NODE_ADDR:$NPORT"
start_cluster catalog "" "$CPORT"
start_cluster node "$NODE_ADDR" "$NPORT" "$BENCH_NODE_CONF"
# Replication connections (pg_basebackup, pg_receivewal) from loopback.
echo "host replication all 127.0.0.0/8 trust" | as_pg tee -a "$WORK/node/pg_hba.conf" >/dev/null
as_pg "$PGBIN/pg_ctl" -D "$WORK/node" reload >/dev/null

CATALOG="host=$WORK/sock port=$CPORT dbname=pgbackman user=postgres"
NODE_CONN=(-h "$NODE_ADDR" -p "$NPORT" -U postgres)

build_reference_db

# ---- catalog, WAL archive, definition, agent -----------------------------------------------------
register_site
pgb -C "register_wal_archive $SERVER $NODE_ADDR" >/dev/null
h=$(( ($(date -u +%-H) + 12) % 24 ))
pgb -C "register_backup_definition $SERVER $NODE_ADDR \"\" \"\" 0 $h \"*\" \"*\" \"*\" BASEBACKUP false \"7 days\" 1 \"\" ACTIVE bench --checkpoint fast --compression-level $LEVEL" >/dev/null
DEF_ID=$(cpsql "select max(def_id) from backup_definition")
start_agent "$PGBIN"
deadline=$((SECONDS + 60))
until [[ $(psql -X -At "${NODE_CONN[@]}" -d postgres -c "select count(*) from pg_replication_slots where active") == 1 ]]; do
    ((SECONDS < deadline)) || { tail -20 "$WORK/agent/agent.log" >&2; echo "the WAL archive did not start" >&2; exit 1; }
    sleep 0.5
done

run_pgbackman() { # prints "wall_seconds total_size bck_id base_tar_bytes"
    pgb -C "run_backup_definition_now $DEF_ID" >/dev/null
    local job state deadline=$((SECONDS + 3600))
    job=$(cpsql "select max(job_id) from job where def_id = $DEF_ID")
    while :; do
        state=$(cpsql "select state from job where job_id = $job")
        case $state in
            SUCCEEDED) break ;;
            FAILED | CANCELLED | LOST)
                cpsql "select error_step, error_message, error_stderr_tail from backup_catalog where job_id = $job" >&2
                tail -20 "$WORK/agent/agent.log" >&2
                exit 1 ;;
        esac
        ((SECONDS < deadline)) || { echo "job $job did not finish within an hour" >&2; exit 1; }
        sleep 0.1
    done
    cpsql "select extract(epoch from j.finished_at - j.claimed_at), b.total_size, b.bck_id,
                  (select (f->>'size')::bigint from jsonb_array_elements(b.files) f where f->>'name' = 'base.tar.zst')
             from job j join backup_catalog b using (job_id) where j.job_id = $job" | tr '|' ' '
}

run_ceiling() { # prints "wall_seconds"
    local t0 t1
    t0=$(now)
    timeout 3600 "$PGBIN/pg_basebackup" "${NODE_CONN[@]}" -D - -Ft -X none --checkpoint=fast >/dev/null
    t1=$(now)
    awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.3f", b-a}'
}

run_gzip() { # prints "wall_seconds size_bytes base_tar_gz_bytes"
    local t0 t1 d=$WORK/gzip
    rm -rf "$d"
    t0=$(now)
    timeout 3600 "$PGBIN/pg_basebackup" "${NODE_CONN[@]}" -D "$d" -Ft -z --checkpoint=fast
    t1=$(now)
    echo "$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.3f", b-a}') $(du -sb "$d" | cut -f1) $(stat -c %s "$d/base.tar.gz")"
    rm -rf "$d"
}

run_zstd_pipe() { # prints "wall_seconds size_bytes"
    local t0 t1 f=$WORK/pipe.tar.zst
    t0=$(now)
    timeout 3600 "$PGBIN/pg_basebackup" "${NODE_CONN[@]}" -D - -Ft -X none --checkpoint=fast 2>/dev/null | zstd -q "-$LEVEL" -T2 >"$f"
    t1=$(now)
    echo "$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.3f", b-a}') $(stat -c %s "$f")"
    rm -f "$f"
}

agent_cpu() { sed -E 's/^.*\) //' "/proc/$AGENT_PID/stat" | awk -v t="$(getconf CLK_TCK)" '{printf "%.2f", ($12 + $13) / t}'; }

HAVE_ZSTD=0
command -v zstd >/dev/null && HAVE_ZSTD=1

log "warm-up: one untimed pg_basebackup to /dev/null (page cache)"
run_ceiling >/dev/null

A_WALL=() A_SIZE=() A_TAR=() A_CPU=() C_WALL=() G_WALL=() G_SIZE=() G_TAR=() D_WALL=() D_SIZE=() BCK=
for i in $(seq "$REPS"); do
    c0=$(agent_cpu)
    read -r w s BCK t <<<"$(run_pgbackman)"
    c1=$(agent_cpu)
    A_WALL+=("$w") A_SIZE+=("$s") A_TAR+=("$t") A_CPU+=("$(awk -v a="$c0" -v b="$c1" 'BEGIN{printf "%.2f", b-a}')")
    log "rep $i/$REPS pgbackman: ${w}s, $(mb "$s") MB (BckID $BCK, agent CPU ${A_CPU[-1]}s)"
    if ((HAVE_ZSTD)); then
        read -r w s <<<"$(run_zstd_pipe)"
        D_WALL+=("$w") D_SIZE+=("$s")
        log "rep $i/$REPS reference pg_basebackup | zstd -$LEVEL -T2: ${w}s, $(mb "$s") MB"
    fi
    w=$(run_ceiling)
    C_WALL+=("$w")
    log "rep $i/$REPS ceiling pg_basebackup -Ft -X none > /dev/null: ${w}s"
    if ((i <= GZIP_REPS)); then
        read -r w s t <<<"$(run_gzip)"
        G_WALL+=("$w") G_SIZE+=("$s") G_TAR+=("$t")
        log "rep $i/$REPS pg_basebackup -Ft -z: ${w}s, $(mb "$s") MB"
    fi
done

am=$(printf '%s\n' "${A_WALL[@]}" | median)
as=$(printf '%s\n' "${A_SIZE[@]}" | median)
at=$(printf '%s\n' "${A_TAR[@]}" | median)
cm=$(printf '%s\n' "${C_WALL[@]}" | median)
gm=$(printf '%s\n' "${G_WALL[@]}" | median)
gs=$(printf '%s\n' "${G_SIZE[@]}" | median)
gt=$(printf '%s\n' "${G_TAR[@]}" | median)
acpu=$(printf '%s\n' "${A_CPU[@]}" | median)
r1=$(ratio "$am" "$cm")
r2=$(ratio "$as" "$gs")

echo
echo "BASEBACKUP (zstd level $LEVEL) of the reference database, scale $SCALE ($(mb "$DBSIZE") MB on disk), $REPS runs each, median"
echo "build: $BUILD; host: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GB", $2/1048576}' /proc/meminfo), load avg $(cut -d' ' -f1-3 /proc/loadavg)"
printf '%-58s %10s %10s   %s\n' "method" "wall (s)" "size (MB)" "runs (s)"
printf '%-58s %10.2f %10s   %s\n' "pgbackman (job claimed -> finished, WAL in the ledger)" "$am" "$(mb "$as")" "${A_WALL[*]}"
printf '%-58s %10s %10s\n' "  of which base.tar.zst" "" "$(mb "$at")"
printf '%-58s %10.2f %10s   %s\n' "ceiling (pg_basebackup -D - -Ft -X none > /dev/null)" "$cm" "-" "${C_WALL[*]}"
printf '%-58s %10.2f %10s   %s\n' "pg_basebackup -Ft -z (base.tar.gz + pg_wal.tar.gz)" "$gm" "$(mb "$gs")" "${G_WALL[*]}"
printf '%-58s %10s %10s\n' "  of which base.tar.gz" "" "$(mb "$gt")"
if ((HAVE_ZSTD)); then
    printf '%-58s %10.2f %10s   %s\n' "reference: pg_basebackup -Ft -X none | zstd -$LEVEL -T2 > file" \
        "$(printf '%s\n' "${D_WALL[@]}" | median)" "$(mb "$(printf '%s\n' "${D_SIZE[@]}" | median)")" "${D_WALL[*]}"
fi
printf 'agent CPU per pgbackman backup (utime+stime): median %s s   runs: %s\n' "$acpu" "${A_CPU[*]}"
echo
printf 'wall  pgbackman / ceiling = %s   (target <= 1.30)  %s\n' "$r1" "$(verdict "$r1" 1.30)"
printf 'size  pgbackman / gzip    = %s   (target <= 1.00)  %s\n' "$r2" "$(verdict "$r2" 1.00)"
echo
echo "phase timings of the last pgbackman run (BckID $BCK, seconds):"
cpsql "select string_agg(format('  %s %s', key, round(value::numeric, 3)), E'\n') from backup_catalog, jsonb_each_text(phase_timings) where bck_id = $BCK"
