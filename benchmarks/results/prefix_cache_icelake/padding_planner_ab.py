"""A/B of the padding-aware batch planner (contract.length_batches call_cost): same Reranker, call cost None vs 64."""
import sys, time, json, statistics
from pathlib import Path
REPO = Path(__file__).resolve().parents[3]
sys.path[:0] = [str(REPO), str(REPO / "benchmarks")]
from prefix_cache import build_workloads, LOCAL_SCIFACT
from prorank_edge.reranker import Reranker

variant = sys.argv[1]  # torch-fp32 | onnx-fp32
reps = int(sys.argv[2])
model = "default" if variant.startswith("torch") else "/root/.cache/prorank-edge/bench-artifacts/SmolLM2-135M-Instruct-prorank-f5da8765827a-e157e81bf4-fp32-r3-onnx"
opts = {"dtype": "float32"} if variant.startswith("torch") else {}
backend = variant.split("-")[0]
wls = build_workloads(LOCAL_SCIFACT, 3, [20], 20, passages=True)
wls = [wls[0], wls[2]]  # SciFact top 20, 512-token chunks
out = {"variant": variant, "rows": []}
for wl in wls:
    for cache in (True, False):
        r = Reranker(model, backend=backend, device="cpu", threads=2, max_length=wl["max_length"], prefix_cache=cache, **opts)
        inst = wl["instruction"]
        q0 = wl["queries"][0]
        r.rank(q0["text"], q0["documents"][:4], instruction=inst)
        times = {"greedy": [], "planned": []}
        for rep in range(reps):
            for mode in (("greedy", "planned") if rep % 2 == 0 else ("planned", "greedy")):
                r.backend.padding_call_cost = None if mode == "greedy" else 64
                t0 = time.perf_counter()
                for q in wl["queries"]:
                    r.rank(q["text"], q["documents"], instruction=inst)
                times[mode].append(time.perf_counter() - t0)
        docs = sum(len(q["documents"]) for q in wl["queries"])
        row = {"workload": wl["name"], "prefix_cache": cache,
               "docs_per_s_greedy": docs / min(times["greedy"]), "docs_per_s_planned": docs / min(times["planned"]),
               "paired_median_gain": statistics.median(g / p for g, p in zip(times["greedy"], times["planned"])),
               "times": times}
        row["best_gain"] = row["docs_per_s_planned"] / row["docs_per_s_greedy"]
        print(json.dumps({k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items() if k != "times"}), flush=True)
        out["rows"].append(row)
        r.close()
json.dump(out, open(Path(__file__).with_name(f"padding_planner_{variant}.json"), "w"), indent=1)
