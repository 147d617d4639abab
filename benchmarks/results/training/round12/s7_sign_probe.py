"""1-bit fidelity probe: sign adapter of a trained checkpoint against the checkpoint, on dev pairs (torch fp32)."""
import sys, json, tempfile, numpy as np
from prorank_edge.adapter import make_sign_adapter, apply_adapter
from prorank_edge.evaluation.beir import load_beir
from prorank_edge.evaluation.evaluate import evaluate_reranker
from prorank_edge.train.adapter_cmd import held_out_dev
from prorank_edge.export.parity import spearman
from prorank_edge.reranker import Reranker
trained, start, out, nq = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
base = '/root/.cache/prorank-edge/models/SmolLM2-135M-Instruct'
info = make_sign_adapter(base, trained, out + '/adapter', start, base_name='smollm2')
errs = [v for k, v in info['relative_error'].items() if v > 0]
print('bytes', info['bytes'], 'rel err 2-D mean', np.mean(errs), 'min', min(errs), 'max', max(errs), flush=True)
apply_adapter(base, out + '/adapter', out + '/merged')
dev = held_out_dev(load_beir('../shared/data/beir/scifact', 'train'), 100, 0)
res = {}
for name, path in (('trained', trained), ('sign', out + '/merged')):
    with Reranker(path, backend='torch', device='cpu', dtype=sys.argv[5] if len(sys.argv) > 5 else 'auto') as r:
        rep = evaluate_reranker(dev, r, top_k=10, max_queries=nq)
    res[name] = rep
    print(name, rep.metrics['reranker']['ndcg@10'], flush=True)
per_q = [spearman(np.array([c.rerank_score for c in res['sign'].candidates[q]]),
                  np.array([c.rerank_score for c in res['trained'].candidates[q]])) for q in res['sign'].candidates]
diff = np.concatenate([np.array([c.rerank_score for c in res['sign'].candidates[q]]) -
                       np.array([c.rerank_score for c in res['trained'].candidates[q]]) for q in res['sign'].candidates])
print(json.dumps({'spearman_per_query_mean': float(np.mean(per_q)), 'mean_abs_diff': float(np.abs(diff).mean()),
                  'ndcg_trained': res['trained'].metrics['reranker']['ndcg@10'],
                  'ndcg_sign': res['sign'].metrics['reranker']['ndcg@10']}))
