"""Figures that show what each training stage does, computed from checkpoints (`python -m prorank_edge.train.evidence`).

- label answering on held-out train-split pairs (the dev queries both stages hold out; balanced positives and
  BM25 hard negatives, or random corpus negatives with --label-negatives random): the share of greedy
  completions that are exactly "0" or "1" (an end-of-turn token allowed), the share that are exactly the
  correct label, the same two for the first token alone (what the score reads), the share of first tokens
  that are "1", the accuracy of the score's sign, and the score's pairwise AUC (positives above negatives,
  whatever the score's offset);
- nDCG@10 of BM25 and of each checkpoint reranking BM25's top k on the first queries of the test split.

Every model is scored on the same pairs and queries, at the same max_length.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch

from .common import load_model_and_tokenizer, score_prompts
from .config import DataConfig
from .data import from_beir
from .stage1_grpo import end_of_turn_ids


def label_pairs(beir_dir: str, split: str, dev_queries: int, pairs: int, seed: int, negatives: str = "hard"):
    """(query, document, label): positives and negatives of the held-out dev queries, balanced and shuffled."""
    rng = random.Random(seed)
    positive_pairs, negative_pairs = label_pools(beir_dir, split, dev_queries, seed, negatives, rng)
    half = min(pairs // 2, len(positive_pairs), len(negative_pairs))
    chosen = [(q, d, 1) for q, d in rng.sample(positive_pairs, half)]
    chosen += [(q, d, 0) for q, d in rng.sample(negative_pairs, half)]
    rng.shuffle(chosen)
    return chosen


def label_pools(beir_dir: str, split: str, dev_queries: int, seed: int, negatives: str = "hard",
                rng: random.Random | None = None):
    """Every (query, document) positive and negative of the held-out dev queries that label_pairs samples from.

    negatives="hard": unjudged documents from BM25's top 20 (the reranking task); "random": unjudged documents
    drawn from the whole corpus (does the model see any match between query and document at all?). A judged
    document is never a negative, whatever its grade: a 0 grade may still be on topic. `rng` draws the random
    negatives (label_pairs passes the one it samples with, so a seed gives the same pairs as ever).
    """
    from ..evaluation.beir import load_beir

    if negatives not in ("hard", "random"):
        raise ValueError(f"negatives must be 'hard' or 'random', not {negatives!r}")
    data = load_beir(beir_dir, split)
    held_out = from_beir(data, DataConfig(dev_queries=dev_queries, dev_top_k=20, max_train_queries=0), seed).dev
    rng = rng or random.Random(seed)
    all_doc_ids = list(data.corpus)
    positive_pairs, negative_pairs = [], []
    for query in held_out:
        for candidate in query.candidates:
            if candidate.grade > 0:
                positive_pairs.append((query.query, candidate.text))
            elif negatives == "hard" and candidate.doc_id not in query.qrels:
                negative_pairs.append((query.query, candidate.text))
        for doc_id, grade in query.qrels.items():
            if grade > 0 and doc_id not in {c.doc_id for c in query.candidates} and doc_id in data.corpus:
                positive_pairs.append((query.query, data.corpus[doc_id].full_text))
        if negatives == "random":
            # As many per query as BM25 would have offered, so both kinds weigh the queries alike.
            drawn = 0
            while drawn < len(query.candidates):
                doc_id = all_doc_ids[rng.randrange(len(all_doc_ids))]
                if doc_id not in query.qrels:
                    negative_pairs.append((query.query, data.corpus[doc_id].full_text))
                    drawn += 1
    return positive_pairs, negative_pairs


def pairwise_auc(scores: np.ndarray, labels: np.ndarray) -> float | None:
    """Share of (positive, negative) pairs whose scores are in the right order, ties counted half."""
    positive, negative = scores[labels == 1], scores[labels == 0]
    if not len(positive) or not len(negative):
        return None
    difference = positive[:, None] - negative[None, :]
    return float(np.mean((difference > 0) + 0.5 * (difference == 0)))


@torch.no_grad()
def label_answers(model_dir: str, pairs, max_length: int, max_new_tokens: int = 2, batch_size: int = 8) -> dict:
    """Greedy completions of the contract prompts, in left-padded batches (generation reads the mask)."""
    from ..contract import left_pad

    model, tokenizer, prompts = load_model_and_tokenizer(model_dir, max_length)
    model.eval()
    end_ids = end_of_turn_ids(tokenizer)
    labels = [p[2] for p in pairs]
    token_ids = prompts.build_pairs((q, d) for q, d, _ in pairs)
    formatted = correct = first_is_label = first_correct = answered_one = 0
    first_step_scores, examples = [], []
    for start in range(0, len(token_ids), batch_size):
        ids, mask = left_pad(token_ids[start:start + batch_size], pad_id=tokenizer.pad_token_id)
        out = model.generate(torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
                             max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id,
                             eos_token_id=sorted(end_ids), output_logits=True, return_dict_in_generate=True)
        # The first step's logits are the scoring position: logit("1") - logit("0") is the score.
        first = out.logits[0].float()
        first_step_scores.extend((first[:, prompts.positive_token_id] - first[:, prompts.negative_token_id]).tolist())
        for row, label in zip(out.sequences[:, ids.shape[1]:].tolist(), labels[start:start + batch_size]):
            completion = row
            # Generation pads finished rows; trailing pads after an end-of-turn token are not part of the answer.
            while len(completion) > 1 and completion[-1] == tokenizer.pad_token_id and completion[-2] in end_ids:
                completion = completion[:-1]
            ok = bool(completion) and completion[0] in (prompts.positive_token_id, prompts.negative_token_id) and all(
                t in end_ids for t in completion[1:])
            formatted += ok
            wanted = prompts.positive_token_id if label else prompts.negative_token_id
            correct += ok and completion[0] == wanted
            # The first token alone is what the score reads, whatever follows it.
            first_is_label += completion[0] in (prompts.positive_token_id, prompts.negative_token_id)
            first_correct += completion[0] == wanted
            answered_one += completion[0] == prompts.positive_token_id
            if len(examples) < 8:
                examples.append(tokenizer.decode(completion))
    scores = np.array(first_step_scores)
    labels = np.array(labels)
    return {
        "pairs": len(pairs),
        "format_success": formatted / len(pairs),
        "label_accuracy": correct / len(pairs),
        "first_token_is_label": first_is_label / len(pairs),
        "first_token_accuracy": first_correct / len(pairs),
        "score_sign_accuracy": float(np.mean((scores > 0) == (labels == 1))),
        # Threshold-free: does the score order positives above negatives, whatever its offset?
        "score_auc": pairwise_auc(scores, labels),
        "first_token_one_share": answered_one / len(pairs),
        "example_completions": examples,
    }


def test_ndcg(model_dir: str | None, beir_dir: str, split: str, queries: int, top_k: int, max_length: int,
              bf16: bool = False) -> dict:
    """nDCG@10 of BM25 (model_dir None) or of a checkpoint reranking BM25's top_k, first `queries` queries."""
    from ..evaluation.beir import load_beir
    from ..evaluation.bm25 import BM25Retriever
    from ..evaluation.metrics import evaluate_run

    data = load_beir(beir_dir, split)
    qids = list(data.queries)[:queries]
    hits, bm25_scores = BM25Retriever(data.corpus).retrieve([data.queries[q] for q in qids], top_k)
    qrels = {q: data.qrels[q] for q in qids}
    if model_dir is None:
        run = {q: {d: float(s) for d, s in zip(docs, row)} for q, docs, row in zip(qids, hits, bm25_scores)}
    else:
        model, _, prompts = load_model_and_tokenizer(model_dir, max_length)
        token_ids = [ids for q, docs in zip(qids, hits)
                     for ids in prompts.build(data.queries[q], [data.corpus[d].full_text for d in docs])]
        start = time.time()
        scores = score_prompts(model, prompts, token_ids, batch_size=16,
                               autocast_dtype=torch.bfloat16 if bf16 else None)
        rate = len(token_ids) / (time.time() - start)
        flat = iter(scores.tolist())
        run = {q: {d: next(flat) for d in docs} for q, docs in zip(qids, hits)}
    result = evaluate_run(qrels, run, k_values=10, recall_k=top_k)["mean"]
    out = {"queries": len(qids), "top_k": top_k, "ndcg@10": result["ndcg@10"]}
    if model_dir is not None:
        out["pairs_per_s"] = round(rate, 2)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--beir", required=True, help="BEIR folder with train and test qrels (e.g. SciFact)")
    parser.add_argument("--model", action="append", default=[], metavar="NAME=PATH",
                        help="a checkpoint to measure, e.g. zero_shot=smollm2 or stage1=runs/x/stage1 (repeat)")
    parser.add_argument("--output", required=True, help="JSON file to write")
    parser.add_argument("--test-queries", type=int, default=60)
    parser.add_argument("--top-k", type=int, default=20)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--label-pairs", type=int, default=100)
    parser.add_argument("--label-negatives", choices=("hard", "random"), default="hard",
                        help="negatives of the label pairs: BM25's unjudged top 20 (hard) or the whole corpus (random)")
    parser.add_argument("--dev-queries", type=int, default=100,
                        help="train-split queries held out (same seed as training, so never trained on)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--bf16", action="store_true", help="score with bf16 autocast (else fp32)")
    parser.add_argument("--skip-labels", action="store_true", help="only the nDCG@10 figures")
    parser.add_argument("--skip-ndcg", action="store_true", help="only the label-answer figures")
    args = parser.parse_args(argv)

    models = []
    for item in args.model:
        name, sep, path = item.partition("=")
        if not sep:
            parser.error(f"--model {item!r}: expected NAME=PATH")
        models.append((name, path))
    report: dict = {"settings": vars(args), "models": {}}
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    write = lambda: output.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")  # noqa: E731
    if not args.skip_ndcg:
        report["bm25"] = test_ndcg(None, args.beir, "test", args.test_queries, args.top_k, args.max_length)
        print("bm25", report["bm25"], file=sys.stderr)
    pairs = [] if args.skip_labels else label_pairs(args.beir, "train", args.dev_queries, args.label_pairs, args.seed,
                                                      args.label_negatives)
    for name, path in models:
        entry = report["models"].setdefault(name, {"path": path})
        if pairs:
            entry["labels"] = label_answers(path, pairs, args.max_length)
            print(name, entry["labels"], file=sys.stderr)
            write()
        if not args.skip_ndcg:
            entry["test"] = test_ndcg(path, args.beir, "test", args.test_queries, args.top_k, args.max_length,
                                       args.bf16)
            print(name, entry["test"], file=sys.stderr)
        write()
    write()
    return 0


if __name__ == "__main__":
    sys.exit(main())
