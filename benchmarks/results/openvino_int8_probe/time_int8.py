#!/usr/bin/env python
"""Timing: OpenVINO fp32 IR in bf16 inference precision vs the NNCF int8 IR (w8a8), same prompts, 2 threads.

Run when the CPU is idle:  /work/nncf_venv/bin/python /work/nncf_proto/time_int8.py [--int8 DIR/model.xml]
(/work/main/.venv/bin/python works too: it needs only openvino and numpy). --smoke: one batch, one repetition.
Prompts: the first 96 of /work/nncf_proto/eval.npz (real SciFact test prompts, 160 tokens, prorank contract),
batches of 16, left-padded like the project's backends; warm-up once, then best of 3 passes over all prompts.
"""
import argparse, os, platform, time
import numpy as np
import openvino as ov

HERE = os.path.dirname(os.path.abspath(__file__))
p = argparse.ArgumentParser()
p.add_argument("--fp32", default=f"{HERE}/ir-fp32/model.xml")
p.add_argument("--int8", default=f"{HERE}/int8_best/model.xml")
p.add_argument("--prompts", default=f"{HERE}/eval.npz")
p.add_argument("-n", type=int, default=96)
p.add_argument("--batch", type=int, default=16)
p.add_argument("--threads", type=int, default=2)
p.add_argument("--repeats", type=int, default=3)
p.add_argument("--smoke", action="store_true")
a = p.parse_args()

z = np.load(a.prompts)
flat, offs = z["flat"], z["offsets"]
rows = [flat[offs[i]:offs[i + 1]] for i in range(min(a.n, len(offs) - 1))]
order = sorted(range(len(rows)), key=lambda i: -len(rows[i]))
feeds = []
for s in range(0, len(order), a.batch):
    b = [rows[i] for i in order[s:s + a.batch]]
    w = max(len(r) for r in b)
    ids = np.zeros((len(b), w), np.int64)
    mask = np.zeros((len(b), w), np.int64)
    for j, r in enumerate(b):
        ids[j, w - len(r):] = r
        mask[j, w - len(r):] = 1
    feeds.append({"input_ids": ids, "attention_mask": mask})
if a.smoke:
    feeds, a.repeats = feeds[:1], 1
docs = sum(f["input_ids"].shape[0] for f in feeds)

flags = set()
with open("/proc/cpuinfo") as f:
    for line in f:
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            break
model_name = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
print(f"CPU: {model_name}; {os.cpu_count()} logical CPUs; load average {os.getloadavg()}")
print("flags:", " ".join(sorted(x for x in flags if x.startswith(("avx512", "amx", "avx_vnni", "avx2", "fma")))))
print(f"openvino {ov.__version__}; {docs} prompts ({len(feeds)} batches of <= {a.batch}), {a.threads} threads, "
      f"best of {a.repeats}")

core = ov.Core()


def run(path, precision):
    cfg = {"INFERENCE_PRECISION_HINT": precision, "NUM_STREAMS": "1", "PERFORMANCE_HINT": "LATENCY",
           "INFERENCE_NUM_THREADS": str(a.threads)}
    t = time.perf_counter()
    compiled = core.compile_model(path, "CPU", cfg)
    load = time.perf_counter() - t
    req = compiled.create_infer_request()
    req.infer(feeds[0])  # warm-up (first-shape kernels)
    best, scores = float("inf"), None
    for _ in range(a.repeats):
        t = time.perf_counter()
        out = [np.array(req.infer(f)["score"]).reshape(-1) for f in feeds]
        best = min(best, time.perf_counter() - t)
        scores = np.concatenate(out)
    fc = {}
    for op in compiled.get_runtime_model().get_ordered_ops():
        rt = op.get_rt_info()
        if "layerType" in rt and rt["layerType"].astype(str) in ("FullyConnected", "Subgraph"):
            k = f'{rt["layerType"].astype(str)}:{rt["runtimePrecision"].astype(str)}'
            fc[k] = fc.get(k, 0) + 1
    print(f"{os.path.relpath(path, HERE)} @ {precision}: {docs / best:7.2f} docs/s (best {best:.3f} s; "
          f"compile {load:.1f} s) runtime {fc}")
    return docs / best, scores


configs = [("fp32 IR, bf16", a.fp32, "bf16"), ("int8 IR, f32 rest", a.int8, "f32"), ("int8 IR, bf16 rest", a.int8, "bf16")]
res = {name: run(path, prec) for name, path, prec in configs}
base, base_scores = res["fp32 IR, bf16"]
for name, (dps, sc) in res.items():
    print(f"{name:20s} {dps:7.2f} docs/s  x{dps / base:.2f} vs fp32-IR bf16   "
          f"max |score - bf16 score| {np.abs(sc - base_scores).max():.3f}")
