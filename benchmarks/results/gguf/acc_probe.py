"""Per-query Spearman vs torch fp32 and nDCG@10, SciFact test, BM25 top K, for GGUF files (plain vs rank-head)."""
import sys, json, time, os
sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[3]))
from pathlib import Path
import numpy as np
from prorank_edge.evaluation.beir import load_beir
from prorank_edge.benchmarks.harness import build_workload, accuracy
from prorank_edge.export.parity import spearman
from prorank_edge.export.gguf_export import export_gguf
from prorank_edge.backends.gguf_backend import GgufBackend
from prorank_edge.backends.llama_runtime import import_llama_cpp, load_gguf_model, rank_pooling_scores
src = Path(os.path.expanduser(sys.argv[1])); nq = int(sys.argv[2]); topk = int(sys.argv[3]); variants = sys.argv[4].split(",")
data = load_beir(str(Path(sys.path[0]).parent / "shared/data/beir/scifact"), "test")
work, _ = build_workload(data, src, topk, nq, [], 0)
qs = work["queries"]; qids = [q["qid"] for q in qs]; docids = [q["doc_ids"] for q in qs]
refp = Path(f"/tmp/exp/ref_{src.name}_{nq}_{topk}.json")
if refp.exists():
    ref = json.loads(refp.read_text())
else:
    from prorank_edge.backends.torch_backend import TorchBackend
    tb = TorchBackend(src, device="cpu", dtype="float32")
    ref = [tb.score_batch(q["token_ids"]).tolist() for q in qs]; refp.write_text(json.dumps(ref))
print("torch fp32", accuracy(data.qrels, qids, docids, ref, topk), flush=True)
lc = import_llama_cpp()
for v in variants:
    if v.endswith(".gguf"):
        path, rh = Path(v), "plain"
    else:
        quant, rh = v.split(":") if ":" in v else (v, "plain")
        path = Path(f"/tmp/exp/rh/{src.name}-{quant}-{rh}.gguf")
    if not path.exists():
        t = time.time(); info = export_gguf(src, path, quant, overwrite=True, rank_head=rh == "rh")
        print("exported", path.name, info["bytes"] // 10**6, "MB", round(time.time() - t), "s", info.get("quant_fallback"), flush=True)
    be = GgufBackend(path, device="cpu")
    sc = [be.score_batch(q["token_ids"]).tolist() for q in qs]; be.close()
    rho = np.mean([spearman(np.array(a), np.array(b)) for a, b in zip(sc, ref)])
    maxd = max(np.abs(np.array(a) - np.array(b)).max() for a, b in zip(sc, ref))
    line = f"{path.name}: logits Spearman {rho:.4f} max|d| {maxd:.3f} {accuracy(data.qrels, qids, docids, sc, topk)}"
    if rh == "rh":
        m = load_gguf_model(lc, path)
        rp = [rank_pooling_scores(lc, m, q["token_ids"]) for q in qs]
        rrho = np.mean([spearman(np.array(a), np.array(b)) for a, b in zip(rp, ref)])
        agree = np.mean([spearman(np.array(a), np.array(b)) for a, b in zip(rp, sc)])
        rmax = max(np.abs(np.array(a) - np.array(b)).max() for a, b in zip(rp, sc))
        line += f" | rank pooling Spearman {rrho:.4f}, vs own logits Spearman {agree:.4f} max|d| {rmax:.4f} {accuracy(data.qrels, qids, docids, rp, topk)}"
    print(line, flush=True)
