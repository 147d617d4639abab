"""One benchmark measurement in its own process (`python -m prorank_edge.benchmarks.worker JOB RESULT`).

A fresh process per variant is what makes load time and peak RSS (ru_maxrss) belong to that variant alone,
and keeps one engine's thread pools and allocator caches from slowing the next. The parent
(`prorank_edge.benchmarks.harness`) writes the job and the shared workload; this module writes timings and raw
scores back, and leaves every metric to the parent.

Job kinds:
  variant  the toolkit's Reranker on one backend/quant; optionally the bare engine on the same artifact and
           token ids, interleaved query by query with the toolkit so both see the same machine load
  minilm   the all-MiniLM-L6-v2 bi-encoder peer (transformers, mean pooling, cosine)
  openvino OpenVINO on an ONNX artifact's model.onnx, same token ids and batches (a peer runtime)
  gemm     the machine's measured matmul throughput (torch fp32, bf16 where the CPU has it natively, and
           onnxruntime's u8 x s8 int8 GEMM)
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np

from ..formats import DTYPE_BACKENDS, ONNX_INPUT_NAMES, ONNX_OUTPUT_NAME

GEMM_SIZE = 2048
GEMM_ITERATIONS = 5
WARMUP_PAIRS = 4


def _rss_bytes() -> int:
    """Current resident set size, from /proc (no psutil needed in the worker)."""
    with open("/proc/self/statm", encoding="ascii") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak_rss_bytes() -> int:
    """This process's peak RSS. VmHWM, not ru_maxrss: Linux carries ru_maxrss across fork and exec, so it would
    report the parent's peak (a parent that just exported a model) instead of the worker's own."""
    try:
        with open("/proc/self/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kilobytes on Linux


def _status(label: str, text: str) -> None:
    print(f"  [{label}] {text}", file=sys.stderr, flush=True)


def _scores_in_input_order(ranked: list[dict], count: int) -> list[float]:
    scores = [0.0] * count
    for item in ranked:
        scores[item["corpus_id"]] = item["score"]
    return scores


# ---- bare engines: the same token ids straight into the engine, none of this toolkit's code on the path ---

class BareOnnx:
    """A plain onnxruntime session fed left-padded numpy arrays."""

    def __init__(self, model_file: str, threads: int):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(model_file, sess_options=options, providers=["CPUExecutionProvider"])

    def score(self, sequences: list[list[int]]) -> np.ndarray:
        width = max(len(s) for s in sequences)
        ids = np.zeros((len(sequences), width), dtype=np.int64)
        mask = np.zeros((len(sequences), width), dtype=np.int64)
        for row, seq in enumerate(sequences):
            ids[row, width - len(seq):] = seq
            mask[row, width - len(seq):] = 1
        (scores,) = self.session.run([ONNX_OUTPUT_NAME], dict(zip(ONNX_INPUT_NAMES, (ids, mask))))
        return np.asarray(scores, dtype=np.float32).reshape(-1)

    def close(self) -> None:
        self.session = None


class BareLlama:
    """A plain llama.cpp context: all prompts of a group in one llama_batch, logits only at each last token."""

    def __init__(self, gguf_file: str, threads: int, n_ctx: int, n_seq_max: int, positive: int, negative: int):
        import ctypes

        import llama_cpp

        llama_cpp.llama_backend_init()
        # llama.cpp logs every graph reservation to stderr; a no-op callback keeps the progress lines readable.
        self._quiet = llama_cpp.llama_log_callback(lambda level, text, user_data: None)
        llama_cpp.llama_log_set(self._quiet, ctypes.c_void_p(0))
        self.llama = llama_cpp
        self.positive, self.negative = positive, negative
        from ..backends.llama_runtime import model_params  # the backend's own load settings

        self.model = llama_cpp.llama_model_load_from_file(gguf_file.encode(), model_params(llama_cpp))
        if not self.model:
            raise RuntimeError(f"llama.cpp cannot load {gguf_file}")
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = params.n_batch = n_ctx
        params.n_ubatch = min(n_ctx, 512)
        params.n_seq_max = n_seq_max
        params.kv_unified = True
        params.n_threads = params.n_threads_batch = threads
        params.no_perf = True
        self.ctx = llama_cpp.llama_init_from_model(self.model, params)
        self.memory = llama_cpp.llama_get_memory(self.ctx)
        self.batch = llama_cpp.llama_batch_init(n_ctx, 0, 1)

    def score(self, sequences: list[list[int]]) -> np.ndarray:
        llama, batch = self.llama, self.batch
        row = 0
        last_rows = []
        for seq, ids in enumerate(sequences):
            for pos, token in enumerate(ids):
                batch.token[row] = token
                batch.pos[row] = pos
                batch.n_seq_id[row] = 1
                batch.seq_id[row][0] = seq
                batch.logits[row] = 0
                row += 1
            batch.logits[row - 1] = 1
            last_rows.append(row - 1)
        batch.n_tokens = row
        llama.llama_memory_clear(self.memory, False)
        if llama.llama_decode(self.ctx, batch) != 0:
            raise RuntimeError("llama_decode failed")
        out = np.empty(len(sequences), dtype=np.float32)
        for seq, last in enumerate(last_rows):
            logits = llama.llama_get_logits_ith(self.ctx, last)
            out[seq] = logits[self.positive] - logits[self.negative]
        return out

    def close(self) -> None:
        self.llama.llama_batch_free(self.batch)
        self.llama.llama_free(self.ctx)
        self.llama.llama_model_free(self.model)


def _bare_groups(lengths: list[int], batch_size: int, max_tokens: int | None, n_seq_max: int | None) -> list[list[int]]:
    """The same prompt groups the toolkit forms (length-sorted batches, then llama.cpp's n_seq_max groups), so
    both sides do exactly the same arithmetic and only the glue differs."""
    from ..contract import length_batches

    groups = []
    for batch in length_batches(lengths, batch_size, max_tokens):
        step = n_seq_max or len(batch)
        groups.extend(batch[i:i + step] for i in range(0, len(batch), step))
    return groups


def _bare_score(engine, token_ids: list[list[int]], groups: list[list[int]]) -> np.ndarray:
    scores = np.empty(len(token_ids), dtype=np.float32)
    for group in groups:
        scores[group] = engine.score([token_ids[i] for i in group])
    return scores


# ---- jobs ------------------------------------------------------------------------------------------------

def run_variant(job: dict, workload: dict) -> dict:
    label = job["name"]
    threads = job["threads"]
    queries = workload["queries"]
    t0 = time.perf_counter()
    from ..backends import backend_class
    from ..reranker import Reranker

    # The engine's imports (torch + transformers / onnxruntime / llama_cpp) are timed apart from the load.
    backend_class(job["backend"])
    if job["backend"] == "torch":
        from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: F401  (lazy modules: load them now)
    elif job["backend"] == "gguf":
        import llama_cpp  # noqa: F401
    import_s = time.perf_counter() - t0
    rss_before_load = _rss_bytes()
    options = {"dtype": job["dtype"]} if job["backend"] in DTYPE_BACKENDS else {}
    t0 = time.perf_counter()
    reranker = Reranker(job["model"], backend=job["backend"], device="cpu", threads=threads,
                        batch_size=job["batch_size"], **options)
    load_s = time.perf_counter() - t0
    rss_after_load = _rss_bytes()
    _status(label, f"loaded in {load_s:.2f} s ({reranker.describe()})")

    # Warm-up (excluded): a few pairs of the first query, so lazy allocations and kernel selection are paid
    # up front; a whole query would cost minutes on a slow variant and teach the engine nothing more.
    warm = queries[0]
    t0 = time.perf_counter()
    reranker.rank(warm["text"], warm["texts"][:WARMUP_PAIRS], show_progress_bar=False)
    warmup_s = time.perf_counter() - t0

    scores: list[list[float]] = []
    repetitions = []
    for rep in range(job["repeats"]):
        latencies = []
        for query in queries:
            t0 = time.perf_counter()
            ranked = reranker.rank(query["text"], query["texts"], show_progress_bar=False)
            latencies.append(time.perf_counter() - t0)
            if rep == 0:
                scores.append(_scores_in_input_order(ranked, len(query["texts"])))
        repetitions.append(latencies)
        docs = sum(len(q["texts"]) for q in queries)
        _status(label, f"repetition {rep + 1}/{job['repeats']}: {docs / sum(latencies):.2f} docs/s")
    # Tokens the model actually consumed, from the toolkit's own prompts (GGUF may tokenize on its own).
    own_ids = [reranker.prompts.build(q["text"], q["texts"]) for q in queries]
    prompt_tokens = [sum(len(ids) for ids in per_query) for per_query in own_ids]
    result = {
        "describe": reranker.describe(), "import_s": import_s, "load_s": load_s, "warmup_s": warmup_s,
        "rss_before_load_bytes": rss_before_load, "rss_after_load_bytes": rss_after_load,
        "latencies_s": repetitions, "scores": scores, "prompt_tokens": prompt_tokens,
        "same_token_ids": own_ids == [q["token_ids"] for q in queries],
    }
    if job.get("scale"):
        result["scale"] = _scale(reranker, job["scale"], workload, label)
    # Peak RSS before any bare engine is loaded: it belongs to the toolkit variant alone.
    result["peak_rss_bytes"] = _peak_rss_bytes()
    if job.get("bare"):
        result["bare"] = _bare_pass(job, reranker, queries, label)
    reranker.close()
    return result


def _scale(reranker, scale: dict, workload: dict, label: str) -> dict:
    """How one query's latency grows with the number of candidates and with the prompt length."""
    from ..contract import PromptBuilder

    out = {"candidates": [], "prompt_length": []}
    query = workload["scale"]["query"]
    pool = workload["scale"]["texts"]
    for count in scale["candidates"]:
        texts = pool[:count]
        times = []
        for _ in range(scale["repeats"]):
            t0 = time.perf_counter()
            reranker.rank(query, texts, show_progress_bar=False)
            times.append(time.perf_counter() - t0)
        out["candidates"].append({"candidates": len(texts), "latency_s": times})
        _status(label, f"scale: {len(texts)} candidates in {min(times):.2f} s")
    long_docs = workload["scale"]["long_texts"]
    for length in scale["prompt_lengths"]:
        # Documents longer than any budget, cut by the prompt builder to exactly `length` tokens per prompt.
        prompts = PromptBuilder(reranker.prompts.tokenizer, reranker.contract, max_length=length)
        times = []
        for _ in range(scale["repeats"]):
            t0 = time.perf_counter()
            ids = prompts.build(query, long_docs)
            reranker.score_token_ids(ids, show_progress_bar=False)
            times.append(time.perf_counter() - t0)
        document_tokens = length - prompts.template_length - len(prompts.query_ids(query))
        out["prompt_length"].append({"prompt_tokens": length, "documents": len(long_docs),
                                     "document_tokens": document_tokens, "latency_s": times})
        _status(label, f"scale: {len(long_docs)} prompts of {length} tokens in {min(times):.2f} s")
    return out


def _bare_pass(job: dict, reranker, queries: list[dict], label: str) -> dict:
    backend = reranker.backend
    t0 = time.perf_counter()
    if job["backend"] == "onnx":
        engine = BareOnnx(str(backend.model_file), job["threads"])
        n_seq_max = None
    else:
        engine = BareLlama(str(backend.model_path), job["threads"], backend.n_ctx, backend.n_seq_max,
                           backend.prompts.positive_token_id, backend.prompts.negative_token_id)
        n_seq_max = backend.n_seq_max
    load_s = time.perf_counter() - t0
    # The bare engines score whole prompts; the toolkit does the same here, so the gap is its overhead alone.
    reranker.prefix_cache = False
    groups = [_bare_groups([len(ids) for ids in q["token_ids"]], job["batch_size"], backend.max_batch_tokens, n_seq_max)
              for q in queries]
    warm_ids = queries[0]["token_ids"][:WARMUP_PAIRS]
    _bare_score(engine, warm_ids, _bare_groups([len(ids) for ids in warm_ids], job["batch_size"],
                                               backend.max_batch_tokens, n_seq_max))  # warm-up
    toolkit, bare, drift = [], [], 0.0
    # Query by query, toolkit then bare engine: both see the same moment of a possibly shared machine.
    for rep in range(job["repeats"]):
        toolkit_rep, bare_rep = [], []
        for query, query_groups in zip(queries, groups):
            t0 = time.perf_counter()
            ranked = reranker.rank(query["text"], query["texts"], show_progress_bar=False)
            t1 = time.perf_counter()
            bare_scores = _bare_score(engine, query["token_ids"], query_groups)
            t2 = time.perf_counter()
            toolkit_rep.append(t1 - t0)
            bare_rep.append(t2 - t1)
            ours = np.asarray(_scores_in_input_order(ranked, len(query["texts"])), dtype=np.float32)
            drift = max(drift, float(np.abs(ours - bare_scores).max()))
        toolkit.append(toolkit_rep)
        bare.append(bare_rep)
        _status(label, f"bare engine repetition {rep + 1}/{job['repeats']}: toolkit {sum(toolkit_rep):.2f} s, "
                       f"bare {sum(bare_rep):.2f} s")
    engine.close()
    return {"load_s": load_s, "toolkit_latencies_s": toolkit, "bare_latencies_s": bare, "max_abs_score_diff": drift}


def _timed_queries(job: dict, queries: list[dict], score, warmup_query: dict) -> tuple[float, list, list]:
    """A warm-up call on `warmup_query` (its scores dropped), then job["repeats"] timed passes of score(query)
    over `queries`: (warm-up seconds, the first pass's scores per query, per-query latencies per pass)."""
    t0 = time.perf_counter()
    score(warmup_query)
    warmup_s = time.perf_counter() - t0
    scores, repetitions = [], []
    for rep in range(job["repeats"]):
        latencies = []
        for query in queries:
            t0 = time.perf_counter()
            query_scores = score(query)
            latencies.append(time.perf_counter() - t0)
            if rep == 0:
                scores.append(query_scores)
        repetitions.append(latencies)
        _status(job["name"], f"repetition {rep + 1}/{job['repeats']}: "
                             f"{sum(len(q['texts']) for q in queries) / sum(latencies):.2f} docs/s")
    return warmup_s, scores, repetitions


def run_minilm(job: dict, workload: dict) -> dict:
    """Cosine of mean-pooled all-MiniLM-L6-v2 embeddings; documents are embedded per query, as a reranker must."""
    t0 = time.perf_counter()
    import torch
    from transformers import AutoModel, AutoTokenizer

    torch.set_num_threads(job["threads"])
    import_s = time.perf_counter() - t0
    rss_before_load = _rss_bytes()
    t0 = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(job["model"])
    model = AutoModel.from_pretrained(job["model"]).eval()
    load_s = time.perf_counter() - t0
    rss_after_load = _rss_bytes()
    max_length = job["max_length"]
    batch_size = job["batch_size"]

    @torch.inference_mode()
    def embed(texts: list[str]) -> torch.Tensor:
        chunks = []
        for start in range(0, len(texts), batch_size):
            enc = tokenizer(texts[start:start + batch_size], padding=True, truncation=True, max_length=max_length,
                            return_tensors="pt")
            hidden = model(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            chunks.append(torch.nn.functional.normalize(pooled, dim=-1))
        return torch.cat(chunks)

    def score(query: dict) -> list[float]:
        return (embed(query["texts"]) @ embed([query["text"]])[0]).tolist()

    queries = workload["queries"]
    warmup_s, scores, repetitions = _timed_queries(
        job, queries, score, dict(queries[0], texts=queries[0]["texts"][:WARMUP_PAIRS]))
    return {"describe": {"backend": "torch", "model": job["model"], "threads": torch.get_num_threads(),
                         "max_length": max_length, "pooling": "mean", "similarity": "cosine"},
            "import_s": import_s, "load_s": load_s, "warmup_s": warmup_s, "rss_before_load_bytes": rss_before_load,
            "rss_after_load_bytes": rss_after_load, "latencies_s": repetitions, "scores": scores,
            "peak_rss_bytes": _peak_rss_bytes()}


def run_openvino(job: dict, workload: dict) -> dict:
    """OpenVINO on the ONNX artifact's model.onnx: the same token ids and batches as the toolkit, whole prompts
    (no prefix reuse), at one inference precision ("f32", or "bf16" where the CPU has it)."""
    t0 = time.perf_counter()
    import openvino as ov

    from ..contract import left_pad, length_batches

    import_s = time.perf_counter() - t0
    rss_before_load = _rss_bytes()
    t0 = time.perf_counter()
    core = ov.Core()
    compiled = core.compile_model(job["model"], "CPU", {
        "INFERENCE_PRECISION_HINT": job["precision"], "INFERENCE_NUM_THREADS": str(job["threads"]),
        "NUM_STREAMS": "1", "PERFORMANCE_HINT": "LATENCY"})
    request = compiled.create_infer_request()
    load_s = time.perf_counter() - t0
    rss_after_load = _rss_bytes()

    def score(query: dict) -> list[float]:
        token_ids = query["token_ids"]
        out = np.empty(len(token_ids), dtype=np.float32)
        for batch in length_batches([len(t) for t in token_ids], job["batch_size"], None):
            ids, mask = left_pad([token_ids[i] for i in batch])
            out[batch] = np.asarray(request.infer(dict(zip(ONNX_INPUT_NAMES, (ids, mask))))[0]).reshape(-1)
        return out.tolist()

    queries = workload["queries"]
    warmup_s, scores, repetitions = _timed_queries(
        job, queries, score, dict(queries[0], token_ids=queries[0]["token_ids"][:WARMUP_PAIRS]))
    # Whole prompts: every prompt token is computed, on the toolkit's own token ids.
    return {"describe": {"backend": "openvino", "version": ov.__version__, "model": job["model"],
                         "precision": job["precision"], "threads": job["threads"], "prefix_cache": False,
                         "computed_share": 1.0},
            "import_s": import_s, "load_s": load_s, "warmup_s": warmup_s, "rss_before_load_bytes": rss_before_load,
            "rss_after_load_bytes": rss_after_load, "latencies_s": repetitions, "scores": scores,
            "prompt_tokens": [sum(map(len, q["token_ids"])) for q in queries], "same_token_ids": True,
            "peak_rss_bytes": _peak_rss_bytes()}


def _int8_gemm_gflops(threads: int) -> float | None:
    """u8 x s8 -> int32 GEMM giga-ops/s on onnxruntime's MatMulInteger (MLAS), the kernel w8a8 runs on."""
    try:
        import onnxruntime as ort
        from onnx import TensorProto, helper
    except ImportError:
        return None
    n = GEMM_SIZE
    graph = helper.make_graph([helper.make_node("MatMulInteger", ["a", "b"], ["c"])], "int8_gemm",
                              [helper.make_tensor_value_info("a", TensorProto.UINT8, [n, n]),
                               helper.make_tensor_value_info("b", TensorProto.INT8, [n, n])],
                              [helper.make_tensor_value_info("c", TensorProto.INT32, [n, n])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    feed = {"a": rng.integers(0, 256, (n, n), dtype=np.uint8), "b": rng.integers(-127, 128, (n, n), dtype=np.int8)}
    session.run(None, feed)
    times = []
    for _ in range(GEMM_ITERATIONS):
        t0 = time.perf_counter()
        session.run(None, feed)
        times.append(time.perf_counter() - t0)
    return 2 * n ** 3 / min(times) / 1e9


def run_gemm(job: dict) -> dict:
    """Measured matmul GFLOP/s: the compute ceiling that model throughput is set against."""
    import torch

    torch.set_num_threads(job["threads"])
    out = {"size": GEMM_SIZE, "threads": torch.get_num_threads()}
    for name in job["dtypes"]:
        dtype = getattr(torch, name)
        a = torch.randn(GEMM_SIZE, GEMM_SIZE).to(dtype)
        b = torch.randn(GEMM_SIZE, GEMM_SIZE).to(dtype)
        torch.mm(a, b)  # warm-up: kernel selection and packing
        times = []
        for _ in range(GEMM_ITERATIONS):
            t0 = time.perf_counter()
            torch.mm(a, b)
            times.append(time.perf_counter() - t0)
        # The best run: the ceiling is what the hardware can do, not what a noisy neighbour left.
        out[name + "_gflops"] = 2 * GEMM_SIZE ** 3 / min(times) / 1e9
    int8 = _int8_gemm_gflops(job["threads"])
    if int8 is not None:
        out["int8_gflops"] = int8
    return out


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m prorank_edge.benchmarks.worker JOB.json RESULT.json", file=sys.stderr)
        return 2
    job = json.loads(Path(argv[0]).read_text(encoding="utf-8"))
    if job["kind"] == "gemm":
        result = run_gemm(job)
    else:
        workload = json.loads(Path(job["workload"]).read_text(encoding="utf-8"))
        runs = {"variant": run_variant, "minilm": run_minilm, "openvino": run_openvino}
        result = runs[job["kind"]](job, workload)
    Path(argv[1]).write_text(json.dumps(result), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
