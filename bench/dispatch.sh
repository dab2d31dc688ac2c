#!/usr/bin/env bash
# Whole-process benchmark: dispatch latency of an ad hoc job, "snapshot registered -> pg_dump running".
# A real pgbackman-agent is configured with a bin dir whose pg_dump is a wrapper that records the
# time it starts ($EPOCHREALTIME, no fork) and then execs the real pg_dump (`--version` passes
# straight through, unrecorded). Each run takes a timestamp, runs
#   pgbackman -C "register_snapshot_definition <srv> <node> <db> \"\" now"
# waits for the snapshot to finish, and computes latency = wrapper start - timestamp. The shell
# command's own duration is measured too. Nothing fails on a number: PASS/MISS against the target
# of DESIGN.md §7 (median <= 300 ms).
#
# Usage: bench/dispatch.sh [runs]        (default 20)
#   env: BIN_DIR=DIR uses pgbackman and pgbackman-agent from DIR instead of building the tree;
#        KEEP=1 keeps the work directory for inspection.
set -euo pipefail
shopt -s inherit_errexit

RUNS=${1:-20}
[[ $RUNS =~ ^[0-9]+$ && $RUNS -ge 1 ]] || { echo "usage: $0 [runs>=1]" >&2; exit 2; }

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PGBIN=/usr/lib/postgresql/15/bin
NODE_ADDR=127.0.0.2
SERVER=bench.example.org
DB=small
WORK=/var/tmp/pgbackman-bench-$$
# shellcheck source=bench/lib.sh
source "$(dirname "$0")/lib.sh"

ms() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", (b - a) * 1000 }'; }
# stats: reads numbers, prints "min median p90 max" (p90 = nearest rank)
stats() {
    sort -g | awk '{a[NR]=$1} END {
        if (NR == 0) { print "nan nan nan nan"; exit }
        med = (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2
        r = int(0.9 * NR + 0.999999); if (r < 1) r = 1
        printf "%.1f %.1f %.1f %.1f\n", a[1], med, a[r], a[NR] }'
}

pick_binaries

make_work bin starts

start_catalog_and_node

# A small database: two tables, a role, a few thousand rows.
psql -X -q -v ON_ERROR_STOP=1 "${NODE_CONN[@]}" -d postgres -c "create database $DB" >/dev/null
psql -X -q -v ON_ERROR_STOP=1 "${NODE_CONN[@]}" -d "$DB" >/dev/null <<'EOF'
create role small_owner;
create table t (id int primary key, v text);
alter table t owner to small_owner;
insert into t select g, md5(g::text) from generate_series(1, 5000) g;
create table u (id int primary key, t_id int references t, note text);
insert into u select g, 1 + g % 5000, repeat('x', g % 50) from generate_series(1, 5000) g;
EOF

# The client bin dir: pg_dump is the recording wrapper, the rest are the real programs.
for tool in pg_dumpall pg_restore psql; do ln -s "$PGBIN/$tool" "$WORK/bin/$tool"; done
cat >"$WORK/bin/pg_dump" <<EOF
#!/bin/bash
if [[ \${1:-} == --version || \${1:-} == -V ]]; then exec $PGBIN/pg_dump "\$@"; fi
echo "\$EPOCHREALTIME" > "$WORK/starts/\$\$"
exec $PGBIN/pg_dump "\$@"
EOF
chmod 755 "$WORK/bin/pg_dump"

register_site

start_agent "$WORK/bin"
sleep 2

LAT=() CMD=() DONE=()
for i in $(seq "$RUNS"); do
    rm -f "$WORK/starts/"*
    t0=$EPOCHREALTIME
    pgb -C "register_snapshot_definition $SERVER $NODE_ADDR $DB \"\" now" >/dev/null
    t1=$EPOCHREALTIME
    snap=$(cpsql "select max(snapshot_id) from snapshot_definition")
    deadline=$((SECONDS + 60))
    while :; do
        st=$(cpsql "select status from snapshot_definition where snapshot_id = $snap")
        case $st in
            SUCCEEDED) break ;;
            ERROR | CANCELLED)
                cpsql "select error_step, error_message, error_stderr_tail from backup_catalog where snapshot_id = $snap" >&2
                tail -20 "$WORK/agent/agent.log" >&2
                exit 1 ;;
        esac
        ((SECONDS < deadline)) || { echo "snapshot $snap did not finish within 60 s (status $st)" >&2; exit 1; }
        sleep 0.05
    done
    t2=$EPOCHREALTIME
    shopt -s nullglob
    starts=("$WORK/starts/"*)
    shopt -u nullglob
    [[ ${#starts[@]} -eq 1 ]] || { echo "run $i: expected one pg_dump start, found ${#starts[@]}" >&2; exit 1; }
    ws=$(<"${starts[0]}")
    LAT+=("$(ms "$t0" "$ws")") CMD+=("$(ms "$t0" "$t1")") DONE+=("$(ms "$t0" "$t2")")
    log "run $i/$RUNS: pg_dump started after ${LAT[-1]} ms (shell command ${CMD[-1]} ms, snapshot finished after <= ${DONE[-1]} ms)"
    sleep 0.3
done

read -r lmin lmed lp90 lmax < <(printf '%s\n' "${LAT[@]}" | stats)
read -r cmin cmed cp90 cmax < <(printf '%s\n' "${CMD[@]}" | stats)
read -r dmin dmed dp90 dmax < <(printf '%s\n' "${DONE[@]}" | stats)
echo
echo "dispatch latency of an ad hoc snapshot, $RUNS runs (ms)"
echo "build: $BUILD; host: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GB", $2/1048576}' /proc/meminfo), load avg $(cut -d' ' -f1-3 /proc/loadavg)"
printf '%-52s %8s %8s %8s %8s\n' "" min median p90 max
printf '%-52s %8s %8s %8s %8s\n' "register_snapshot_definition -> pg_dump running" "$lmin" "$lmed" "$lp90" "$lmax"
printf '%-52s %8s %8s %8s %8s\n' "  of which the shell command itself (pgbackman -C)" "$cmin" "$cmed" "$cp90" "$cmax"
printf '%-52s %8s %8s %8s %8s\n' "register -> snapshot SUCCEEDED seen (50 ms polling)" "$dmin" "$dmed" "$dp90" "$dmax"
echo
agent_part=$(awk -v a="$lmed" -v b="$cmed" 'BEGIN { printf "%.1f", a - b }')
printf 'median latency %s ms (target <= 300 ms)  %s   [median after the shell command returned: ~%s ms]\n' \
    "$lmed" "$(awk -v m="$lmed" 'BEGIN { print (m <= 300) ? "PASS" : "MISS" }')" "$agent_part"
