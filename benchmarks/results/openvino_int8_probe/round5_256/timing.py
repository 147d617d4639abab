"""The timing both project-venv scripts share (as time_int8.py times OpenVINO): the first 96 eval prompts, whole,
in batches of 16 longest first, warm-up once, best of 3."""
import time

import numpy as np

HERE = "/work/nncf_proto"


def eval_rows(count=None):
    """eval.npz's prompts as token-id lists (all, or the first `count`), and the file's arrays."""
    z = np.load(f"{HERE}/eval.npz")
    flat, offs = z["flat"], z["offsets"]
    return [flat[offs[i]:offs[i + 1]].tolist() for i in range(count or len(offs) - 1)], z


def best_docs_per_s(score_batch, rows, count=96, size=16, repeats=3):
    """(docs/s, best seconds) of score_batch over the first `count` rows."""
    order = sorted(range(count), key=lambda i: -len(rows[i]))
    batches = [[rows[i] for i in order[s:s + size]] for s in range(0, count, size)]
    score_batch(batches[0])
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        for batch in batches:
            score_batch(batch)
        best = min(best, time.perf_counter() - started)
    return count / best, best
