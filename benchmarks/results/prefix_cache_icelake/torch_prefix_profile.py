"""Issue 16, torch fp32: repeated on/off timings and the op time split into the prefix pass and the suffix pass."""
import sys, time, json, statistics
from pathlib import Path
REPO = Path(__file__).resolve().parents[3]
sys.path[:0] = [str(REPO), str(REPO / "benchmarks")]
import torch
from prefix_cache import build_workloads, LOCAL_SCIFACT
from prorank_edge.reranker import Reranker
from torch.profiler import profile, ProfilerActivity, record_function
import prorank_edge.backends.torch_backend as tb

top_k, reps = int(sys.argv[1]), int(sys.argv[2])
if top_k:
    wl = build_workloads(LOCAL_SCIFACT, 3, [top_k], 0, passages=False)[0]
else:  # the 512-token chunk workload
    wl = build_workloads(LOCAL_SCIFACT, 3, [], 20, passages=True)[1]
print(wl["name"])
queries = wl["queries"]
rr = {c: Reranker("default", backend="torch", device="cpu", threads=2, dtype="float32", prefix_cache=c, max_length=wl["max_length"]) for c in (True, False)}
inst = wl["instruction"]
for r in rr.values():
    r.rank(queries[0]["text"], queries[0]["documents"][:4], instruction=inst)
times = {True: [], False: []}
for rep in range(reps):
    for c in ((True, False) if rep % 2 == 0 else (False, True)):
        t0 = time.perf_counter()
        for q in queries:
            rr[c].rank(q["text"], q["documents"], instruction=inst)
        times[c].append(time.perf_counter() - t0)
b = rr[True].backend.token_counts
out = {"top_k": top_k, "times": {str(c): v for c, v in times.items()},
       "speedup_best": min(times[False]) / min(times[True]),
       "speedup_median": statistics.median(times[False]) / statistics.median(times[True])}
# label the two passes
orig_prefix, orig_suffix = tb.prefix_key_values, tb.suffix_scores
shapes = {"prefix": [], "suffix": [], "whole": []}
def pk(*a, **k):
    shapes["prefix"].append(tuple(a[1].shape))
    with record_function("PREFIX_PASS"):
        return orig_prefix(*a, **k)
def ss(*a, **k):
    shapes["suffix"].append((tuple(a[4].shape), int(a[5].sum())))
    with record_function("SUFFIX_PASS"):
        return orig_suffix(*a, **k)
tb.prefix_key_values, tb.suffix_scores = pk, ss
orig_last = tb.last_position_scores
def ls(*a, **k):
    shapes["whole"].append((tuple(a[3].shape), int(a[4].sum())))
    with record_function("WHOLE_PASS"):
        return orig_last(*a, **k)
tb.last_position_scores = ls
for c in (False, True):
    t0 = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for q in queries:
            rr[c].rank(q["text"], q["documents"], instruction=inst)
    wall = time.perf_counter() - t0
    ev = {e.key: e for e in prof.key_averages()}
    row = {"wall_s": wall}
    for k in ("PREFIX_PASS", "SUFFIX_PASS", "WHOLE_PASS", "aten::mm", "aten::_scaled_dot_product_flash_attention_for_cpu"):
        if k in ev:
            row[k] = round(ev[k].cpu_time_total / 1e6, 3)
    out[f"profile_cache_{c}"] = row
out["shapes"] = shapes
print(json.dumps(out))
