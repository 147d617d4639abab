"""docs/s of GgufBackend with the prefix cache, per config; run alone on a quiet machine. Best of R passes."""
import sys, json, time, os, subprocess
sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[3]))
from pathlib import Path
CHILD = r'''
import sys, json, time
from prorank_edge.backends.gguf_backend import GgufBackend
from prorank_edge.contract import shared_prefix_length
path, cfg, work, reps = sys.argv[1], json.loads(sys.argv[2]), json.load(open(sys.argv[3])), int(sys.argv[4])
be = GgufBackend(path, device="cpu", **cfg)
def one():
    n = 0; t = time.perf_counter()
    for ids in work:
        p = shared_prefix_length(ids)
        be.score_with_prefix(ids[0][:p], [x[p:] for x in ids]); n += len(ids)
    return n / (time.perf_counter() - t)
one()
print(json.dumps(max(one() for _ in range(reps))))
'''
work_file = Path(os.environ.get("WORK", "/tmp/exp/speed_work.json"))
if not work_file.exists():
    from prorank_edge.evaluation.beir import load_beir
    from prorank_edge.benchmarks.harness import build_workload
    data = load_beir(str(Path(sys.path[0]).parent / "shared/data/beir/scifact"), "test")
    w, _ = build_workload(data, Path(os.path.expanduser(os.environ.get("SRC", "~/.cache/prorank-edge/models/SmolLM2-135M-Instruct-prorank-3ae3e2a0e418"))), int(os.environ.get("TOPK", 20)), int(os.environ.get("NQ", 4)), [], 0)
    work_file.write_text(json.dumps([q["token_ids"] for q in w["queries"]]))
files = sys.argv[1].split(","); cfgs = [json.loads(c) for c in sys.argv[2].split(";")]; reps = int(sys.argv[3]) if len(sys.argv) > 3 else 2
for f in files:
    for cfg in cfgs:
        env = dict(os.environ, PYTHONPATH=sys.path[0]); cfg = dict(cfg); repack = cfg.pop("repack", None)
        if repack is not None: env["PRORANK_EDGE_LLAMA_REPACK"] = str(repack)
        out = subprocess.run([sys.executable, "-c", CHILD, f, json.dumps(cfg), str(work_file), str(reps)], capture_output=True, text=True, env=env)
        res = out.stdout.strip().splitlines()[-1] if out.returncode == 0 else f"FAILED {out.returncode} {out.stderr[-300:]}"
        print(Path(f).name, "repack", repack, cfg, "docs/s", res, flush=True)
