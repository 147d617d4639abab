#!/usr/bin/env bash
# The commands that made the figures in this folder (docs/training.md, "Evidence on a CPU"), run on 2 CPU cores
# (a Xeon with AVX-512 and AMX: bf16 autocast; 2026-11-29). The first run's files are in first_run/.
set -x
# stage 1: 100 cold-start steps (label + end of turn), then 60 GRPO steps; couples with BM25 or random negatives (~23 min)
.venv/bin/prorank-edge train stage1 --config train/configs/cpu_smollm2.yaml --set data.random_negatives=3
# stage 2: 200 listwise steps from stage 1's checkpoint, groups of 1 positive + 3 BM25 negatives (~10 min)
.venv/bin/prorank-edge train stage2 --config train/configs/cpu_smollm2.yaml
# the figures: nDCG@10 on the first 50 SciFact test queries (BM25 top 20, torch fp32) and label answers on
# 200 balanced held-out pairs, with BM25 hard negatives, then with random corpus negatives
.venv/bin/python -m prorank_edge.train.evidence --beir ../shared/data/beir/scifact --model zero_shot=smollm2 \
  --model cold_start=runs/cpu_smollm2/stage1/warmed_reference --model stage1=runs/cpu_smollm2/stage1 \
  --model stage2=runs/cpu_smollm2/stage2 --output runs/evidence/evidence.json --test-queries 50 --top-k 20 \
  --max-length 160 --label-pairs 200
.venv/bin/python -m prorank_edge.train.evidence --beir ../shared/data/beir/scifact --model zero_shot=smollm2 \
  --model cold_start=runs/cpu_smollm2/stage1/warmed_reference --model stage1=runs/cpu_smollm2/stage1 \
  --model stage2=runs/cpu_smollm2/stage2 --output runs/evidence/evidence_random_negatives.json --max-length 160 \
  --label-pairs 200 --label-negatives random --skip-ndcg
# the built-in default: stage 2 as a rank-16 adapter over SmolLM2, fusion weight tuned on held-out train queries
.venv/bin/prorank-edge train adapter --model runs/cpu_smollm2/stage2 --base smollm2 --output prorank_edge/default_adapter \
  --rank 16 --data ../shared/data/beir/scifact --top-k 10 --max-queries 30
# the default alone and fused against BM25 on SciFact test (first 50 queries, then all 300)
.venv/bin/prorank-edge eval --data ../shared/data/beir/scifact --split test --max-queries 50 --top-k 20 --output json
.venv/bin/prorank-edge eval --data ../shared/data/beir/scifact --split test --top-k 20 --output json
