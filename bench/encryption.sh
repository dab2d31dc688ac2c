#!/usr/bin/env bash
# Whole-process benchmark: what encryption at rest costs a backup. One FULL backup of the
# reference database (../shared/bench/reference-db.sql) by a real pgbackman-agent, twice per
# repetition and interleaved:
#   (a) the baseline: a definition with encryption=false (pg_dump -> zstd -> sha256 -> file);
#   (b) the same database with encryption=KEY and an escrow key (pg_dump -> zstd -> age to two
#       recipients -> sha256 -> file).
# wall = job.finished_at - job.claimed_at; the agent's CPU time (utime+stime) per backup.
# The median of REPS is reported with the ratio (b)/(a); the issue's target for an encrypted
# backup is <= 1.15x an unencrypted one. Nothing fails on a number (PASS/MISS only).
#
# Usage: bench/encryption.sh [scale]      (scale of reference-db.sql, default 1, about 350 MB)
#   env: BIN_DIR=DIR uses pgbackman and pgbackman-agent from DIR instead of building the tree;
#        REPS (default 3); KEEP=1 keeps the work directory. Needs age-keygen (package age).
set -euo pipefail
shopt -s inherit_errexit

SCALE=${1:-1}
REPS=${REPS:-3}
[[ $SCALE =~ ^[0-9]+$ && $SCALE -ge 1 ]] || { echo "usage: $0 [scale>=1]" >&2; exit 2; }
[[ $REPS =~ ^[0-9]+$ && $REPS -ge 1 ]] || { echo "REPS must be a positive integer" >&2; exit 2; }
command -v age-keygen >/dev/null || { echo "age-keygen not found (apt-get install age)" >&2; exit 2; }

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
REFDB=${REFDB:-$ROOT/../shared/bench/reference-db.sql}
PGBIN=/usr/lib/postgresql/15/bin
NODE_ADDR=127.0.0.2
SERVER=bench.example.org
DB=bench
WORK=/var/tmp/pgbackman-bench-enc-$$
# shellcheck source=bench/lib.sh
source "$(dirname "$0")/lib.sh"

pick_binaries

make_work keys

start_catalog_and_node "$BENCH_NODE_CONF"
build_reference_db

register_site
register_full_definition
PLAIN_DEF=$DEF_ID
age-keygen -o "$WORK/keys/site.key" 2>/dev/null
age-keygen -o "$WORK/keys/vault.key" 2>/dev/null
pgb -C "register_encryption_key site $(age-keygen -y "$WORK/keys/site.key")" >/dev/null
pgb -C "register_encryption_key vault $(age-keygen -y "$WORK/keys/vault.key")" >/dev/null
pgb -C "update_backup_server_config $SERVER encryption_escrow_key=vault" >/dev/null
h=$(( ($(date -u +%-H) + 12) % 24 ))
pgb -C "register_backup_definition $SERVER $NODE_ADDR $DB \"\" 30 $h \"*\" \"*\" \"*\" FULL site \"7 days\" 1 \"\" ACTIVE bench" >/dev/null
ENC_DEF=$(cpsql "select max(def_id) from backup_definition")

start_agent "$PGBIN"
sleep 1

agent_cpu() { sed -E 's/^.*\) //' "/proc/$AGENT_PID/stat" | awk -v t="$(getconf CLK_TCK)" '{printf "%.2f", ($12 + $13) / t}'; }

run_def() { # DEF_ID -> "wall_seconds total_size bck_id"
    pgb -C "run_backup_definition_now $1" >/dev/null
    local job state deadline=$((SECONDS + 3600))
    job=$(cpsql "select max(job_id) from job where def_id = $1")
    while :; do
        state=$(cpsql "select state from job where job_id = $job")
        case $state in
            SUCCEEDED) break ;;
            FAILED | CANCELLED | LOST)
                cpsql "select error_step, error_message from backup_catalog where job_id = $job" >&2
                tail -20 "$WORK/agent/agent.log" >&2
                exit 1 ;;
        esac
        ((SECONDS < deadline)) || { echo "job $job did not finish within an hour" >&2; exit 1; }
        sleep 0.2
    done
    cpsql "select extract(epoch from j.finished_at - j.claimed_at), b.total_size, b.bck_id
             from job j join backup_catalog b using (job_id) where j.job_id = $job" | tr '|' ' '
    # Keep the disk small: the set itself is not needed once measured.
    rm -rf "$(cpsql "select backup_dir from backup_catalog where job_id = $job")"
}

log "warm-up: one untimed plain backup (page cache)"
run_def "$PLAIN_DEF" >/dev/null

P_WALL=() P_CPU=() E_WALL=() E_CPU=() P_SIZE= E_SIZE=
for i in $(seq "$REPS"); do
    for kind in plain enc; do
        def=$PLAIN_DEF
        [[ $kind == enc ]] && def=$ENC_DEF
        c0=$(agent_cpu)
        read -r w s _ <<<"$(run_def "$def")"
        c1=$(agent_cpu)
        cpu=$(awk -v a="$c0" -v b="$c1" 'BEGIN{printf "%.2f", b-a}')
        if [[ $kind == plain ]]; then P_WALL+=("$w") P_CPU+=("$cpu") P_SIZE=$s; else E_WALL+=("$w") E_CPU+=("$cpu") E_SIZE=$s; fi
        log "rep $i/$REPS $kind: ${w}s, $(mb "$s") MB, agent CPU ${cpu}s"
    done
done
pw=$(printf '%s\n' "${P_WALL[@]}" | median)
ew=$(printf '%s\n' "${E_WALL[@]}" | median)
pc=$(printf '%s\n' "${P_CPU[@]}" | median)
ec=$(printf '%s\n' "${E_CPU[@]}" | median)
r=$(ratio "$ew" "$pw")
echo
echo "encryption cost, reference database scale $SCALE ($(mb "$DBSIZE") MB on disk), $REPS reps, build $BUILD"
printf '  plain     (encryption=false)         wall %8.2f s  agent CPU %6.2f s  set %8.1f MB\n' "$pw" "$pc" "$(mb "$P_SIZE")"
printf '  encrypted (site key + escrow, age)   wall %8.2f s  agent CPU %6.2f s  set %8.1f MB\n' "$ew" "$ec" "$(mb "$E_SIZE")"
echo "  encrypted / plain wall: $r  (target <= 1.15: $(verdict "$r" 1.15))"
