#!/usr/bin/env bash
# Restore from S3 against the same restore from disk (issue 13), in one run: the reference
# database (../shared/bench/reference-db.sql) backed up once to a directory and once to a local
# SeaweedFS (testkit, 127.0.0.1), then restored REPS times from each, interleaved (the order
# alternates), with --decompression auto (-j 2: tee or file) and stream. Prints every run and
# the median ratio S3 / disk per feed. Whole-process, release build; nothing here fails on a
# number (the issue's target: <= 1.15).
# Usage: bench/s3-restore.sh [SCALE] [REPS]   (default 4 and 3; needs SeaweedFS: .ci/install-test-deps)
set -euo pipefail
cd "$(dirname "$0")/.."
SCALE="${1:-4}"
REPS="${2:-3}"
REFDB=${REFDB:-$PWD/../shared/bench/reference-db.sql}
[[ -f $REFDB ]] || REFDB=/work/shared/bench/reference-db.sql
[[ -f $REFDB ]] || { echo "reference-db.sql not found: set REFDB" >&2; exit 2; }
BIN=target/release/examples/s3_restore_timing
cargo build --release --quiet -p pgbackman-dump --example s3_restore_timing
echo "build $(git rev-parse --short HEAD)$(git diff --quiet HEAD || echo ' + uncommitted changes'), scale $SCALE, $REPS rounds, $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
"$BIN" "$REFDB" "$SCALE" "$REPS"
