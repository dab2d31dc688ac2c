#!/usr/bin/env bash
# Whole-process benchmark: restore of the reference database (../shared/bench/reference-db.sql)
#   (a) pgbackman, auto feed: `register_restore_definition now BCK NODE DB "" --jobs J --reuse-roles all`
#       run by a real pgbackman-agent from its FULL set (custom dump, zstd): roles.sql,
#       database.sql, then pg_restore --exit-on-error -j J from the dump decompressed into the
#       staging area (what --decompression auto chooses with J > 1 and room on disk),
#       wall = job.finished_at - job.claimed_at (checksums verified first, undo-ready);
#   (b) pgbackman, stream feed: the same with --decompression stream (zstd decoded in-process
#       into pg_restore's stdin; serial, no disk);
#   (b') pgbackman, tee feed: --decompression tee --jobs J (pre-data streamed; data streamed
#       while the staging file is written, the rows of a table holding half of the rows or more
#       dealt out over J concurrent COPYs; then post-data with -j J from the file). On the
#       reference database auto chooses tee, so (a) and (b') run the same code;
#   (c) PgBackMan's serial restore (reference §5.5) of a `pg_dump -Fc` set (untimed): `CREATE
#       DATABASE` then `pg_restore -d DB set` without -j, wall = date before/after;
#   (d) the same from PgBackMan's actual FULL set of reference §4.2, `pg_dump --format=d --blobs`
#       (directory format, gzip by pg_dump), restored serially as §5.5 does;
#   (e) the machine's limit: two of (c) at once into two databases. A restore of one database
#       does the same work (rows parsed, indexes built) however it is parallelised, so on this
#       machine its ratio to (c) cannot go below wall(e) / (2 x wall(c)).
# Each method's CPU seconds (whole machine, from /proc/stat) are shown next to its wall time.
# Each restored database is dropped before the next run. Each is repeated REPS times
# (interleaved) and the median is reported. Nothing here fails on a number: PASS/MISS compares
# with the target (pgbackman / PgBackMan <= 0.6, against (c) and, for information, (d)).
#
# Usage: bench/restore.sh [scale]        (scale of reference-db.sql, default 4, about 1.4 GB)
#   env: BIN_DIR=DIR uses pgbackman and pgbackman-agent from DIR instead of building the tree;
#        REPS (default 1), JOBS (pg_restore -j of pgbackman, default: the number of cores),
#        REFDB=FILE, KEEP=1 keeps the work directory.
# Runs as root (servers then run as the postgres OS user) or as an ordinary user.
set -euo pipefail
shopt -s inherit_errexit

SCALE=${1:-4}
REPS=${REPS:-1}
JOBS=${JOBS:-$(nproc)}
[[ $SCALE =~ ^[0-9]+$ && $SCALE -ge 1 ]] || { echo "usage: $0 [scale>=1]" >&2; exit 2; }
[[ $REPS =~ ^[0-9]+$ && $REPS -ge 1 ]] || { echo "REPS must be a positive integer" >&2; exit 2; }
[[ $JOBS =~ ^[0-9]+$ && $JOBS -ge 1 ]] || { echo "JOBS must be a positive integer" >&2; exit 2; }

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
REFDB=${REFDB:-$ROOT/../shared/bench/reference-db.sql}
[[ -f $REFDB ]] || REFDB=/work/shared/bench/reference-db.sql
[[ -f $REFDB ]] || { echo "reference-db.sql not found: set REFDB" >&2; exit 2; }
PGBIN=/usr/lib/postgresql/15/bin
NODE_ADDR=127.0.0.2
SERVER=bench.example.org
DB=bench
WORK=/var/tmp/pgbackman-bench-$$
# shellcheck source=bench/lib.sh
source "$(dirname "$0")/lib.sh"

# CPU seconds used by the whole machine so far (every process, user + system), from /proc/stat.
cpu_now() { awk -v hz="$(getconf CLK_TCK)" '/^cpu / {printf "%.2f", ($2 + $3 + $4 + $7 + $8 + $9) / hz; exit}' /proc/stat; }

