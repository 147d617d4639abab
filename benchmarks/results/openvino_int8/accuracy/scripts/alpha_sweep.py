"""Issue 14: SmoothQuant alpha re-chosen under GPTQ rounding. 40 held-out SciFact dev queries x BM25 top 20;
reference OpenVINO f32 of the fp32 graph; each artifact scored as the bench scores (bf16, prefix cache; OV_DTYPE=float32
for OpenVINO's f32 hint). Usage: alpha_sweep.py PATH|ALPHA|ALPHA:calN ... (calN: N training queries, no dev one)"""
import sys, os, json, time, numpy as np
sys.path.insert(0, "/work/nncf_proto")
from common import compare, compile_model, score
from tokenizers import Tokenizer
from prorank_edge.backends.openvino_backend import OpenVinoBackend
from prorank_edge.contract import PromptBuilder, ScoringContract, shared_prefix_length
from prorank_edge.evaluation.beir import load_beir
from prorank_edge.evaluation.bm25 import BM25Retriever
from prorank_edge.evaluation.metrics import evaluate_run
from prorank_edge.train.adapter_cmd import held_out_dev
from prorank_edge.export.parity import beir_calibration_pairs
CACHE = os.path.expanduser("~/.cache/prorank-edge/bench-artifacts/")
ART = CACHE + "SmolLM2-135M-Instruct-prorank-f5da8765827a-cdbc6717f4-fp32-r4-onnx"
SCIFACT = "/work/shared/data/beir/scifact"
dev = held_out_dev(load_beir(SCIFACT, "train"), 100, 0)
qids = list(dev.queries)[10:50]
docs, _ = BM25Retriever(dev.corpus).retrieve([dev.queries[q] for q in qids], 20)
pb = PromptBuilder(Tokenizer.from_file(f"{ART}/tokenizer.json"), ScoringContract.load(ART))
groups = [pb.build(dev.queries[q], [dev.corpus[d].full_text for d in ids]) for q, ids in zip(qids, docs)]
rows = [np.asarray(r, np.int64) for g in groups for r in g]
group = np.repeat(np.arange(len(groups)), 20)
qrels = {q: dev.qrels[q] for q in qids}
def ndcg(s):
    return evaluate_run(qrels, {q: {d: float(s[i * 20 + j]) for j, d in enumerate(ids)}
                                for i, (q, ids) in enumerate(zip(qids, docs))})["mean"]["ndcg@10"]
if os.path.exists("/work/ov3/ref.npy"):
    ref = np.load("/work/ov3/ref.npy")
else:
    ref = score(compile_model(f"{ART}/model.onnx"), rows); np.save("/work/ov3/ref.npy", ref)
print(json.dumps({"variant": "OV f32 of the fp32 graph", "ndcg@10": round(ndcg(ref), 4)}), flush=True)
pairs = beir_calibration_pairs(SCIFACT, "train", 16)
def calibration_without_dev(n):
    """n training queries, none of the 100 held-out dev ones (beir_calibration_pairs' draw, dev ids skipped)."""
    import random
    from prorank_edge.train.data import split_beir_queries
    train = load_beir(SCIFACT, "train"); _, dev_ids = split_beir_queries(train, 100, 0)
    chosen = sorted(train.queries); random.Random(0).shuffle(chosen)
    chosen = [q for q in chosen if q not in set(dev_ids)][:n]
    top, _ = BM25Retriever(train.corpus).retrieve([train.queries[q] for q in chosen], 3)
    rng = random.Random(0); ids = list(train.corpus)
    return [(train.queries[q], train.corpus[d].full_text) for q, ds in zip(chosen, top) for d in [*ds, rng.choice(ids)]]
for arg in sys.argv[1:]:
    if os.path.isdir(arg):
        path, info = arg, {}
    else:
        alpha, _, cal = arg.partition(":")  # "0.95" or "0.95:cal64" (64 training queries, no dev one)
        path = f"/work/ov3/alpha{arg.replace(':', '_')}"; t = time.time()
        info = __import__("prorank_edge.export.openvino_export", fromlist=["x"]).export_openvino(
            ART, path, overwrite=True, calibration_pairs=calibration_without_dev(int(cal[3:])) if cal else pairs,
            alpha=float(alpha))
        info = {"export_s": round(time.time() - t), "gptq_error_vs_nearest": info.get("openvino", {}).get("gptq_error_vs_nearest")}
    b = OpenVinoBackend(path, dtype=os.environ.get("OV_DTYPE", "bfloat16"), threads=2); s = np.zeros(len(rows), np.float32)
    for g, rr in enumerate(groups):
        cut = shared_prefix_length(rr)
        for k in range(0, 20, 16):
            s[g * 20 + k: g * 20 + min(k + 16, 20)] = b.score_with_prefix(rr[0][:cut], [r[cut:] for r in rr[k:k + 16]])
    r = {k: round(v, 4) for k, v in compare(ref, s, group).items()}
    print(json.dumps({"variant": arg, **info, "ndcg@10": round(ndcg(s), 4), **r}), flush=True)
