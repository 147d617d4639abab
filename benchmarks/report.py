"""The bench's outputs: bench.json, bench.md (every table) and bench.png (nDCG@10 against documents/second)."""

from __future__ import annotations

import json
import math
from pathlib import Path

from .worker import WARMUP_PAIRS

RESULT_FILES = ("bench.json", "bench.md", "bench.png")


def write_outputs(report: dict, output_dir: Path) -> None:
    (output_dir / "bench.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    (output_dir / "bench.md").write_text(markdown_report(report), encoding="utf-8")
    pareto_chart(report, output_dir / "bench.png")


def _fmt(value, digits: int = 2, suffix: str = "") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return f"{value:,.{digits}f}{suffix}"


def _delta(comparison: dict | None) -> str:
    if not comparison:
        return "–"
    low, high = comparison["ci"]
    return f"{comparison['diff']:+.4f} [{low:+.3f}, {high:+.3f}]"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    rule = "|" + "|".join("---" if i == 0 else "---:" for i in range(len(header))) + "|"
    lines = ["| " + " | ".join(header) + " |", rule]
    return lines + ["| " + " | ".join(r) + " |" for r in rows]


def markdown_report(report: dict) -> str:
    s, m = report["settings"], report["machine"]
    flags = ", ".join(f for f, on in m["cpu_flags"].items() if on) or "none of the listed"
    gemm = m.get("gemm", {})
    peak_text = ", ".join(f"{k[:-7]} {v:.0f} GFLOP/s" for k, v in gemm.items() if k.endswith("_gflops"))
    lines = [
        f"# prorank-edge bench: {s['model_name']} on {s['dataset']} ({s['split']})", "",
        f"{s['queries']} queries x BM25 top {s['top_k']} = {s['pairs']} pairs, the same for every system; "
        f"{s['repeats']} timed repetition(s) after a warm-up of {WARMUP_PAIRS} pairs (not timed); {s['threads']} "
        "thread(s); batch size "
        f"{s['batch_size']}.", "",
        f"Machine: {m['cpu_model']} ({m['architecture']}), {m['logical_cores']} logical cores"
        f"{', ' + str(m['memory_gb']) + ' GB RAM' if 'memory_gb' in m else ''}; ISA flags: {flags}; "
        f"measured GEMM ({gemm.get('size', '?')}^3, torch): {peak_text or 'not measured'}. "
        f"Load average (1, 5, 15 min) at start: {m.get('load_average', '–')}, at the end: "
        f"{report.get('load_average_end', '–')}; above {m['logical_cores']} the machine was shared and every speed "
        "figure is lower than on an idle one.", "",
    ]
    if not report.get("complete", True):
        lines += ["**Partial results**: the run had not measured every system yet when this was written.", ""]
    lines += ["## Accuracy and speed", ""]
    header = ["system", "nDCG@10", "MRR@10", "docs/s", "p50 ms", "p95 ms", "load s", "peak RSS MB", "size MB",
              "Spearman vs fp32 (per query)", "nDCG@10 - fp32 [95%]", "tokens computed / prompt tokens",
              "share of peak", "x torch bf16", "x torch fp32"]
    speeds = {r["name"]: r.get("docs_per_s") for r in report["systems"]}

    def ratio(r, name):
        return _fmt(r["docs_per_s"] / speeds[name], 2, "x") if r.get("docs_per_s") and speeds.get(name) else "–"

    rows = []
    for r in report["systems"]:
        share = r.get("ceiling", {})
        share_text = _fmt(100 * share["share_of_float32_peak"], 1, "%") if "share_of_float32_peak" in share else "–"
        rows.append([r["name"], _fmt(r["ndcg@10"], 4), _fmt(r["mrr@10"], 4), _fmt(r.get("docs_per_s")),
                     _fmt(r.get("latency_p50_ms"), 1), _fmt(r.get("latency_p95_ms"), 1), _fmt(r.get("load_s")),
                     _fmt(r.get("peak_rss_mb"), 0), _fmt(r.get("artifact_mb"), 1),
                     _fmt(r.get("mean_query_spearman_vs_torch_fp32"), 4), _delta(r.get("ndcg@10_vs_torch_fp32")),
                     _fmt(100 * r["computed_share"], 1, "%") if "computed_share" in r else "–", share_text,
                     ratio(r, "torch-bf16"), ratio(r, "torch-fp32")])
    lines += _table(header, rows)
    lines += ["", "docs/s and latencies cover the whole toolkit path (tokenization, prompt building, scoring); "
                  "per-query latency is for the full candidate list. BM25's latency is retrieval over the corpus. "
                  "Tokens computed / prompt tokens: what the model ran with the prefix cache (a query's shared "
                  "prompt prefix once), on by default; benchmarks/prefix_cache.py measures it on against off. "
                  "Share of peak: 2 x matmul parameters x computed tokens/s over the measured fp32 GEMM rate. "
                  "Spearman: rank correlation of each query's candidate scores with torch-fp32's, averaged "
                  "over queries. nDCG@10 - fp32: the mean per-query difference from torch-fp32 with a 95% "
                  "bootstrap interval over these queries (a delta inside it is the draw of queries, not the "
                  "variant). x torch bf16 / fp32: docs/s over that variant's, same run. openvino-fp32/bf16: "
                  "the openvino backend (the toolkit path, prefix cache on) on the onnx-fp32 artifact; openvino-int8: "
                  "the same backend on the OpenVINO int8 artifact (export --format openvino, calibrated on the "
                  "dataset's train queries where it has them), float parts at the auto precision. "
                  "openvino-bare-*: bare OpenVINO on that artifact's model.onnx, same token ids and batches, "
                  "whole prompts (no prefix cache), at that inference precision."]
    bare_rows = [[r["name"], r["bare_engine"]["engine"], _fmt(r["bare_engine"]["docs_per_s"]),
                  _fmt(r["bare_engine"]["toolkit_docs_per_s_paired"]), _fmt(r["bare_engine"]["overhead_pct"], 1, "%"),
                  f"{r['bare_engine']['max_abs_score_diff']:.2e}"]
                 for r in report["systems"] if "bare_engine" in r]
    if bare_rows:
        lines += ["", "## Toolkit overhead against the bare engine", "",
                  "Same artifact, same token ids (prebuilt once), same batches, whole prompts on both sides (the "
                  "toolkit's prefix cache off here); toolkit and bare engine timed query "
                  "by query in alternation.", ""]
        lines += _table(["variant", "bare engine", "bare docs/s", "toolkit docs/s", "overhead", "max |score diff|"],
                        bare_rows)
    ceiling_rows = [[r["name"], _fmt(r["tokens_per_s"], 0), _fmt(r["ceiling"]["achieved_gflops"], 1)]
                    + [_fmt(100 * r["ceiling"].get(f"share_of_{k[:-7]}_peak", float("nan")), 1, "%")
                       for k in gemm if k.endswith("_gflops")]
                    for r in report["systems"] if "ceiling" in r]
    if ceiling_rows:
        lines += ["", "## Compute ceiling", "",
                  f"{report['parameters']['matmul']:,} matmul parameters per token (embedding lookup excluded, "
                  "score head folded to one row); attention score FLOPs not counted.", ""]
        lines += _table(["variant", "prompt tokens/s", "achieved GFLOP/s"]
                        + [f"share of {k[:-7]} peak" for k in gemm if k.endswith("_gflops")], ceiling_rows)
    scaled = [r for r in report["systems"] if "scale" in r]
    if scaled:
        counts = [p["candidates"] for p in scaled[0]["scale"]["candidates"]]
        lengths = [p["prompt_tokens"] for p in scaled[0]["scale"]["prompt_length"]]
        lines += ["", "## Scale", "", "Latency of one query (ms) as the candidate list grows (BM25 candidates of "
                  "the first query):", ""]
        lines += _table(["variant"] + [f"{c} docs" for c in counts],
                        [[r["name"]] + [_fmt(p["latency_ms"], 0) for p in r["scale"]["candidates"]] for r in scaled])
        docs = scaled[0]["scale"]["prompt_length"][0]["documents"] if lengths else 0
        lines += ["", f"Milliseconds per document as the prompt grows ({docs} synthetic long documents cut to the "
                  "prompt length; template and query included):", ""]
        lines += _table(["variant"] + [f"{n} tokens" for n in lengths],
                        [[r["name"]] + [_fmt(p["ms_per_document"], 1) for p in r["scale"]["prompt_length"]]
                         for r in scaled])
    if report["errors"]:
        lines += ["", "## Not measured", ""] + [f"- {name}: {why}" for name, why in report["errors"].items()]
    return "\n".join(lines) + "\n"


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both speed (x) and accuracy (y), by increasing x."""
    front = []
    for i, (x, y) in enumerate(points):
        if not any((x2 >= x and y2 >= y) and (x2 > x or y2 > y) for j, (x2, y2) in enumerate(points) if j != i):
            front.append(i)
    return sorted(front, key=lambda i: points[i][0])


def pareto_chart(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rerankers = [r for r in report["systems"] if r["kind"] == "reranker"]
    fig, ax = plt.subplots(figsize=(8, 5.5), dpi=120)
    colors = {"torch": "tab:blue", "onnx": "tab:orange", "gguf": "tab:green"}
    points = [(r["docs_per_s"], r["ndcg@10"]) for r in rerankers]
    # Labels of nearby points are staggered vertically (in speed order) so equal-accuracy variants stay legible.
    by_speed = sorted(range(len(points)), key=lambda i: points[i])
    stagger = {i: (4, -11, 15, -22)[rank % 4] for rank, i in enumerate(by_speed)}
    for i, (r, (x, y)) in enumerate(zip(rerankers, points)):
        ax.scatter(x, y, s=55, color=colors.get(r["backend"], "tab:gray"), zorder=3)
        ax.annotate(r["name"], (x, y), textcoords="offset points", xytext=(5, stagger[i]), fontsize=8)
    front = pareto_front(points)
    if len(front) > 1:
        ax.plot([points[i][0] for i in front], [points[i][1] for i in front], "--", color="0.5", lw=1,
                label="Pareto front", zorder=2)
    for peer in (r for r in report["systems"] if r["kind"] == "peer"):
        ax.scatter(peer["docs_per_s"], peer["ndcg@10"], marker="*", s=160, color="tab:purple", zorder=3,
                   label=peer["name"])
    for base in (r for r in report["systems"] if r["kind"] == "baseline"):
        ax.axhline(base["ndcg@10"], color="tab:red", ls=":", lw=1.2, label=f"{base['name']} alone")
    if points:
        ax.set_xscale("log")
    s = report["settings"]
    ax.set_xlabel(f"documents / second ({s['threads']} threads, log scale)")
    ax.set_ylabel("nDCG@10")
    ax.set_title(f"{s['model_name']}: {s['dataset']} {s['split']}, {s['queries']} queries x top {s['top_k']}",
                 fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
