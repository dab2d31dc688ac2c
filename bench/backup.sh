#!/usr/bin/env bash
# Whole-process benchmark: one FULL backup of the reference database (../shared/bench/reference-db.sql)
#   (a) pgbackman: `pgbackman -C "run_backup_definition_now 1"` run by a real pgbackman-agent
#       (custom format, zstd streamed and hashed in-process, roles + database settings via SQL),
#       wall = job.finished_at - job.claimed_at, size = backup_catalog.total_size;
#   (b) PgBackMan's FULL: its exact command lines one after another (pg_dump --format=d --blobs
#       --verbose, then the USERS steps pg_dump -s -C + pg_dumpall -r twice, then the DBCONFIG step
#       pg_dumpall -s, with their filtering), wall = date before/after, size = du -sb of its outputs;
#   (c) the ceiling: pg_dump -Fc -Z0 DB > /dev/null;
#   (d) for reference only (no target): DESIGN.md §5's pipeline pg_dump -Fc -Z0 | zstd -3 -T2 > file,
#       i.e. what streaming compression costs on this machine without pgbackman around it.
# The agent's own CPU time per backup (utime+stime: zstd, sha256, supervision) is shown too.
# Each is repeated REPS times (interleaved) and the median is reported. Nothing here fails on a
# number: PASS/MISS lines compare with the targets of DESIGN.md §5/§7.
#
# Usage: bench/backup.sh [scale]        (scale of reference-db.sql, default 4, about 1.4 GB)
#   env: DATASET=jsonb uses bench/jsonb-db.sql instead (one table with a jsonb column holds ~95 %
#        of the bytes; scale 4 is about 1.1 GB), the shape where compression dominates the backup;
#        BIN_DIR=DIR uses pgbackman and pgbackman-agent from DIR instead of building the tree;
#        AB_BIN_DIR=DIR also runs each round's backup with the pgbackman-agent of DIR (a build from
#        before a change; the agent is restarted between the two) and prints the per-round ratios,
#        which the load of a shared machine blurs far less than a comparison of two runs;
#        NO_PGBACKMAN_ORIG=1 leaves out PgBackMan's FULL (the slowest row);
#        REPS (default 3), SHOW_DETAILS=1 also prints show_backup_details of the last backup,
#        KEEP=1 keeps the work directory for inspection.
# Runs as root (servers then run as the postgres OS user) or as an ordinary user.
set -euo pipefail
shopt -s inherit_errexit

SCALE=${1:-4}
REPS=${REPS:-3}
[[ $SCALE =~ ^[0-9]+$ && $SCALE -ge 1 ]] || { echo "usage: $0 [scale>=1]" >&2; exit 2; }
[[ $REPS =~ ^[0-9]+$ && $REPS -ge 1 ]] || { echo "REPS must be a positive integer" >&2; exit 2; }

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DATASET=${DATASET:-reference}
case $DATASET in
    reference) REFDB=${REFDB:-$ROOT/../shared/bench/reference-db.sql} ;;
    jsonb) REFDB=$ROOT/bench/jsonb-db.sql ;;
    *) echo "DATASET must be reference or jsonb" >&2; exit 2 ;;
esac
PGBIN=/usr/lib/postgresql/15/bin
NODE_ADDR=127.0.0.2
SERVER=bench.example.org
DB=bench
WORK=/var/tmp/pgbackman-bench-$$
# shellcheck source=bench/lib.sh
source "$(dirname "$0")/lib.sh"


# ---- build -------------------------------------------------------------------------------------
pick_binaries

make_work pgbackman-orig

start_catalog_and_node "$BENCH_NODE_CONF"

build_reference_db

# ---- catalog, registrations, agent ---------------------------------------------------------------
register_site
register_full_definition

start_agent "$PGBIN"
sleep 1

