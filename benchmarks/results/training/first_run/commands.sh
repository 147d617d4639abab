#!/usr/bin/env bash
# The commands that made the figures in this folder (the first run, README before 2026-11-29 13:00), on 2 CPU
# cores, with train/configs/cpu_smollm2.yaml as of commit 2b05002 (3 end-of-turn steps, 40 GRPO steps, fp32).
set -x
.venv/bin/prorank-edge train stage1 --config train/configs/cpu_smollm2.yaml   # ~27 min
.venv/bin/prorank-edge train stage2 --config train/configs/cpu_smollm2.yaml   # ~39 min
.venv/bin/python -m prorank_edge.train.evidence --beir ../shared/data/beir/scifact --model zero_shot=smollm2 \
  --model stage1=runs/cpu_smollm2/stage1 --model stage2=runs/cpu_smollm2/stage2 \
  --output runs/evidence/evidence.json --test-queries 50 --top-k 20 --max-length 160 --label-pairs 60
# the built-in default: stage 2 as a rank-16 adapter over SmolLM2, fusion weight tuned on held-out train queries
.venv/bin/prorank-edge train adapter --model runs/cpu_smollm2/stage2 --base smollm2 --output prorank_edge/default_adapter \
  --rank 16 --data ../shared/data/beir/scifact --top-k 10 --max-queries 30
# the default alone and fused against BM25 on SciFact test
.venv/bin/prorank-edge eval --data ../shared/data/beir/scifact --split test --max-queries 50 --top-k 20 --output json
