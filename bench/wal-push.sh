#!/usr/bin/env bash
# Whole-process benchmark of the wal-push intake (issue 11): the node's archive_command runs the
# real `pgbackman-agent wal-push %p` against a real agent (TLS, checks, zstd, sha256, fsync,
# ledger), in two parts:
#
# 1. Per file: PUSH_FILES real segments (copied from the node's pg_wal) are pushed one after
#    another with `wal-push`, against the local floor in the same run: `zstd -3` of the file to a
#    new file, `sha256sum`, `sync -f` (the least the agent must do with a segment), and a plain
#    `cp` + `sync -f` (a local archive_command that keeps nothing safe). Wall per segment, ratios.
# 2. Under load: archive_command = wal-push while pgbench (-c 2, synchronous_commit off) and a
#    bulk INSERT loop write for LOAD_SECONDS: segments archived per second, the archiver's lag at the end (segments
#    between the file being written and the last archived one), failed archive_command runs,
#    ledger rows against archived segments, and the agent's peak RSS (VmHWM).
#
# Nothing fails on a number: PASS/MISS against the issue's targets (the archive keeps up: lag
# <= 2 segments at the end; agent RSS < 60 MB).
#
# Usage: bench/wal-push.sh      env: BIN_DIR=DIR (prebuilt binaries), PUSH_FILES (default 30),
#        LOAD_SECONDS (default 60), KEEP=1 keeps the work directory.
set -euo pipefail
shopt -s inherit_errexit

NPUSH=${PUSH_FILES:-30}
LOAD=${LOAD_SECONDS:-60}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PGBIN=/usr/lib/postgresql/15/bin
SERVER=bench.example.org
NODE_ADDR=127.0.0.2
WORK=/var/tmp/pgbackman-bench-$$
# shellcheck source=bench/lib.sh
source "$(dirname "$0")/lib.sh"

pick_binaries

mkdir -p "$WORK/sock" "$WORK/home" "$WORK/agent" "$WORK/node-host" "$WORK/segs" "$WORK/floor"
chmod 755 "$WORK" "$WORK/node-host"
[[ $(id -u) -eq 0 ]] && chown postgres: "$WORK" "$WORK/sock"

CPORT=$(free_port) NPORT=$(free_port) WPORT=$(free_port)
log "catalog cluster (port $CPORT), node cluster ($NODE_ADDR:$NPORT)"
start_cluster catalog "" "$CPORT"
start_cluster node "$NODE_ADDR" "$NPORT" "$BENCH_NODE_CONF
archive_mode = on
archive_command = '/bin/true'"
CATALOG="host=$WORK/sock port=$CPORT dbname=pgbackman user=postgres"
NODE_CONN=(-h "$WORK/sock" -p "$NPORT" -U postgres)
npsql() { psql -X -At -v ON_ERROR_STOP=1 "${NODE_CONN[@]}" -d postgres -c "$1"; }
register_site

# The agent's TLS files: a CA and a certificate for 127.0.0.1.
(
    cd "$WORK/node-host"
    ec=(-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes)
    openssl req -x509 "${ec[@]}" -days 2 -subj "/CN=bench CA" -addext basicConstraints=critical,CA:TRUE \
        -addext keyUsage=critical,keyCertSign,cRLSign -keyout ca.key -out ca.crt 2>/dev/null
    openssl req "${ec[@]}" -subj "/CN=127.0.0.1" -keyout server.key -out server.csr 2>/dev/null
    printf 'subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' >server.ext
    openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 -extfile server.ext \
        -out server.crt 2>/dev/null
    chmod 644 ca.crt
)
pgb -C "register_wal_archive $SERVER $NODE_ADDR --intake push" >/dev/null
pgb -C "create_wal_push_credential $SERVER $NODE_ADDR --file $WORK/node-host/credential" >/dev/null
cat >"$WORK/node-host/wal-push.toml" <<CONF
agent = "127.0.0.1:$WPORT"
ca = "$WORK/node-host/ca.crt"
credential = "$WORK/node-host/credential"
CONF
chmod 644 "$WORK/node-host/wal-push.toml"
[[ $(id -u) -eq 0 ]] && chown postgres "$WORK/node-host/credential"