# ---- build -------------------------------------------------------------------------------------
pick_binaries

make_work orig

start_catalog_and_node "$BENCH_NODE_CONF"
npsql() { psql -X -q -At -v ON_ERROR_STOP=1 "${NODE_CONN[@]}" -d postgres -c "$1"; }

build_reference_db

# ---- catalog, registrations, agent, the two sets -------------------------------------------------
register_site
register_full_definition

start_agent "$PGBIN"
sleep 1

wait_job() { # JOB: waits until it ends; fails unless SUCCEEDED
    local job=$1 state deadline=$((SECONDS + 3600))
    while :; do
        state=$(cpsql "select state from job where job_id = $job")
        case $state in
            SUCCEEDED) return 0 ;;
            FAILED | CANCELLED | LOST)
                cpsql "select job_id, kind, state, error_message from job where job_id = $job" >&2
                cpsql "select error_step, error_message, error_stderr_tail from restore_catalog where job_id = $job" >&2
                tail -20 "$WORK/agent/agent.log" >&2
                exit 1 ;;
        esac
        ((SECONDS < deadline)) || { echo "job $job did not finish within an hour" >&2; exit 1; }
        # Wall time comes from the job row, so a slow poll costs no precision; a fast one
        # would take CPU from the restore being measured (a psql and a backend each time).
        sleep 1
    done
}

log "pgbackman FULL backup (the set pgbackman restores)"
pgb -C "run_backup_definition_now $DEF_ID" >/dev/null
wait_job "$(cpsql "select max(job_id) from job where def_id = $DEF_ID")"
BCK=$(cpsql "select max(bck_id) from backup_catalog where execution_status = 'SUCCEEDED'")
BSIZE=$(cpsql "select total_size from backup_catalog where bck_id = $BCK")
log "BckID $BCK: $(mb "$BSIZE") MB"
log "PgBackMan's FULL set: pg_dump -Fc (default compression)"
timeout 3600 "$PGBIN/pg_dump" "${NODE_CONN[@]}" -Fc -f "$WORK/orig/$DB.dump" "$DB"
OSIZE=$(stat -c %s "$WORK/orig/$DB.dump")
log "PgBackMan -Fc set: $(mb "$OSIZE") MB"
timeout 3600 "$PGBIN/pg_dump" "${NODE_CONN[@]}" --format=d --blobs -f "$WORK/orig/$DB.dir" "$DB"
DSIZE=$(du -sb "$WORK/orig/$DB.dir" | cut -f1)
log "PgBackMan FULL set (-Fd --blobs): $(mb "$DSIZE") MB"

# ---- the three restores --------------------------------------------------------------------------
run_pgbackman() { # NAME EXTRA_OPTIONS: prints "wall_seconds restore_id cpu_seconds"
    local name=$1 opts=$2 def job c0
    c0=$(cpu_now)
    pgb -C "register_restore_definition now $BCK $NODE_ADDR $name \"\" --reuse-roles all $opts" >/dev/null
    def=$(cpsql "select max(restore_def) from restore_definition")
    job=$(cpsql "select job_id from job where restore_def = $def")
    wait_job "$job"
    cpsql "select extract(epoch from j.finished_at - j.claimed_at), r.restore_id
             from job j join restore_catalog r using (job_id) where j.job_id = $job" | tr '|' ' ' | tr -d '\n'
    awk -v a="$c0" -v b="$(cpu_now)" 'BEGIN{printf " %.1f\n", b-a}'
}

original_restore() { # NAME SET: CREATE DATABASE, then a serial pg_restore (reference §5.5)
    npsql "create database $1"
    timeout 3600 "$PGBIN/pg_restore" "${NODE_CONN[@]}" -d "$1" "$2" 2>"$WORK/orig/restore-$1.log" ||
        { tail -20 "$WORK/orig/restore-$1.log" >&2; exit 1; }
}

