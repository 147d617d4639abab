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