cat >"$WORK/agent/agent.toml" <<CONF
[catalog]
conninfo = "$CATALOG"
[agent]
backup_server = "$SERVER"
state_dir = "$WORK/agent/state"
backup_dir = "$WORK/agent/backups"
http_listen = ""
[agent.wal_push]
listen = "127.0.0.1:$WPORT"
cert = "$WORK/node-host/server.crt"
key = "$WORK/node-host/server.key"
CONF
PGBACKMAN_LOG=info TZ=UTC "$AGENT" --config "$WORK/agent/agent.toml" >/dev/null 2>>"$WORK/agent/agent.log" &
AGENT_PID=$!
deadline=$((SECONDS + 30))
until grep -q "taking wal-push" "$WORK/agent/agent.log"; do
    kill -0 "$AGENT_PID" 2>/dev/null || { cat "$WORK/agent/agent.log" >&2; exit 1; }
    ((SECONDS < deadline)) || { cat "$WORK/agent/agent.log" >&2; echo "no listener" >&2; exit 1; }
    sleep 0.2
done
sleep 3 # the WAL task has read the archive list
segno() { npsql "select floor((pg_current_wal_lsn() - '0/0'::pg_lsn) / 16777216)::int8"; }

# ---- part 1: per file ---------------------------------------------------------------------
log "part 1: $NPUSH segments from pg_wal, pushed one by one and against the local floor"
npsql "create table w (x int, pad text)" >/dev/null
for _ in $(seq "$NPUSH"); do
    npsql "insert into w select g, repeat('x', 200) from generate_series(1, 20000) g; select pg_switch_wal()" >/dev/null
