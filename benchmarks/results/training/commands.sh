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

# --- Round 2 (issue 19; 2026-12-02, 2 cores of an AMD EPYC with AVX-512 VNNI/BF16, no AMX; bf16 autocast) ---
# files in round2/. Stage 2 again from the round-1 built-in model, 384-token prompts, a LoRA trained directly
# (r 16 on every linear layer), 1 positive + 5 unjudged BM25-top-100 negatives, 520 groups (64 min)
.venv/bin/prorank-edge train stage2 --config train/configs/cpu_smollm2_long.yaml
# the best checkpoint (dev, step 130) on all 300 SciFact test queries at its training length (384), BM25 top 20
.venv/bin/prorank-edge eval --data ../shared/data/beir/scifact --split test --top-k 20 \
  --model runs/cpu_smollm2_long/stage2 --fusion-weight 0.2 --output json  # -> round2/candidate_eval_test_300_len384.json
# (the fusion weight 0.2: the adapter build below, first run at 384 into /tmp/new_adapter -> round2/candidate_adapter_len384.json)
# nDCG@10 on 30 held-out dev queries (BM25 top 10) against rerank latency per max_length, new and old model
.venv/bin/python benchmarks/length_sweep.py --model runs/cpu_smollm2_long/stage2 \
  --output benchmarks/results/training/round2/length_sweep_round2.json
.venv/bin/python benchmarks/length_sweep.py --model default --output benchmarks/results/training/round2/length_sweep_round1.json
# max_length 256 chosen from the sweep (best dev nDCG@10, half the latency of 384), written into the checkpoint's
# contract; then the candidate built-in adapter (built into prorank_edge/default_adapter, measured, and NOT kept:
# the old adapter was put back, see docs/training.md "Round 2"): round 1's rank-16 delta plus the rank-16 LoRA is a delta of rank <= 32,
# so rank 32 keeps it exactly (fp32 scores within 3e-4 of the checkpoint); fusion weight tuned on dev at 256
.venv/bin/python -c "from prorank_edge.contract import ScoringContract as C; p='runs/cpu_smollm2_long/stage2'; C.load(p).replace(max_length=256).save(p)"
.venv/bin/prorank-edge train adapter --model runs/cpu_smollm2_long/stage2 --base smollm2 \
  --output prorank_edge/default_adapter --rank 32 --data ../shared/data/beir/scifact --top-k 10 --max-queries 30  # -> round2/candidate_adapter_build_256.log
# the candidate as the built-in default on all 300 test queries (its contract: 256 tokens, fusion weight 0.3)
.venv/bin/prorank-edge eval --data ../shared/data/beir/scifact --split test --top-k 20 --output json  # -> round2/candidate_eval_test_300_len256.json

# Stage ablation (issue 19), 2026-12-02, AMD EPYC avx512_bf16, bf16: benchmarks/results/training/ablation/
.venv/bin/python -m prorank_edge.train.ablation --config train/configs/cpu_smollm2.yaml \
  --output-dir runs/ablation --stage1-set data.random_negatives=3 --test-queries 300 --top-k 20 --label-pairs 200 --bf16

# --- Round 3 (issue 19; 2026-12-03, 2 cores of an Intel Xeon with AMX; bf16 autocast) ---
# files in round3/. The ablation's arm d (supervised warm-up, then GRPO; 160-token prompts), then stage 2 at
# 256 tokens for up to 2 epochs, its checkpoint picked on all 100 dev queries (BM25 top 10; BM25 0.6876 there,
# round3/bm25_dev.py). Stage 2 was stopped at step 670 of 810 (before its last dev evaluation, to leave time for the test run); best: step 531.
.venv/bin/prorank-edge train stage1 --config train/configs/cpu_smollm2_round3.yaml --set data.random_negatives=3 --set max_length=160
.venv/bin/prorank-edge train stage2 --config train/configs/cpu_smollm2_round3.yaml
.venv/bin/prorank-edge eval --data ../shared/data/beir/scifact --split test --top-k 20 --model runs/round3/stage2 \
  --fusion-weight auto --output json --quiet  # -> round3/eval_test_300.json

