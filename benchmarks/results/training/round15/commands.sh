#!/usr/bin/env bash
# Issue 19, round 15 (2026-12-07, AVX2 EPYC, torch fp32): no training. The rule in preregistered.txt was written
# before the candidate's Cranfield or test figures existed.
set -euo pipefail
P=benchmarks/results/training/round14/soup_probe.py
R5=$HOME/.cache/prorank-edge/models/SmolLM2-135M-Instruct-prorank-f5da8765827a   # round 5 merged (the old default)
C=/work/r14/r13_svd16_1bit_merged   # round 13 retrained, rank-16 SVD + 1-bit, merged (round 14)
R=benchmarks/results/training/round15
# Cranfield (benchmarks/cranfield_to_beir.py -> /work/cranfield), all 225 queries x BM25 top 20, contract weight 0.6
PROBE_DATA=/work/cranfield .venv/bin/python $P $R/cranfield.json r5=$R5 r13_svd16_1bit=$C              # 30 + 26 min
.venv/bin/python benchmarks/results/training/round14/paired.py $R/cranfield.json r5 $R/paired_cranfield_vs_r5.json
.venv/bin/python benchmarks/results/training/round14/paired.py $R/cranfield.json bm25 $R/paired_cranfield_vs_bm25.json
# SciFact test, 300 queries x BM25 top 20 (reported, not used to decide); round 5's from round14/round5_test.json
PROBE_SPLIT=test .venv/bin/python $P $R/test.json r13_svd16_1bit=$C                                    # 35 min
python3 -c "
import json; a = json.load(open('benchmarks/results/training/round14/round5_test.json')); b = json.load(open('$R/test.json'))
b['models'] = {'r5': a['models']['r5'], **b['models']}; json.dump(b, open('/tmp/test_with_round5.json', 'w'))"
.venv/bin/python benchmarks/results/training/round14/paired.py /tmp/test_with_round5.json r5 $R/paired_test_vs_r5.json
.venv/bin/python benchmarks/results/training/round14/paired.py /tmp/test_with_round5.json bm25 $R/paired_test_vs_bm25.json
# the summary that ship_default.py stores in the adapter's info, then the new default itself
.venv/bin/python $R/ship_default.py /work/r14/r13_svd16_1bit

# 2026-12-08 (next session, AVX2 EPYC, nothing else running): the new default's bench, then issues 14/15's
# accuracy set on the bench's artifacts, then its rerank latency and dev figure at the shipped 256 tokens
.venv/bin/python benchmarks/run_bench.py --model default --max-queries 10 --top-k 20 --repeats 2 \
    --formats torch-fp32,onnx-fp32,onnx-int8,onnx-w8a8,onnx-int4,gguf-f16,gguf-q8_0,gguf-q4_k_m,openvino-fp32,openvino-int8 \
    --scale-formats none --no-minilm --no-bare --no-openvino --nice 0 --output-dir benchmarks/results/bench_avx2_default_r15  # 40 min
A=$HOME/.cache/prorank-edge/bench-artifacts/SmolLM2-135M-Instruct-prorank-7e9d78b9532b-e63da49026
.venv/bin/python benchmarks/artifact_accuracy.py $A-w8a8-r4-onnx $A-int8-r4-onnx $A-q8_0-r3.gguf $A-q4_k_m-r3.gguf \
    $A-int8-r2-cal-scifact-train16-openvino $A-int4-r4-onnx --queries 50 --top-k 20 --output $R/artifact_accuracy_50q.json  # 53 min
.venv/bin/python benchmarks/length_sweep.py --model default --lengths 256 --eval-queries 50 --latency-queries 3 --repeats 2 \
    --output $R/length_sweep_256_avx2.json
