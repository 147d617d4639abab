"""Dev nDCG@10 of a model on the 100 held-out train queries, BM25 top K (torch, auto dtype), as training's dev eval."""
import sys, json
from prorank_edge.evaluation.beir import load_beir
from prorank_edge.evaluation.evaluate import evaluate_reranker, tune_fusion_weight, add_fusion
from prorank_edge.train.adapter_cmd import held_out_dev
from prorank_edge.reranker import Reranker
path, k = sys.argv[1], int(sys.argv[2])
dev = held_out_dev(load_beir('../shared/data/beir/scifact', 'train'), 100, 0)
with Reranker(path, backend='torch', device='cpu') as r:
    rep = evaluate_reranker(dev, r, top_k=k, max_queries=100)
out = {'model': path, 'top_k': k, 'bm25': rep.metrics['bm25']['ndcg@10'], 'alone': rep.metrics['reranker']['ndcg@10']}
if k >= 20:
    w, grid = tune_fusion_weight(rep)
    out.update(fusion_weight=w, fused=add_fusion(rep, w)['ndcg@10'], grid={str(a): b for a, b in grid.items()})
print(json.dumps(out), flush=True)