# ---- the three methods ---------------------------------------------------------------------------
run_pgbackman() { # prints "wall_seconds total_size bck_id"
    pgb -C "run_backup_definition_now $DEF_ID" >/dev/null
    local job state deadline=$((SECONDS + 3600))
    job=$(cpsql "select max(job_id) from job where def_id = $DEF_ID")
    while :; do
        state=$(cpsql "select state from job where job_id = $job")
        case $state in
            SUCCEEDED) break ;;
            FAILED | CANCELLED | LOST)
                cpsql "select job_id, state, error_message from job where job_id = $job" >&2
                cpsql "select error_step, error_message, error_stderr_tail from backup_catalog where job_id = $job" >&2
                tail -20 "$WORK/agent/agent.log" >&2
                exit 1 ;;
        esac
        ((SECONDS < deadline)) || { echo "job $job did not finish within an hour" >&2; exit 1; }
        sleep 0.2
    done
    cpsql "select extract(epoch from j.finished_at - j.claimed_at), b.total_size, b.bck_id,
                  extract(epoch from b.finished - b.started)
             from job j join backup_catalog b using (job_id) where j.job_id = $job" | tr '|' ' '
}

run_pgbackman_original() { # prints "wall_seconds size_bytes"
    local out=$WORK/pgbackman-orig/run$1 ts stem
    mkdir -p "$out/dump" "$out/log" "$out/tmp"
    ts=$(date +%Y%m%dT%H%M%S)
    stem="$DB-$NODE_ADDR-v15-defid$DEF_ID-cFULL-$ts"
    local dump=$out/dump/$stem-DATABASE.sql users=$out/dump/$stem-USERS.sql dbconfig=$out/dump/$stem-DBCONFIG.sql
    local dlog=$out/log/$stem-DATABASE.log ulog=$out/log/$stem-USERS.log clog=$out/log/$stem-DBCONFIG.log
    local t0 t1
    t0=$(now)
    # DATABASE: directory format, default (zlib) compression, serial.
    echo "$(date) pg_dump ${NODE_CONN[*]} --file=$dump --format=d --blobs --verbose $DB" >"$dlog"
    timeout 3600 "$PGBIN/pg_dump" "${NODE_CONN[@]}" --file="$dump" --format=d --blobs --verbose "$DB" >>"$dlog" 2>&1
    # USERS: schema of the database, roles twice, then the filtering into the USERS file.
    echo "$(date) pg_dump ${NODE_CONN[*]} -s -C --file=$out/tmp/t1 --verbose $DB" >"$ulog"
    timeout 3600 "$PGBIN/pg_dump" "${NODE_CONN[@]}" -s -C --file="$out/tmp/t1" --verbose "$DB" >>"$ulog" 2>&1
    timeout 600 "$PGBIN/pg_dumpall" "${NODE_CONN[@]}" -r --file="$out/tmp/t2" >>"$ulog" 2>&1
    timeout 600 "$PGBIN/pg_dumpall" "${NODE_CONN[@]}" -r --file="$out/tmp/t3" >>"$ulog" 2>&1
    {
        grep -oE ' OWNER TO [^ ;]+;' "$out/tmp/t1" | sed -E 's/ OWNER TO (.*);/\1/' || true
        grep -E '^GRANT .* TO [^ ;]+;$' "$out/tmp/t1" | sed -E 's/.* TO ([^ ;]+);$/\1/' || true
    } | { grep -vx PUBLIC || true; } | sort -u >"$out/tmp/roles"
    {
        echo "-- USERS of $DB@$NODE_ADDR"
        echo "BEGIN;"
        while read -r r; do
            grep -F -e " ROLE $r;" -e " ROLE $r " "$out/tmp/t3" || true
        done <"$out/tmp/roles"
        while read -r r; do
            grep -E "^GRANT .* TO $r GRANTED BY " "$out/tmp/t2" || true
        done <"$out/tmp/roles" | sort -u
        echo "COMMIT;"
    } >"$users"
    # DBCONFIG: schema of the whole cluster, filtered to the database's own lines.
    echo "$(date) pg_dumpall ${NODE_CONN[*]} -s --file=$out/tmp/t4" >"$clog"
    timeout 3600 "$PGBIN/pg_dumpall" "${NODE_CONN[@]}" -s --file="$out/tmp/t4" >>"$clog" 2>&1
    {
        echo "-- DBCONFIG of $DB@$NODE_ADDR"
        echo "BEGIN;"
        grep -E "CREATE DATABASE $DB |ALTER DATABASE $DB SET | ON DATABASE $DB " "$out/tmp/t4" || true
        echo "COMMIT;"
    } >"$dbconfig"
    t1=$(now)
    rm -rf "$out/tmp"
    echo "$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.3f", b-a}') $(du -sb "$out" | cut -f1)"
    rm -rf "$out"
}

