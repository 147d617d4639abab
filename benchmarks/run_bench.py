#!/usr/bin/env python
"""The full CPU benchmark of the default model (SmolLM2-135M-Instruct) on SciFact, written to benchmarks/results/.

Every backend/quant variant, the MiniLM and BM25 peers, the bare engines and the scale sweeps, at a size that
finishes in well under an hour on a 2-core CPU. Any option of `prorank-edge bench` can be overridden:

    python benchmarks/run_bench.py                       # the defaults below
    python benchmarks/run_bench.py --max-queries 100 --top-k 50 --repeats 3

Exported artifacts are kept in the prorank-edge cache (<cache>/bench-artifacts), not in the repository.
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from prorank_edge.commands.bench_cmd import bench_command  # noqa: E402

# The SciFact copy this project's machines share; elsewhere the name makes bench download it once.
LOCAL_SCIFACT = REPO.parent / "shared" / "data" / "beir" / "scifact"

DEFAULTS = [
    "--data", str(LOCAL_SCIFACT) if (LOCAL_SCIFACT / "corpus.jsonl").is_file() else "scifact",
    "--split", "test",
    "--max-queries", "30",
    "--top-k", "20",
    "--repeats", "2",
    "--output-dir", str(REPO / "benchmarks" / "results"),
    # The sweeps run on one variant per engine (the export defaults) to keep the run short.
    "--scale-formats", "torch-fp32,onnx-int8,gguf-q8_0",
    "--nice", "10",
]

if __name__ == "__main__":
    # Options given on the command line come after the defaults, so they win.
    bench_command.main(args=DEFAULTS + sys.argv[1:], prog_name="run_bench.py", standalone_mode=True)
