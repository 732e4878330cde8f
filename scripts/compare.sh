#!/usr/bin/env bash
# The paper's Table-3-style comparison on a synthetic world, MovieLens or KuaiRand, end to end through the real path,
# in a private home with its own redis-server and broker on free ports (nothing shared with a
# running demo): world -> Kafka -> consumer -> Feast/Redis + offline log -> profiles ->
# point-in-time dataset from Feast -> train every model -> evaluate --compare --json.
#
#   usage: scripts/compare.sh OUT_DIR [USERS PINS DAYS EPOCHS]       (synthetic world)
#          MOVIELENS=DIR scripts/compare.sh OUT_DIR [- - - EPOCHS]    (MovieLens files in DIR)
#          KUAIRAND=DIR scripts/compare.sh OUT_DIR [- - - EPOCHS]     (KuaiRand files in DIR)
#   e.g.   scripts/compare.sh /tmp/cmp 600 2000 8 4
#          MOVIELENS=data/ml-100k scripts/compare.sh /tmp/ml
#          KUAIRAND=data/kuairand-pure scripts/compare.sh /tmp/kr
#   (data/ml-100k, data/kuairand-pure: `homefeed world fetch movielens-100k|kuairand-pure --out DIR`)
# Training follows the world's recipe, training/{synthetic,movielens,kuairand}.toml (RECIPE=FILE
# picks another); EPOCHS, when given, and TRAIN_ARGS (more `homefeed train` flags, e.g.
# TRAIN_ARGS="--max-steps 40 --force") win over it. EVAL_ARGS adds `homefeed evaluate` flags
# (KuaiRand default: --min-candidates 4, see docs/kuairand.md).
# Writes OUT_DIR/{world,dataset,runs,timings.txt}; runs/comparison.{md,csv,png,json}.
set -euo pipefail
OUT=$(realpath -m "${1:?usage: $0 OUT_DIR [USERS PINS DAYS EPOCHS]}")
USERS=${2:-600} PINS=${3:-2000} DAYS=${4:-8} EPOCHS=${5:-}
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
elif [ -n "${KUAIRAND:-}" ]; then
  stage "world import-kuairand" "$HF" world import-kuairand --src "$KUAIRAND" --out "$OUT/world"
else
  stage "world generate" "$HF" world generate --out "$OUT/world" --users "$USERS" --pins "$PINS" --days "$DAYS" -q
fi
# evaluation days: what the world says (MovieLens, KuaiRand: its eval days), else 2
TEST_DAYS=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1])).get('eval_days') or 2)" "$OUT/world/world.json")
stage "stream produce" "$HF" stream produce --world "$OUT/world"
stage "stream consume" "$HF" stream consume --exit-when-idle 5
stage "dataset profiles" "$HF" dataset profiles
stage "dataset compact" "$HF" dataset compact
stage "dataset build" "$HF" dataset build --world "$OUT/world" --out "$OUT/dataset" --test-days "$TEST_DAYS" -q
# the world's training recipe: synthetic, movielens or kuairand (world.json "source")
WORLD_KIND=$(python3 -c "import json,sys; s=json.load(open(sys.argv[1]))['source']; print(s.split('-')[0])" "$OUT/world/world.json")
RECIPE=${RECIPE:-"$HERE/training/$WORLD_KIND.toml"}
if [ "$WORLD_KIND" = kuairand ]; then EVAL_ARGS=${EVAL_ARGS:-"--min-candidates 4"}; fi
echo "recipe $RECIPE ${EPOCHS:+--epochs $EPOCHS }${TRAIN_ARGS:-}" | tee -a "$T"
# shellcheck disable=SC2086  # TRAIN_ARGS and EVAL_ARGS are lists of flags
stage "train all" "$HF" train --dataset "$OUT/dataset" --out "$OUT/runs" -q --config "$RECIPE" \
  ${EPOCHS:+--epochs "$EPOCHS"} ${TRAIN_ARGS:-}
# shellcheck disable=SC2086
stage "evaluate" "$HF" evaluate --runs "$OUT/runs" --compare --json ${EVAL_ARGS:-} > "$OUT/runs/comparison.stdout.json"
cat "$OUT/runs/comparison.md"