run_zstd_pipe() { # prints "wall_seconds size_bytes"
    local t0 t1 f=$WORK/pipe.pgdump.zst
    t0=$(now)
    timeout 3600 "$PGBIN/pg_dump" "${NODE_CONN[@]}" -Fc -Z0 "$DB" | zstd -q -3 -T2 >"$f"
    t1=$(now)
    echo "$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.3f", b-a}') $(stat -c %s "$f")"
    rm -f "$f"
}

agent_cpu() { sed -E 's/^.*\) //' "/proc/$AGENT_PID/stat" | awk -v t="$(getconf CLK_TCK)" '{printf "%.2f", ($12 + $13) / t}'; }
# CPU seconds of a process: its own (utime+stime, fields 12-13 after "pid (comm) ") and/or that of
# its children it has reaped (cutime+cstime, 14-15). On a machine shared with other work the wall
# time of a CPU-bound backup mostly says how busy the machine was; the CPU spent does not.
cpu_of() { # pid, awk expression over $12..$15
    sed -E 's/^.*\) //' "/proc/$1/stat" | awk -v t="$(getconf CLK_TCK)" "{printf \"%.2f\", ($2) / t}"
}
node_server_cpu() { cpu_of "$(head -1 "$WORK/node/postmaster.pid")" '$14 + $15'; } # reaped backends
pgbackman_cpu() { # the agent with its reaped pg_dump, and the node's backends
    awk -v a="$(cpu_of "$AGENT_PID" '$12 + $13 + $14 + $15')" -v b="$(node_server_cpu)" 'BEGIN{printf "%.2f", a + b}'
}
pipe_cpu() { # this shell's reaped children (pg_dump and zstd), and the node's backends
    awk -v a="$(cpu_of $$ '$14 + $15')" -v b="$(node_server_cpu)" 'BEGIN{printf "%.2f", a + b}'
}

run_ceiling() { # prints "wall_seconds"
    local t0 t1
    t0=$(now)
    timeout 3600 "$PGBIN/pg_dump" "${NODE_CONN[@]}" -Fc -Z0 "$DB" >/dev/null
    t1=$(now)
    awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.3f", b-a}'
}

log "warm-up: one untimed pg_dump -Fc -Z0 (page cache)"
run_ceiling >/dev/null

HAVE_ZSTD=0
command -v zstd >/dev/null && HAVE_ZSTD=1
A_WALL=() A_SIZE=() A_DUR=() A_CPU=() A_ALL=() B_WALL=() B_SIZE=() C_WALL=() D_WALL=() D_SIZE=() D_ALL=() BCK=
delta() { awk -v a="$1" -v b="$2" 'BEGIN{printf "%.2f", b-a}'; }
AGENT_STARTS=0 AGENT_MAIN=$AGENT E_WALL=() E_ALL=()
switch_agent() { # restarts the agent with the binary $1
    kill -TERM "$AGENT_PID"
    wait "$AGENT_PID" 2>/dev/null || true
    mv "$WORK/agent/agent.log" "$WORK/agent/agent.log.$((++AGENT_STARTS))"
    AGENT=$1
    start_agent "$PGBIN"
    sleep 1
}
for i in $(seq "$REPS"); do
    c0=$(agent_cpu) t0=$(pgbackman_cpu)
    out=$(run_pgbackman)
    read -r w s BCK d <<<"$out"
    sleep 0.5 # the run's backends exit and are reaped
    c1=$(agent_cpu) t1=$(pgbackman_cpu)
    A_WALL+=("$w") A_SIZE+=("$s") A_DUR+=("$d") A_CPU+=("$(delta "$c0" "$c1")") A_ALL+=("$(delta "$t0" "$t1")")
    log "rep $i/$REPS pgbackman: ${w}s, $(mb "$s") MB (backup_catalog duration ${d}s, BckID $BCK, agent CPU ${A_CPU[-1]}s, with pg_dump and the node's backends ${A_ALL[-1]}s)"
    if [[ -n ${AB_BIN_DIR:-} ]]; then
        switch_agent "$AB_BIN_DIR/pgbackman-agent"
        t0=$(pgbackman_cpu)
        read -r w _ _ _ <<<"$(run_pgbackman)"
        sleep 0.5
        t1=$(pgbackman_cpu)
        E_WALL+=("$w") E_ALL+=("$(delta "$t0" "$t1")")
        log "rep $i/$REPS pgbackman of $AB_BIN_DIR: ${w}s, with pg_dump and the node's backends ${E_ALL[-1]}s"
        switch_agent "$AGENT_MAIN"
    fi
    if [[ -z ${NO_PGBACKMAN_ORIG:-} ]]; then
        out=$(run_pgbackman_original "$i")
        read -r w s <<<"$out"
        B_WALL+=("$w") B_SIZE+=("$s")
        log "rep $i/$REPS PgBackMan FULL: ${w}s, $(mb "$s") MB"
    fi
    w=$(run_ceiling)
    C_WALL+=("$w")
    log "rep $i/$REPS ceiling pg_dump -Fc -Z0 > /dev/null: ${w}s"
    if ((HAVE_ZSTD)); then
        t0=$(pipe_cpu)
        out=$(run_zstd_pipe)
        read -r w s <<<"$out"
        sleep 0.5
        t1=$(pipe_cpu)
        D_WALL+=("$w") D_SIZE+=("$s") D_ALL+=("$(delta "$t0" "$t1")")
        log "rep $i/$REPS reference pg_dump -Fc -Z0 | zstd -3 -T2: ${w}s, $(mb "$s") MB, CPU with the node's backends ${D_ALL[-1]}s"
    fi
