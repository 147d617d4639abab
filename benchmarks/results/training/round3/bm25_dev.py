from prorank_edge.train.config import load_config
from prorank_edge.train.data import load_training_data
from prorank_edge.evaluation.metrics import evaluate_run
cfg = load_config("train/configs/cpu_smollm2_round3.yaml")
data = load_training_data(cfg.data, seed=cfg.seed)
for n in (30, 100):
    dev = data.dev_sample(n)
    run = {q.query_id: {c.doc_id: float(len(q.candidates) - i) for i, c in enumerate(q.candidates)} for q in dev}
    qrels = {q.query_id: q.qrels for q in dev}
    print(n, "BM25 dev nDCG@10", round(evaluate_run(qrels, run, k_values=10, recall_k=10)["mean"]["ndcg@10"], 4))
