#!/usr/bin/env bash
# Issue 19, round 13 trained again from scratch, unattended, so that its 1-bit adapter reaches the repository.
# The first run's adapter lived only in runs/round13 on its session's disk and was lost with it; the figures of
# that run are in this folder (adapter.json, eval_test_300.json, stage1/, stage2/).
#
#   bash benchmarks/results/training/round13/retrain.sh [RUN_DIR]        # default runs/round13
#
# Steps (each skipped when its output is complete, so a stopped run goes on where it stopped):
#   1. stage 1, the ablation's arm d at 160-token prompts            ~45 min on 2 AVX-512 BF16 EPYC cores
#      (--resume from its last GRPO checkpoint after a stop; ~60-70 min in fp32 on 2 AVX2 EPYC cores)
#   2. stage 2, full fine-tune, round 3's 810-step schedule, the best  ~100 min (81 min of steps, 5 dev
#      of 5 dev evaluations kept (the first run stopped at step 708,   evaluations; --resume after a stop)
#      dev 0.7337 there)
#   3. the whole change from the base in 1 bit a weight, its row      ~15 min
#      scales fitted (40 steps), measured and fusion-tuned on dev
#   4. the adapter copied to benchmarks/results/training/round13/adapter/ (17 MB): commit it at once
#   5. its test nDCG@10 (300 queries, BM25 top 20) -> eval_test_retrain.json  ~20 min
# Every step logs to RUN_DIR/<step>.log. It refuses a CPU without native bf16 (AMX or AVX-512 BF16): stage 1 and
# 2 autocast to bf16, which such a CPU emulates at a fraction of fp32's speed. ROUND13_FORCE=1 runs anyway.
# ROUND13_SET="key=value ..." adds --set overrides to both stages (e.g. a smoke test of the plumbing:
# ROUND13_SET="stage1.max_steps=1 stage1.end_of_turn_warmup_steps=1 stage2.max_steps=2 data.dev_eval_queries=2"
# ROUND13_ADAPTER="--distill-steps 1 --max-queries 2" ROUND13_EVAL="--max-queries 2" ROUND13_KEEP=/tmp/round13-smoke,
# which append to steps 3 and 5's options and keep the results somewhere else than this folder).
set -euo pipefail
cd "$(dirname "$0")/../../../.."
RUN=${1:-runs/round13}
KEEP=${ROUND13_KEEP:-benchmarks/results/training/round13}
CONFIG=train/configs/cpu_smollm2_round13.yaml
CLI=.venv/bin/prorank-edge
mkdir -p "$RUN"

if ! .venv/bin/python -c "import sys; from prorank_edge.devices import cpu_has_native_bf16; \
sys.exit(0 if cpu_has_native_bf16() else 1)"; then
  echo "this CPU has no native bf16 (AMX or AVX-512 BF16); stages 1 and 2 would take several times a session" >&2
  [ "${ROUND13_FORCE:-0}" = 1 ] || exit 3
fi
sets=(--set "stage1.output_dir=$RUN/stage1" --set "stage2.output_dir=$RUN/stage2")
for item in ${ROUND13_SET:-}; do sets+=(--set "$item"); done
finished() { [ -f "$1/train_log.jsonl" ] && grep -q '"event": "end"' "$1/train_log.jsonl"; }

if ! finished "$RUN/stage1"; then
  resume=()
  [ -d "$RUN/stage1/resume" ] && resume=(--resume)  # its GRPO steps checkpoint every 20
  echo "$(date -u +%FT%TZ) stage 1 ${resume[*]} -> $RUN/stage1.log"
  "$CLI" train stage1 --config "$CONFIG" --set data.random_negatives=3 --set max_length=160 "${sets[@]}" \
    "${resume[@]}" >> "$RUN/stage1.log" 2>&1
fi
if ! finished "$RUN/stage2"; then
  resume=()
  [ -d "$RUN/stage2/resume" ] && resume=(--resume)
  echo "$(date -u +%FT%TZ) stage 2 ${resume[*]} -> $RUN/stage2.log"
  "$CLI" train stage2 --config "$CONFIG" --set "stage2.init_from=$RUN/stage1" "${sets[@]}" "${resume[@]}" \
    >> "$RUN/stage2.log" 2>&1
fi
if [ ! -f "$RUN/adapter/adapter.json" ]; then
  echo "$(date -u +%FT%TZ) 1-bit adapter -> $RUN/adapter.log"
  "$CLI" train adapter --model "$RUN/stage2" --base smollm2 --output "$RUN/adapter" --one-bit --distill-steps 40 \
    --data ../shared/data/beir/scifact --dev-queries 100 --seed 0 --top-k 20 --max-queries 100 ${ROUND13_ADAPTER:-} \
    > "$RUN/adapter.log" 2>&1
fi
mkdir -p "$KEEP/stage1" "$KEEP/stage2"
rm -rf "$KEEP/adapter.new" && cp -r "$RUN/adapter" "$KEEP/adapter.new"
rm -rf "$KEEP/adapter" && mv "$KEEP/adapter.new" "$KEEP/adapter"
cp "$RUN/stage1/train_log.jsonl" "$KEEP/stage1/train_log_retrain.jsonl"
cp "$RUN/stage2/train_log.jsonl" "$KEEP/stage2/train_log_retrain.jsonl"
echo "$(date -u +%FT%TZ) kept: $KEEP/adapter ($(du -sh "$KEEP/adapter" | cut -f1)); commit it now"
# 5. its test figure (all 300 SciFact test queries, BM25 top 20; ~20 min), after the adapter is safe
if [ ! -f "$KEEP/eval_test_retrain.json" ]; then
  [ -d "$RUN/adapter_merged" ] || .venv/bin/python -c "import sys; from prorank_edge.adapter import apply_adapter; \
from prorank_edge.models import resolve_model; apply_adapter(resolve_model('smollm2').path, sys.argv[1], sys.argv[2])" \
    "$RUN/adapter" "$RUN/adapter_merged"
  echo "$(date -u +%FT%TZ) test evaluation -> $RUN/eval_test.log"
  "$CLI" eval --data ../shared/data/beir/scifact --split test --top-k 20 --model "$RUN/adapter_merged" \
    --output json --quiet ${ROUND13_EVAL:-} > "$RUN/eval_test.json" 2> "$RUN/eval_test.log"
  cp "$RUN/eval_test.json" "$KEEP/eval_test_retrain.json"
fi
echo "$(date -u +%FT%TZ) done"
