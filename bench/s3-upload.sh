#!/usr/bin/env bash
# Memory of a set's upload to S3 (issue 13): 1 GB (SIZE) of incompressible bytes streamed
# through the dump's upload pipeline (zstd, sha256, multipart upload, default limits: 8 MiB
# parts, 2 in flight) into a local SeaweedFS, as the agent streams pg_dump's output. Reports
# the peak RSS of the uploading process (VmHWM) and the wall time. Whole-process; no timed test.
# Usage: bench/s3-upload.sh [SIZE]   (needs: cargo build --release -p pgbackman-dump --example s3_upload_rss)
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE="${1:-1G}"
WEED="${PGBACKMAN_WEED:-$HOME/.cache/pgbackman/seaweedfs/bin/weed}"
BIN=target/release/examples/s3_upload_rss
[ -x "$BIN" ] || cargo build --release -p pgbackman-dump --example s3_upload_rss
D=$(mktemp -d /tmp/pgbackman-bench-s3.XXXXXX)
P=($(python3 -c "
import socket
ss=[socket.socket() for _ in range(12)]
for s in ss: s.bind(('127.0.0.1',0))
print(' '.join(str(s.getsockname()[1]) for s in ss))"))
export AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench-secret
"$WEED" mini -dir="$D" -ip=127.0.0.1 -ip.bind=127.0.0.1 -admin.ui=false -webdav=false \
  -s3.port.iceberg=0 -s3.port.lance=0 -bucket=bench \
  -s3.port="${P[0]}" -s3.port.grpc="${P[1]}" -master.port="${P[2]}" -master.port.grpc="${P[3]}" \
  -volume.port="${P[4]}" -volume.port.grpc="${P[5]}" -filer.port="${P[6]}" -filer.port.grpc="${P[7]}" \
  -admin.port="${P[8]}" -admin.port.grpc="${P[9]}" -debug.port="${P[10]}" -s3.debug.port="${P[11]}" \
  >"$D.log" 2>&1 &
WEED_PID=$!
disown "$WEED_PID"
trap 'kill -9 $WEED_PID 2>/dev/null; rm -rf "$D" "$D.log"' EXIT
for _ in $(seq 1 200); do
  curl -s -o /dev/null "http://127.0.0.1:${P[6]}/buckets/bench/" -w '%{http_code}' | grep -q 200 && break
  sleep 0.1
done
head -c "$SIZE" /dev/urandom | S3_ENDPOINT="http://127.0.0.1:${P[0]}" S3_BUCKET=bench \
  /usr/bin/time -f "wall %e s, max RSS %M kB (time -f)" "$BIN" "sets/node1/bench/dump.pgdump.zst"