done
sleep 1
cp "$(npsql "show data_directory")"/pg_wal/0000000100000000000000?? "$WORK/segs/" 2>/dev/null || true
mapfile -t SEGS < <(ls "$WORK/segs" | sort | head -n "$NPUSH")
n=${#SEGS[@]}
t=$(now)
for f in "${SEGS[@]}"; do
    zstd -3 -q -c "$WORK/segs/$f" >"$WORK/floor/$f.zst"
    sha256sum "$WORK/segs/$f" >/dev/null
    sync -f "$WORK/floor/$f.zst"
done
floor=$(awk -v a="$t" -v b="$(now)" -v n="$n" 'BEGIN{printf "%.4f", (b-a)/n}')
rm -f "$WORK"/floor/*
t=$(now)
for f in "${SEGS[@]}"; do
    cp "$WORK/segs/$f" "$WORK/floor/$f"
    sync -f "$WORK/floor/$f"
done
cpfloor=$(awk -v a="$t" -v b="$(now)" -v n="$n" 'BEGIN{printf "%.4f", (b-a)/n}')
rm -rf "$WORK/floor"
t=$(now)
for f in "${SEGS[@]}"; do
    "$AGENT" wal-push --config "$WORK/node-host/wal-push.toml" "$WORK/segs/$f"
done
push=$(awk -v a="$t" -v b="$(now)" -v n="$n" 'BEGIN{printf "%.4f", (b-a)/n}')
rm -rf "$WORK/segs"
printf '\n%-40s %12s %10s\n' "per segment ($n segments)" "seconds" "ratio"
printf '%-40s %12s %10s\n' "wal-push (TLS, store, ledger)" "$push" "1.000"
printf '%-40s %12s %10s\n' "zstd -3 + sha256sum + sync (floor)" "$floor" "$(ratio "$floor" "$push")"
printf '%-40s %12s %10s\n' "cp + sync" "$cpfloor" "$(ratio "$cpfloor" "$push")"
printf 'wal-push: %s segments/s one after another; wal-push / floor = %s\n\n' \
    "$(awk -v p="$push" 'BEGIN{printf "%.1f", 1/p}')" "$(ratio "$push" "$floor")"

# ---- part 2: under load -------------------------------------------------------------------
log "part 2: archive_command = wal-push under pgbench for $LOAD s"
npsql "alter system set archive_command = '$AGENT wal-push --config $WORK/node-host/wal-push.toml %p'" >/dev/null
npsql "select pg_reload_conf()" >/dev/null
sleep 1
A0=$(npsql "select archived_count from pg_stat_archiver")
L0=$(cpsql "select count(*) from wal_object where kind = 'full'")
"$PGBIN/pgbench" -i -s 10 -q "${NODE_CONN[@]}" postgres >/dev/null 2>&1
sleep 2
a0=$(npsql "select archived_count from pg_stat_archiver")
s0=$(segno)
t=$(now)
# pgbench alone writes little WAL with these settings: a bulk writer beside it fills segments.
( end=$((SECONDS + LOAD)); while ((SECONDS < end)); do
      npsql "insert into w select g, repeat('x', 200) from generate_series(1, 50000) g" >/dev/null; done ) &
SLEEP_PID=$!
"$PGBIN/pgbench" -c 2 -j 2 -T "$LOAD" -n "${NODE_CONN[@]}" postgres >"$WORK/pgbench.log" 2>&1
wait "$SLEEP_PID" || true
SLEEP_PID=
elapsed=$(awk -v a="$t" -v b="$(now)" 'BEGIN{printf "%.1f", b-a}')
s1=$(segno)
last=$(npsql "select coalesce(last_archived_wal, '') from pg_stat_archiver")
lag=$(npsql "select $s1 - 1 - ('x' || substr('$last', 17, 8))::bit(32)::int8 - ('x' || substr('$last', 9, 8))::bit(32)::int8 * 256")
a1=$(npsql "select archived_count from pg_stat_archiver")
failed=$(npsql "select failed_count from pg_stat_archiver")
hwm=$(awk '/^VmHWM:/ {print $2}' "/proc/$AGENT_PID/status")
written=$((s1 - s0))
archived=$((a1 - a0))
# Let the last ones arrive, then compare with the ledger.
deadline=$((SECONDS + 120))
until [[ $(npsql "select ('x' || substr(coalesce(last_archived_wal, ''), 17, 8))::bit(32)::int8 >= ($s1 - 1) % 256 from pg_stat_archiver") == t ]] || ((SECONDS > deadline)); do sleep 1; done
sleep 5
ledger=$(( $(cpsql "select count(*) from wal_object where kind = 'full'") - L0 ))
archived_total=$(( $(npsql "select archived_count from pg_stat_archiver") - A0 ))
dups=$(cpsql "select count(*) from (select segno from wal_object where kind = 'full' group by segno having count(*) > 1) d")
tps=$(awk '/^tps/ {print int($3)}' "$WORK/pgbench.log" | head -1)
printf '%-46s %s\n' "pgbench tps (-c 2, $LOAD s, with a bulk writer)" "$tps"
printf '%-46s %s\n' "segments written / archived during the load" "$written / $archived ($(awk -v a="$archived" -v e="$elapsed" 'BEGIN{printf "%.2f", a/e}') segments/s)"
printf '%-46s %s\n' "archiver lag at the end (segments)" "$lag $(awk -v l="$lag" 'BEGIN{print (l <= 2) ? "PASS" : "MISS"}') (target <= 2)"
printf '%-46s %s\n' "failed archive_command runs" "$failed"
printf '%-46s %s\n' "ledger rows / segments archived by wal-push" "$ledger / $archived_total (segments twice in the ledger: $dups)"
printf '%-46s %s\n' "agent peak RSS (VmHWM)" "$(awk -v k="$hwm" 'BEGIN{printf "%.1f MB", k/1024}') $(awk -v k="$hwm" 'BEGIN{print (k < 60*1024) ? "PASS" : "MISS"}') (target < 60 MB)"