done

am=$(printf '%s\n' "${A_WALL[@]}" | median)
ad=$(printf '%s\n' "${A_DUR[@]}" | median)
as=$(printf '%s\n' "${A_SIZE[@]}" | median)
bm=nan bs=nan
if ((${#B_WALL[@]})); then
    bm=$(printf '%s\n' "${B_WALL[@]}" | median)
    bs=$(printf '%s\n' "${B_SIZE[@]}" | median)
fi
cm=$(printf '%s\n' "${C_WALL[@]}" | median)
acpu=$(printf '%s\n' "${A_CPU[@]}" | median)
if ((HAVE_ZSTD)); then
    dm=$(printf '%s\n' "${D_WALL[@]}" | median)
    ds=$(printf '%s\n' "${D_SIZE[@]}" | median)
fi
r1=$(ratio "$am" "$bm")
r2=$(ratio "$am" "$cm")
r3=$(ratio "$as" "$bs")

echo
echo "FULL backup of the $DATASET database ($(basename "$REFDB")), scale $SCALE ($(mb "$DBSIZE") MB on disk), $REPS runs each, median"
echo "build: $BUILD; host: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GB", $2/1048576}' /proc/meminfo), load avg $(cut -d' ' -f1-3 /proc/loadavg)"
printf '%-50s %10s %10s   %s\n' "method" "wall (s)" "size (MB)" "runs (s)"
printf '%-50s %10.2f %10s   %s\n' "pgbackman (job claimed -> finished)" "$am" "$(mb "$as")" "${A_WALL[*]}"
printf '%-50s %10.2f %10s   %s\n' "  (backup_catalog started -> finished)" "$ad" "" "${A_DUR[*]}"
printf '%-50s %10.2f %10s   %s\n' "PgBackMan FULL (pg_dump -Fd + USERS + DBCONFIG)" "$bm" "$(mb "$bs")" "${B_WALL[*]}"
printf '%-50s %10.2f %10s   %s\n' "ceiling (pg_dump -Fc -Z0 > /dev/null)" "$cm" "-" "${C_WALL[*]}"
if ((HAVE_ZSTD)); then
    printf '%-50s %10.2f %10s   %s\n' "reference: pg_dump -Fc -Z0 | zstd -3 -T2 > file" "$dm" "$(mb "$ds")" "${D_WALL[*]}"
fi
printf 'agent CPU per pgbackman backup (utime+stime): median %s s   runs: %s\n' "$acpu" "${A_CPU[*]}"
printf 'CPU per backup with pg_dump and the node backends: pgbackman median %s s (runs: %s)\n' \
    "$(printf '%s\n' "${A_ALL[@]}" | median)" "${A_ALL[*]}"
if ((HAVE_ZSTD)); then
    printf '                                                   pipeline  median %s s (runs: %s)\n' \
        "$(printf '%s\n' "${D_ALL[@]}" | median)" "${D_ALL[*]}"
fi
echo
printf 'wall  pgbackman / PgBackMan  = %s   (target <= 0.35)  %s\n' "$r1" "$(verdict "$r1" 0.35)"
printf 'wall  pgbackman / ceiling    = %s   (target <= 1.30)  %s\n' "$r2" "$(verdict "$r2" 1.30)"
printf 'size  pgbackman / PgBackMan  = %s   (target <= 1.00)  %s\n' "$r3" "$(verdict "$r3" 1.00)"
if ((HAVE_ZSTD)); then
    r4=$(ratio "$am" "$dm")
    printf 'wall  pgbackman / (pg_dump | zstd -3 -T2) = %s   (target <= 1.05)  %s\n' "$r4" "$(verdict "$r4" 1.05)"
    printf '      the same, median of the per-round ratios = %s   (rounds: %s)\n' \
        "$(for i in "${!A_WALL[@]}"; do ratio "${A_WALL[$i]}" "${D_WALL[$i]}"; echo; done | median)" \
        "$(for i in "${!A_WALL[@]}"; do printf '%s ' "$(ratio "${A_WALL[$i]}" "${D_WALL[$i]}")"; done)"
    r5=$(ratio "$(printf '%s\n' "${A_ALL[@]}" | median)" "$(printf '%s\n' "${D_ALL[@]}" | median)")
    printf 'CPU   pgbackman / (pg_dump | zstd -3 -T2) = %s   (no target: what a loaded machine does not blur)\n' "$r5"
fi
if [[ -n ${AB_BIN_DIR:-} ]]; then
    echo
    echo "against the agent of $AB_BIN_DIR, in the same rounds (this build / that build):"
    printf '  wall: median of the per-round ratios %s   (rounds: %s; that build: %s)\n' \
        "$(for i in "${!A_WALL[@]}"; do ratio "${A_WALL[$i]}" "${E_WALL[$i]}"; echo; done | median)" \
        "$(for i in "${!A_WALL[@]}"; do printf '%s ' "$(ratio "${A_WALL[$i]}" "${E_WALL[$i]}")"; done)" "${E_WALL[*]}"
    printf '  CPU with pg_dump and the node backends: median of the per-round ratios %s   (rounds: %s; that build: %s)\n' \
        "$(for i in "${!A_ALL[@]}"; do ratio "${A_ALL[$i]}" "${E_ALL[$i]}"; echo; done | median)" \
        "$(for i in "${!A_ALL[@]}"; do printf '%s ' "$(ratio "${A_ALL[$i]}" "${E_ALL[$i]}")"; done)" "${E_ALL[*]}"
    if ((HAVE_ZSTD)); then
        printf '  that build / (pg_dump | zstd -3 -T2): median of the per-round ratios %s\n' \
            "$(for i in "${!E_WALL[@]}"; do ratio "${E_WALL[$i]}" "${D_WALL[$i]}"; echo; done | median)"
    fi
fi
echo
echo "phase timings of the last pgbackman run (BckID $BCK, from its manifest.json, seconds):"
MANIFEST=$(cpsql "select manifest_file from backup_catalog where bck_id = $BCK")
if [[ -n $MANIFEST && -f $MANIFEST ]] && command -v jq >/dev/null; then
    {
        jq -r '.phase_timings[] | "  \(.phase)\t\(.seconds * 1000 | round / 1000)"' "$MANIFEST"
        # Verification runs on the set in place, after its manifest: only the catalog has it.
        cpsql "select format('  verify%s%s', E'\t', round((phase_timings->>'verify')::numeric, 3)) from backup_catalog where bck_id = $BCK and phase_timings ? 'verify'"
    } | column -t
else
    cpsql "select string_agg(format('  %s %s', key, round(value::numeric, 3)), E'\n') from backup_catalog, jsonb_each_text(phase_timings) where bck_id = $BCK"
fi
if [[ ${SHOW_DETAILS:-0} == 1 ]]; then pgb -C "show_backup_details $BCK"; fi