# --- Round 4 (issue 19; 2026-12-04, 2 cores of an AMD EPYC with AVX-512 BF16, no AMX; bf16 autocast) ---
# files in round4/. Round 3's stage 2 (256 tokens, 1 positive + 3 BM25 negatives, dev on all 100 queries) as a
# rank-16 LoRA trained directly on the built-in default (round 1), 480 steps (1.2 epochs, 109 min with two
# SIGSTOP pauses for benchmarks); then the rank-32 adapter, which holds round 1's rank-16 delta plus the LoRA
# exactly, with its fusion weight tuned on the 100 dev queries (BM25 top 20); then test with the shipped default.
.venv/bin/prorank-edge train stage2 --config train/configs/cpu_smollm2_round4.yaml
.venv/bin/prorank-edge train adapter --model runs/round4/stage2 --base smollm2 --output runs/round4/adapter \
  --rank 32 --data ../shared/data/beir/scifact --dev-queries 100 --seed 0 --top-k 20 --max-queries 100  # -> round4/adapter_build.json
cp runs/round4/adapter/* prorank_edge/default_adapter/
.venv/bin/prorank-edge eval --data ../shared/data/beir/scifact --split test --top-k 20 --output json --quiet  # -> round4/eval_test_300.json
.venv/bin/python benchmarks/results/training/default_gguf_vs_torch.py  # -> round4/default_gguf_vs_torch.json

# --- Round 5 (issue 19; 2026-12-04, 2 cores of an AMD EPYC with AVX-512 BF16, no AMX; bf16 autocast) ---
# files in round5/. A fresh rank-16 LoRA on the round-4 default (init_from: default, i.e. round 4's adapter at
# commit 6f7c94f), 1 positive + 7 BM25-top-30 negatives per group, one group a step, lr 3e-4, 420 steps (76 min);
# then the rank-48 adapter (round 4's rank-32 delta plus the LoRA, exactly) with its fusion weight tuned on the 100
# dev queries; then test with the shipped default, and Cranfield (never trained on) as the generalization check.
.venv/bin/prorank-edge train stage2 --config train/configs/cpu_smollm2_round5.yaml
.venv/bin/prorank-edge train adapter --model runs/round5/stage2 --base smollm2 --output runs/round5/adapter \
  --rank 48 --data ../shared/data/beir/scifact --dev-queries 100 --seed 0 --top-k 20 --max-queries 100  # -> round5/adapter_build.json
cp runs/round5/adapter/* prorank_edge/default_adapter/
.venv/bin/prorank-edge eval --data ../shared/data/beir/scifact --split test --top-k 20 --output json --quiet  # -> round5/eval_test_300.json
# Cranfield: cran.all.1400, cran.qry, cranqrel (Glasgow IR group; copies on GitHub, e.g. michael-xander/SimpleIRSystem)
.venv/bin/python benchmarks/cranfield_to_beir.py --raw cranfield_raw --output data/cranfield
.venv/bin/prorank-edge eval --data data/cranfield --split test --bm25-only --top-k 20 --output json --quiet  # BM25 0.3650
# with round 4's default (before the cp above; --threads 1 beside the adapter build, so its timing is not a figure):
.venv/bin/prorank-edge eval --data data/cranfield --split test --top-k 20 --output json --quiet  # -> round5/cranfield_round4_default.json
.venv/bin/prorank-edge eval --data data/cranfield --split test --top-k 20 --max-queries 100 --output json --quiet  # -> round5/cranfield_round5_default_100q.json
# all 225 queries with the round-5 default (2026-12-05, Ice Lake, fp32, nothing else running):
.venv/bin/prorank-edge eval --data data/cranfield --split test --top-k 20 --output json --quiet  # -> round5/cranfield_round5_default_225q_icelake_fp32.json

# --- Round 6 (issue 19; 2026-12-05, 2 cores of an Intel Xeon, Ice Lake: AVX-512 VNNI, no bf16; fp32) ---
# files in round6/. Round 5's recipe on the round-5 default with other groups (data.group_seed 1; the dev split
# still follows seed 0). Stopped at step 281 of 420 (dev 0.7090 at 140, 0.6968 at 280; round 5: 0.7063); not shipped.
.venv/bin/prorank-edge train stage2 --config train/configs/cpu_smollm2_round6.yaml

# --- Round 7 (issue 19; 2026-12-05, 2 cores of an Intel Xeon, Ice Lake: AVX-512 VNNI, no bf16; fp32) ---
# files in round7/. Negatives mined by the model: each step scores 18 unjudged documents of BM25's top 20 with the
# current model and trains on the 7 it ranks highest (stage2.mine_negatives 7, skip_loss_below 0.01), fresh
# rank-16 LoRA on the round-5 default, 280 steps (91 min). Dev 0.7074 / 0.6983 / 0.7098 / 0.7060 at steps
# 70 / 140 / 210 / 280 (round 5: 0.7063); 103 steps skipped; not shipped, no test figure.
.venv/bin/prorank-edge train stage2 --config train/configs/cpu_smollm2_round7.yaml

# --- Round 8 (issue 19; 2026-12-05, 2 cores of an Intel Xeon, Ice Lake: AVX-512 VNNI, no bf16; fp32) ---
# files in round8/. The round-5 default's own rank-48 adapter trained on (lora.from_adapter), round 7's mined
# negatives, lr 2e-4, 240 steps planned. Dev 0.6745 / 0.6834 / 0.6818 at steps 60 / 120 / 180 (round 5: 0.7063);
# stopped at step 200 (56 min); not shipped, no test figure.
.venv/bin/prorank-edge train stage2 --config train/configs/cpu_smollm2_round8.yaml
# Round 8b: the same at lr 5e-5 (group_seed 4, 180 steps planned). Dev 0.7086 / 0.7073 at steps 60 / 120; stopped at
# 120 (the session's end, part of it beside the test suite; SIGSTOP while the suite finished); files in round8b/.
.venv/bin/prorank-edge train stage2 --config train/configs/cpu_smollm2_round8b.yaml

# --- Round 9 (issue 19; 2026-12-06, 2 cores of an AMD EPYC with AVX-512 BF16, no AMX; bf16 autocast) ---
# files in round9/. The document prior on dev (round 5's saved dev scores), then round 5's recipe with 3 of 7
# negatives drawn from other training queries' positives (data.other_query_positives 3), 240 steps (34 min).
# Dev 0.6841 / 0.6968 at steps 120 / 240 (round 5: 0.7063); not shipped, no test figure.
.venv/bin/python benchmarks/results/training/round9/document_prior.py > benchmarks/results/training/round9/document_prior_round5_dev.json
.venv/bin/prorank-edge train stage2 --config train/configs/cpu_smollm2_round9.yaml
# the round-9 checkpoint's scores on the dev queries' BM25 top 20 (torch bf16), then the same measurement:
.venv/bin/python benchmarks/results/training/round9/score_dev.py runs/round9/stage2 \
    benchmarks/results/training/round9/scifact_dev_top20_round9_bf16.json
.venv/bin/python benchmarks/results/training/round9/document_prior.py \
    benchmarks/results/training/round9/scifact_dev_top20_round9_bf16.json > benchmarks/results/training/round9/document_prior_round9_dev.json

# --- Round 10 (issue 19; 2026-12-06, 2 cores of an AMD EPYC with AVX-512 BF16, no AMX; bf16 autocast) ---
# files in round10/. Round 5's recipe (fresh rank-16 LoRA on the round-5 default, 1 positive + 7 BM25-top-30
# negatives, lr 3e-4, 420 steps, 65 min) with 700 groups made from the corpus alone added to the 709 judged ones
# (data.pseudo_queries 700). Dev 0.6941 / 0.7074 / 0.7119 at steps 140 / 280 / 420 (round 5: 0.7063). The exact
# rank-64 adapter on dev top 20: alone 0.7206 (round 5's: 0.7209), fused 0.7529 at weight 0.7 (round 5's: 0.7589);
# the document prior did not move. Not shipped, no test figure.
.venv/bin/prorank-edge train stage2 --config train/configs/cpu_smollm2_round10.yaml
.venv/bin/prorank-edge train adapter --model runs/round10/stage2 --base smollm2 --output runs/round10/adapter \
  --rank 64 --data ../shared/data/beir/scifact --dev-queries 100 --seed 0 --top-k 20 --max-queries 100  # -> round10/adapter_build.json
.venv/bin/python benchmarks/results/training/round9/score_dev.py runs/round10/stage2 benchmarks/results/training/round10/scifact_dev_top20_round10_bf16.json
.venv/bin/python benchmarks/results/training/round9/document_prior.py benchmarks/results/training/round10/scifact_dev_top20_round10_bf16.json > benchmarks/results/training/round10/document_prior_round10_dev.json

# --- Round 11 (issue 19; 2026-12-06, 2 cores of an AMD EPYC with AVX-512 BF16, no AMX; bf16 autocast) ---
# files in round11/. Round 5's recipe as a full fine-tune of the round-5 default (lr 2e-5, no weight decay, group
# seed 11). Dev 0.6594 at step 140 (round 5: 0.7063); stopped there. Not shipped, no test figure.
.venv/bin/prorank-edge train stage2 --config train/configs/cpu_smollm2_round11.yaml

# --- Round 12 (issue 19; 2026-12-06, 2 cores of an AMD EPYC with AVX-512 BF16, no AMX; bf16 autocast) ---
# files in round12/. Round 3's stage 2 as a full fine-tune of the round-1 default (its adapter at commit 1f93b9a),
# 531 steps (78 min). Dev 0.6795 / 0.7040 / 0.7093 at steps 177 / 354 / 531. The 1-bit adapter: 0.7008 as coded,
# 0.7101 with its row scales fitted (40 steps). Level with round 5 (0.7063): not shipped, no test figure.
mkdir -p runs/round12/round1_adapter
for f in adapter.json adapter.safetensors prorank_contract.json; do
  git show 1f93b9a:prorank_edge/default_adapter/$f > runs/round12/round1_adapter/$f; done
.venv/bin/python -c "from prorank_edge.adapter import apply_adapter; from prorank_edge.models import resolve_model; \
apply_adapter(resolve_model('smollm2').path, 'runs/round12/round1_adapter', 'runs/round12/round1_merged')"
.venv/bin/prorank-edge train stage2 --config train/configs/cpu_smollm2_round12.yaml
# The session measured the coded and the fitted adapter with scratch versions of this (make_sign_adapter, then the
# fit as in train/sign_scales.py, but on round 12's own groups: 1 + 3 of BM25's top 50, lr 1e-2, 40 steps), each
# scored on the dev queries' BM25 top 10 and then top 20; `train adapter` below fits on round 5's groups instead:
.venv/bin/prorank-edge train adapter --model runs/round12/stage2 --base smollm2 --output runs/round12/adapter \
  --on-adapter runs/round12/round1_adapter --distill-steps 40 --data ../shared/data/beir/scifact \
  --dev-queries 100 --seed 0 --top-k 20 --max-queries 100

# --- Round 13 (issue 19; 2026-12-06/07, 2 cores of an AMD EPYC with AVX-512 BF16, no AMX; bf16 autocast) ---
# files in round13/. Round 3 run again from scratch: stage 1 arm d (45 min), then stage 2 as a full fine-tune with
# round 3's schedule (810 steps planned, lr decaying to 0 there), stopped after the dev evaluation at step 708
# (88 min). Dev 0.6680 / 0.6985 / 0.7143 / 0.7337 at steps 177 / 354 / 531 / 708. Then the whole change from the
# base in 1 bit a weight, its row scales fitted (40 steps), measured and fusion-tuned on the dev queries' top 20.
.venv/bin/prorank-edge train stage1 --config train/configs/cpu_smollm2_round13.yaml --set data.random_negatives=3 --set max_length=160
.venv/bin/prorank-edge train stage2 --config train/configs/cpu_smollm2_round13.yaml  # stopped after step 708's dev evaluation
.venv/bin/prorank-edge train adapter --model runs/round13/stage2 --base smollm2 --output runs/round13/adapter \
  --one-bit --distill-steps 40 --data ../shared/data/beir/scifact --dev-queries 100 --seed 0 --top-k 20 \
  --max-queries 100  # -> round13/adapter.json
# all of the above again, unattended, with the adapter copied into round13/adapter/ (the first one was lost):
#   bash benchmarks/results/training/round13/retrain.sh
# run 2026-12-06/07 on 2 AVX2-only EPYC cores, fp32, over three sessions (stage 1 resumed at GRPO step 40, stage 2
# at step 354), from a clone of the repository:
#   ROUND13_FORCE=1 ROUND13_SET="stage1.bf16=false stage2.mixed_precision=no" \
#     ROUND13_KEEP=/work/main/benchmarks/results/training/round13 bash benchmarks/results/training/round13/retrain.sh runs/round13
# -> round13/stage1/train_log_retrain.jsonl, round13/stage2/train_log_retrain.jsonl (best step 708, dev 0.7158),
#    round13/adapter_retrain.json (dev top 20: checkpoint 0.7307, adapter 0.7065, fused 0.7622 at 0.5): not shipped,
#    so its weights were not committed and its test evaluation was stopped
# next (started, did not finish in the session): the test figure of the merged 1-bit adapter
.venv/bin/python -c "from prorank_edge.adapter import apply_adapter; from prorank_edge.models import resolve_model; \
apply_adapter(resolve_model('smollm2').path, 'runs/round13/adapter', 'runs/round13/adapter_merged')"
.venv/bin/prorank-edge eval --data ../shared/data/beir/scifact --split test --top-k 20 --model runs/round13/adapter_merged \
  --output json --quiet  # -> round13/eval_test_300.json

# --- Round 14 (issue 19; 2026-12-07, 2 AVX2-only EPYC cores, fp32): no training, files in round14/ ---
# round 5 (the default, merged in the cache), weight averages, and the round-13 retrained checkpoint coded as a
# rank-16 SVD + 1-bit rest; each scored on the 100 dev queries x BM25 top 20 (every pair's score kept), ~13 min each.
R5=~/.cache/prorank-edge/models/SmolLM2-135M-Instruct-prorank-f5da8765827a R13=runs/round13/stage2
.venv/bin/python benchmarks/results/training/round14/soup_probe.py round14/soup_dev.json r5=$R5 \
  soup050=soup:0.5:$R5:$R13 r13_swa708_810=soup:0.5:$R13:$R13/resume   # soup folders under /work/r14
.venv/bin/prorank-edge train adapter --model $R13 --base smollm2 --one-bit --svd-rank 16 --output runs/round14/r13_svd16_1bit \
  --distill-steps 40 --data ../shared/data/beir/scifact --dev-queries 100 --seed 0 --top-k 20 --max-queries 100
# (run as two steps then: `train adapter --rank 16` into r13_svd16, then `--on-adapter r13_svd16`, which the
#  --svd-rank path reproduces bit for bit apart from the fitted scales; merged, then scored by soup_probe.py)
.venv/bin/python benchmarks/results/training/round14/soup_probe.py round14/soup_dev.json r13_svd16_1bit=runs/round14/r13_svd16_1bit_merged
.venv/bin/python benchmarks/results/training/round14/paired.py round14/soup_dev.json r5 round14/paired_dev.json
# round 5 on all 300 test queries (its test figure is read anyway: it is the default), fp32, 35 min, and its paired
# interval against BM25:
PROBE_SPLIT=test .venv/bin/python benchmarks/results/training/round14/soup_probe.py round14/round5_test.json r5=$R5
.venv/bin/python benchmarks/results/training/round14/paired.py round14/round5_test.json bm25 round14/paired_test_vs_bm25.json
