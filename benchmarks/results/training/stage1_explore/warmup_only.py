"""Scratch script (2026-11-29): the stage-1 warm-up alone, with label supervision, then the label figures.

Run from the repository root: .venv/bin/python benchmarks/results/training/stage1_explore/warmup_only.py 10 1e-5 /tmp/exp/cs10
"""
import json, sys, time
import torch
from prorank_edge.train.config import load_config
from prorank_edge.train.common import load_model_and_tokenizer, save_checkpoint, set_seed
from prorank_edge.train.data import load_training_data, balanced_pairs
from prorank_edge.train.stage1_grpo import end_of_turn_warmup
from prorank_edge.train.evidence import label_pairs, label_answers

steps, lr, out = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
cfg = load_config('train/configs/cpu_smollm2.yaml')
set_seed(0)
model, tok, prompts = load_model_and_tokenizer('smollm2', 160)
data = load_training_data(cfg.data, 0)
pairs = balanced_pairs(data.groups, 0)
ids = prompts.build_pairs((q, d) for q, d, _ in pairs)
labels = [y for *_, y in pairs]
t = time.time()
losses = end_of_turn_warmup(model, ids, labels, prompts.positive_token_id, prompts.negative_token_id,
                            tok.convert_tokens_to_ids('<|im_end|>'), steps, 16, lr, None, True)
print('losses', [round(l, 3) for l in losses], f'{time.time()-t:.0f}s', flush=True)
save_checkpoint(model, tok, prompts.contract, out)
res = label_answers(out, label_pairs(cfg.data.beir, 'train', 100, 60, 0), 160)
print(json.dumps(res, indent=1))
