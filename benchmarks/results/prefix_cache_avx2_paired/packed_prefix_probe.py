"""Probe (not adopted): the torch prefix path as one packed row per call, against the shipped path.

The prefix (when not cached) and every suffix are concatenated into one row, so the GEMMs see no padding and
there is no separate prefix call; a registered transformers attention function gathers each suffix's queries,
keys and values into a padded [batch, heads, S, D] block behind the prefix's keys and runs one SDPA with the
block mask. Scores equal the shipped path's (0.0 difference on two queries; 2.7e-5 against whole prompts).

    .venv/bin/python benchmarks/results/prefix_cache_avx2_paired/packed_prefix_probe.py 3 8 [chunks]

AMD EPYC, AVX2 only, 2 cores, torch 2.13.0, transformers 4.57.6, 2026-12-07; 3 SciFact test queries x BM25
top 10, 8 alternations, per-query paired medians against the cache off: shipped 1.158x, packed 1.145x; sums of
times 127.3 s (off), 108.9 s (shipped), 110.2 s (packed). Whole prompts packed (no cache) ran 5-8% slower than
the padded batch on one low-padding query.
`chunks` (a third argument) takes prefix_cache.py's ~150-token chunks in 512-token prompts instead: one query, one
round, run beside a training job, read packed 1.59x against the shipped 1.14x; measured cleanly afterwards
(../prefix_cache_avx2_packed/ab.json, 6 queries x 4 rounds) the difference is 1.03x, so that reading was the
neighbour's.
"""
import time, sys, types, numpy as np, torch
sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[3]))
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
from transformers.integrations.sdpa_attention import sdpa_attention_forward
import torch.nn.functional as F

NAME = "prorank_packed"

class Layout:
    def __init__(self, P, lengths, kv=None, device="cpu"):
        self.P, self.fresh = P, kv is None
        self.kv = [None] * 64 if kv is None else kv
        B, S = len(lengths), max(lengths)
        off = P if self.fresh else 0
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]) + off
        steps = np.arange(S)
        lengths = np.asarray(lengths)
        real = steps[None, :] < lengths[:, None]
        rows = np.where(real, starts[:, None] + steps[None, :], starts[:, None])
        self.rows = torch.from_numpy(rows).to(device)
        self.real_flat = torch.from_numpy(np.flatnonzero(real.reshape(-1))).to(device)
        self.last = torch.from_numpy(starts + lengths - 1).to(device)
        kmask = np.concatenate([np.ones((B, S, P), bool), (steps[None, None, :] <= steps[None, :, None]) & real[:, None, :]], axis=2)
        kmask[:, :, P:] |= np.eye(S, dtype=bool)[None]  # a pad query sees itself
        self.mask = torch.from_numpy(kmask[:, None]).to(device)
        self.B, self.S = B, S

    def attend(self, layer, q, k, v, scaling):
        H, D = q.shape[1], q.shape[3]
        P = self.P
        parts = []
        if P == 0:
            pk = pv = None
        elif self.fresh:
            pk, pv = k[:, :, :P], v[:, :, :P]
            self.kv[layer] = (pk, pv)
            parts.append(F.scaled_dot_product_attention(q[:, :, :P], pk, pv, is_causal=True, scale=scaling, enable_gqa=True)[0])
        else:
            pk, pv = self.kv[layer]
        qs = q[0][:, self.rows].transpose(0, 1)
        ks = k[0][:, self.rows].transpose(0, 1)
        vs = v[0][:, self.rows].transpose(0, 1)
        if pk is not None:
            ks = torch.cat([pk.expand(self.B, -1, -1, -1), ks], dim=2)
            vs = torch.cat([pv.expand(self.B, -1, -1, -1), vs], dim=2)
        out = F.scaled_dot_product_attention(qs, ks, vs, attn_mask=self.mask, scale=scaling, enable_gqa=True)
        parts.append(out.transpose(0, 1).reshape(H, self.B * self.S, D)[:, self.real_flat])
        return torch.cat(parts, dim=1).transpose(0, 1).unsqueeze(0), None

def packed_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, prefix_layout=None, **kw):
    if prefix_layout is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kw)
    return prefix_layout.attend(module.layer_idx, query, key, value, scaling)

