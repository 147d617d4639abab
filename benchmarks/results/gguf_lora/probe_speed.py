import sys, time
from pathlib import Path
sys.path[:0] = [str(Path(__file__).resolve().parents[3]), str(Path(__file__).parent)]
from probe_base_plus_lora import LoraBackend, OUT
from prorank_edge.evaluation.beir import load_beir
from prorank_edge.evaluation.evaluate import evaluate_reranker
from prorank_edge.reranker import Reranker
beir = load_beir("../shared/data/beir/scifact", "test")
for spec in sys.argv[1:]:
    base, _, lora = spec.partition("+")
    backend = LoraBackend(OUT / base, OUT / lora if lora else None)
    r = Reranker.from_backend(backend)
    best = 1e9
    for rep in range(3):
        t = time.perf_counter()
        evaluate_reranker(beir, r, top_k=20, max_queries=4, show_progress=False)
        best = min(best, time.perf_counter() - t)
    print(f"{spec}: {80/best:.2f} pairs/s", flush=True)
    backend.close()