run_pgbackman_original() { # NAME SET: prints "wall_seconds cpu_seconds"
    local name=$1 set=$2 t0 t1 c0
    c0=$(cpu_now)
    t0=$(now)
    original_restore "$name" "$set"
    t1=$(now)
    awk -v a="$t0" -v b="$t1" -v c="$c0" -v d="$(cpu_now)" 'BEGIN{printf "%.3f %.1f", b-a, d-c}'
}

# The machine's own limit: two of PgBackMan's serial restores at once, each into its own
# database. If two take T2 and one takes T1, no restore of one database can beat T1 by more
# than 2*T1/T2 on this machine, whatever it parallelises (the same rows are parsed and the
# same indexes built): the best ratio reachable here is T2 / (2*T1). Prints "wall_seconds".
run_two_at_once() { # NAME SET
    local name=$1 set=$2 t0 t1 p1 p2
    t0=$(now)
    original_restore "${name}_a" "$set" & p1=$!
    original_restore "${name}_b" "$set" & p2=$!
    wait "$p1" && wait "$p2"
    t1=$(now)
    awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.3f", b-a}'
}

drop() { npsql "drop database if exists $1 with (force)"; }

A_WALL=() B_WALL=() T_WALL=() F_WALL=() C_WALL=() D_WALL=() E_WALL=() RID_A= RID_B= RID_T= RID_F=
A_CPU=() B_CPU=() T_CPU=() F_CPU=() C_CPU=() D_CPU=()
for i in $(seq "$REPS"); do
    read -r w RID_A c <<<"$(run_pgbackman "r_auto_$i" "--jobs $JOBS")"
    A_WALL+=("$w") A_CPU+=("$c")
    log "rep $i/$REPS pgbackman auto (-j $JOBS, $(cpsql "select flags ->> 'feed' from restore_catalog where restore_id = $RID_A")): ${w}s"
    drop "r_auto_$i"
    read -r w RID_B c <<<"$(run_pgbackman "r_stream_$i" "--decompression stream")"
    B_WALL+=("$w") B_CPU+=("$c")
    log "rep $i/$REPS pgbackman stream: ${w}s"
    drop "r_stream_$i"
    read -r w RID_F c <<<"$(run_pgbackman "r_file_$i" "--jobs $JOBS --decompression file")"
    F_WALL+=("$w") F_CPU+=("$c")
    log "rep $i/$REPS pgbackman file (-j $JOBS): ${w}s"
    drop "r_file_$i"
    read -r w RID_T c <<<"$(run_pgbackman "r_tee_$i" "--jobs $JOBS --decompression tee")"
    T_WALL+=("$w") T_CPU+=("$c")
    log "rep $i/$REPS pgbackman tee (-j $JOBS for post-data): ${w}s"
    drop "r_tee_$i"
    read -r w c <<<"$(run_pgbackman_original "r_orig_$i" "$WORK/orig/$DB.dump")"
    C_WALL+=("$w") C_CPU+=("$c")
    log "rep $i/$REPS PgBackMan serial pg_restore of -Fc: ${w}s"
    drop "r_orig_$i"
    read -r w c <<<"$(run_pgbackman_original "r_origd_$i" "$WORK/orig/$DB.dir")"
    D_WALL+=("$w") D_CPU+=("$c")
    log "rep $i/$REPS PgBackMan serial pg_restore of -Fd: ${w}s"
    drop "r_origd_$i"
    w=$(run_two_at_once "r_two_$i" "$WORK/orig/$DB.dump")
    E_WALL+=("$w")
    log "rep $i/$REPS two PgBackMan -Fc restores at once: ${w}s"
    drop "r_two_${i}_a"
    drop "r_two_${i}_b"
done