AttentionInterface.register(NAME, packed_attention)
AttentionMaskInterface.register(NAME, sdpa_mask)

def packed_scores(backend, prefix, suffixes):
    key = tuple(prefix)
    cached = backend._pk if getattr(backend, "_pk", None) and backend._pk[0] == key else None
    lay = Layout(len(key), [len(s) for s in suffixes], None if cached is None else cached[1])
    ids = (list(key) if cached is None else []) + [t for s in suffixes for t in s]
    pos = (list(range(len(key))) if cached is None else []) + [len(key) + i for s in suffixes for i in range(len(s))]
    with torch.inference_mode():
        h = backend.body(input_ids=torch.tensor([ids]), position_ids=torch.tensor([pos]), attention_mask=lay.mask,
                         use_cache=False, prefix_layout=lay).last_hidden_state[0, lay.last]
        s = h.float() @ backend.head_row + backend.head_offset
    backend._pk = (key, lay.kv)
    return s.numpy()


def packed_whole(backend, prompts):
    lay = Layout(0, [len(s) for s in prompts], [None] * 64)
    ids = [t for s in prompts for t in s]
    pos = [i for s in prompts for i in range(len(s))]
    with torch.inference_mode():
        h = backend.body(input_ids=torch.tensor([ids]), position_ids=torch.tensor([pos]), attention_mask=lay.mask,
                         use_cache=False, prefix_layout=lay).last_hidden_state[0, lay.last]
        s = h.float() @ backend.head_row + backend.head_offset
    return s.numpy()

from prorank_edge.reranker import Reranker
from prorank_edge.evaluation.beir import load_beir
from prorank_edge.evaluation.bm25 import BM25Retriever
root = __import__("pathlib").Path(__file__).resolve().parents[4] / "shared/data/beir/scifact"
chunks = len(sys.argv) > 3 and sys.argv[3] == "chunks"
if chunks:  # prefix_cache.py's ~150-token chunks in 512-token prompts with the long instruction, 20 a query
    from prorank_edge.benchmarks.prefix_cache import LONG_INSTRUCTION, build_workloads
    workload = build_workloads(root, int(sys.argv[1]), [], 20)[-1]
    work = [(q["text"], q["documents"]) for q in workload["queries"]]
    max_length, instruction = 512, LONG_INSTRUCTION
else:
    data = load_beir(str(root), "test")
    qids = list(data.queries)[:int(sys.argv[1])]
    docs, _ = BM25Retriever(data.corpus).retrieve([data.queries[q] for q in qids], 10)
    work = [(data.queries[q], [data.corpus[x].full_text for x in d]) for q, d in zip(qids, docs)]
    max_length, instruction = None, None
rr = {}
for name in ("old-off", "old-on", "packed-on"):
    r = Reranker(backend="torch", device="cpu", dtype="float32", batch_size=16, prefix_cache=name.endswith("-on"),
                 max_length=max_length)
    if name.startswith("packed"):
        be = r.backend
        be.model.config._attn_implementation = NAME
        be.padding_call_cost = None
        be._pk = None
        be.score_with_prefix = types.MethodType(lambda self, p, s: packed_scores(self, p, s), be)
    rr[name] = r
first = {n: {x["corpus_id"]: x["score"] for x in r.rank(*work[0], instruction=instruction)} for n, r in rr.items()}
for n in ("old-on", "packed-on"):
    print(n, "max |score - old-off| on the first query", max(abs(first[n][i] - first["old-off"][i]) for i in first[n]))
times = {n: [] for n in rr}
names = list(rr)
for rnd in range(int(sys.argv[2])):
    for q, d in work:
        order = names if rnd % 2 == 0 else names[::-1]
        for n in order:
            t = time.perf_counter(); rr[n].rank(q, d, instruction=instruction); times[n].append(time.perf_counter() - t)
t = {n: np.array(v) for n, v in times.items()}
for n in ("old-on", "packed-on"):
    ratio = t["old-off"] / t[n]
    print(n, "vs old-off: median paired", round(float(np.median(ratio)), 3), "best/best", round(float(t["old-off"].min() / t[n].min()), 3), "sum", round(float(t["old-off"].sum() / t[n].sum()), 3))
print({n: round(float(v.sum()), 1) for n, v in t.items()})
