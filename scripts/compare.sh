#!/usr/bin/env bash
# The paper's Table-3-style comparison on a synthetic world or on MovieLens, end to end through the real path,
# in a private home with its own redis-server and broker on free ports (nothing shared with a
# running demo): world -> Kafka -> consumer -> Feast/Redis + offline log -> profiles ->
# point-in-time dataset from Feast -> train every model -> evaluate --compare --json.
#
#   usage: scripts/compare.sh OUT_DIR [USERS PINS DAYS EPOCHS]       (synthetic world)
#          MOVIELENS=DIR scripts/compare.sh OUT_DIR [- - - EPOCHS]    (MovieLens files in DIR)
#   e.g.   scripts/compare.sh /tmp/cmp 600 2000 8 4
#          MOVIELENS=../shared/data/ml-100k scripts/compare.sh /tmp/ml - - - 4
# TRAIN_ARGS replaces the default `homefeed train` flags (--epochs EPOCHS --neg-keep 0.3
# --patience 2 --threads 2), e.g. TRAIN_ARGS="--epochs 3 --max-steps 40 --seq-len 50 --force".
# Writes OUT_DIR/{world,dataset,runs,timings.txt}; runs/comparison.{md,csv,png,json}.
set -euo pipefail
OUT=$(realpath -m "${1:?usage: $0 OUT_DIR [USERS PINS DAYS EPOCHS]}")
USERS=${2:-600} PINS=${3:-2000} DAYS=${4:-8} EPOCHS=${5:-4}
HERE=$(cd "$(dirname "$0")/.." && pwd)
HF="${HOMEFEED_BIN:-$HERE/.venv/bin/homefeed}"
mkdir -p "$OUT"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
export HOMEFEED_HOME="$OUT/home" HOMEFEED_REDIS_PORT=$(free_port) HOMEFEED_KAFKA_PORT=$(free_port)
export HOMEFEED_FEATURE_REPO="$OUT/feature_repo"
unset REDIS_URL KAFKA_BOOTSTRAP_SERVERS
rm -rf "$HOMEFEED_FEATURE_REPO" && cp -r "$HERE/feature_repo" "$HOMEFEED_FEATURE_REPO" && rm -rf "$HOMEFEED_FEATURE_REPO/data"
trap '"$HF" stack down >/dev/null 2>&1 || true' EXIT
T="$OUT/timings.txt"; : > "$T"
stage() { local name=$1; shift; local t0=$SECONDS; "$@"; echo "$name $((SECONDS - t0)) s" | tee -a "$T"; }

stage "stack up" "$HF" stack up
stage "feast apply" "$HF" feast apply
if [ -f "$OUT/world/world.json" ]; then :
elif [ -n "${MOVIELENS:-}" ]; then
  stage "world import-movielens" "$HF" world import-movielens --src "$MOVIELENS" --out "$OUT/world"
else
  stage "world generate" "$HF" world generate --out "$OUT/world" --users "$USERS" --pins "$PINS" --days "$DAYS" -q
fi
# evaluation days: what the world says (MovieLens: its eval days), else 2
TEST_DAYS=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1])).get('eval_days') or 2)" "$OUT/world/world.json")
stage "stream produce" "$HF" stream produce --world "$OUT/world"
stage "stream consume" "$HF" stream consume --exit-when-idle 5
stage "dataset profiles" "$HF" dataset profiles
stage "dataset compact" "$HF" dataset compact
stage "dataset build" "$HF" dataset build --world "$OUT/world" --out "$OUT/dataset" --test-days "$TEST_DAYS" -q
TRAIN_ARGS=${TRAIN_ARGS:-"--epochs $EPOCHS --neg-keep 0.3 --patience 2 --threads 2"}
# shellcheck disable=SC2086  # TRAIN_ARGS is a list of flags
stage "train all" "$HF" train --dataset "$OUT/dataset" --models all --out "$OUT/runs" -q $TRAIN_ARGS
stage "evaluate" "$HF" evaluate --runs "$OUT/runs" --compare --json > "$OUT/runs/comparison.stdout.json"
cat "$OUT/runs/comparison.md"