am=$(printf '%s\n' "${A_WALL[@]}" | median)
bm=$(printf '%s\n' "${B_WALL[@]}" | median)
tm=$(printf '%s\n' "${T_WALL[@]}" | median)
fm=$(printf '%s\n' "${F_WALL[@]}" | median)
cm=$(printf '%s\n' "${C_WALL[@]}" | median)
dm=$(printf '%s\n' "${D_WALL[@]}" | median)
em=$(printf '%s\n' "${E_WALL[@]}" | median)
floor=$(awk -v e="$em" -v c="$cm" 'BEGIN { if (c > 0) printf "%.3f", e / (2 * c); else print "nan" }')
r1=$(ratio "$am" "$cm")
r2=$(ratio "$bm" "$cm")
r3=$(ratio "$am" "$dm")
r4=$(ratio "$tm" "$cm")
r5=$(ratio "$fm" "$cm")

echo
echo "restore of the reference database, scale $SCALE ($(mb "$DBSIZE") MB on disk), $REPS run(s) each, median"
echo "build: $BUILD; host: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GB", $2/1048576}' /proc/meminfo), load avg $(cut -d' ' -f1-3 /proc/loadavg)"
echo "sets: pgbackman BckID $BCK $(mb "$BSIZE") MB (custom, zstd); pg_dump -Fc $(mb "$OSIZE") MB; PgBackMan FULL -Fd $(mb "$DSIZE") MB"
cpum() { printf '%s\n' "$@" | median; }
printf '%-58s %10s %9s   %s\n' "method" "wall (s)" "cpu (s)" "runs (s)"
printf '%-58s %10.2f %9.1f   %s\n' "pgbackman --jobs $JOBS (auto feed; job claimed -> finished)" "$am" "$(cpum "${A_CPU[@]}")" "${A_WALL[*]}"
printf '%-58s %10.2f %9.1f   %s\n' "pgbackman --decompression stream (serial)" "$bm" "$(cpum "${B_CPU[@]}")" "${B_WALL[*]}"
printf '%-58s %10.2f %9.1f   %s\n' "pgbackman --decompression file --jobs $JOBS" "$fm" "$(cpum "${F_CPU[@]}")" "${F_WALL[*]}"
printf '%-58s %10.2f %9.1f   %s\n' "pgbackman --decompression tee --jobs $JOBS" "$tm" "$(cpum "${T_CPU[@]}")" "${T_WALL[*]}"
printf '%-58s %10.2f %9.1f   %s\n' "PgBackMan, -Fc set (CREATE DATABASE + pg_restore, no -j)" "$cm" "$(cpum "${C_CPU[@]}")" "${C_WALL[*]}"
printf '%-58s %10.2f %9.1f   %s\n' "PgBackMan, its FULL -Fd set (same, serial)" "$dm" "$(cpum "${D_CPU[@]}")" "${D_WALL[*]}"
printf '%-58s %10.2f %9s   %s\n' "two PgBackMan -Fc restores at once (the machine's limit)" "$em" "" "${E_WALL[*]}"
echo "cpu: CPU seconds of the whole machine during the run (every process), from /proc/stat"
echo
printf 'limit two at once / (2 x PgBackMan -Fc) = %s   (the best ratio any restore can reach on this machine)\n' "$floor"
printf 'wall  pgbackman auto   / PgBackMan -Fc = %s   (target <= 0.60)  %s\n' "$r1" "$(verdict "$r1" 0.60)"
printf 'wall  pgbackman auto   / PgBackMan -Fd = %s   (its actual FULL set, for information)\n' "$r3"
printf 'wall  pgbackman stream / PgBackMan -Fc = %s   (no target: the serial feed, for the choice)\n' "$r2"
printf 'wall  pgbackman file   / PgBackMan -Fc = %s   (no target: the file feed, for the choice)\n' "$r5"
printf 'wall  pgbackman tee    / PgBackMan -Fc = %s   (no target: the tee feed, for the choice)\n' "$r4"
echo
for rid in $RID_A $RID_B $RID_F $RID_T; do
    echo "phase timings of RestoreID $rid ($(cpsql "select flags ->> 'feed' from restore_catalog where restore_id = $rid") feed, seconds):"
    cpsql "select string_agg(format('  %-12s %s', key, round(value::numeric, 3)), E'\n') from restore_catalog, jsonb_each_text(phase_timings) where restore_id = $rid"
done
