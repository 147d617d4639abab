import sys, os, time, glob
sys.path.insert(0, "/work/main")
import numpy as np, onnx, onnxruntime as ort
from pathlib import Path
from prorank_edge.export import onnx_int8 as oi
from prorank_edge.export.parity import builtin_pairs, spearman
from prorank_edge.evaluation.beir import load_beir
from prorank_edge.evaluation.bm25 import BM25Retriever
from prorank_edge.contract import PromptBuilder, ScoringContract, left_pad
from tokenizers import Tokenizer
A = Path(os.path.expanduser("~/.cache/prorank-edge/bench-artifacts"))
art = next(A.glob("*fp32-r2-onnx")); fp32 = art / "model.onnx"
prompts = PromptBuilder(Tokenizer.from_file(str(art / "tokenizer.json")), ScoringContract.load(art))
NQ = int(os.environ.get("NQ", 16)); K = 20
data = load_beir("../shared/data/beir/scifact", "test")
qids = list(data.queries)[:NQ]
docs, _ = BM25Retriever(data.corpus).retrieve([data.queries[q] for q in qids], K)
groups = [prompts.build(data.queries[q], [data.corpus[d].full_text for d in ds]) for q, ds in zip(qids, docs)]
def feed(g):
    ids, mask = left_pad(g); return {"input_ids": ids, "attention_mask": mask}
def sess(m):
    o = ort.SessionOptions(); o.intra_op_num_threads = 2
    return ort.InferenceSession(m if isinstance(m, (str, bytes)) else m.SerializeToString(), o, providers=["CPUExecutionProvider"])
def score(s): return [s.run(None, feed(g))[0].reshape(-1) for g in groups]
ref_file = Path("/tmp/exp/ref16.npy")
if ref_file.exists(): ref = list(np.load(ref_file, allow_pickle=True))
else:
    ref = score(sess(str(fp32))); np.save(ref_file, np.array(ref, dtype=object), allow_pickle=True)
cal_ids = prompts.build_pairs(builtin_pairs())
t = time.time(); stats = oi.calibrate(fp32, [feed(cal_ids[i:i+8]) for i in range(0, len(cal_ids), 8)]); print("calib", time.time()-t, flush=True)
base = onnx.load(str(fp32))
for spec in sys.argv[1:]:
    alpha, ratio, levels = [float(v) for v in spec.split(",")]
    oi.WEIGHT_LEVELS = int(levels)
    f = oi.channel_factors(stats, alpha, ratio)
    nout = sum(len(v["outliers"]) for v in f.values())
    m = oi.quantize_int8(onnx.ModelProto.FromString(base.SerializeToString()), f)
    s = sess(m); s.run(None, feed(groups[0]))
    t = time.time(); got = score(s); el = time.time() - t
    sp = [spearman(a, b) for a, b in zip(ref, got)]
    print(f"{spec}: outlier channels {nout}; spearman mean {np.mean(sp):.4f} min {np.min(sp):.4f} maxerr {max(np.abs(a-b).max() for a,b in zip(ref,got)):.3f} {NQ*K/el:.2f} docs/s", flush=True)
