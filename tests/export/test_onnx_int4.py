"""ONNX int4 of a base plus an adapter (export/onnx_int4.py): the base in 4 bits, the adapter's delta beside it in
fp32, on a tiny Qwen2 whose base sits on the 4-bit grid as SmolLM2 does; and on the built-in model (slow)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("torch")

from conftest import (  # noqa: E402
    grid_base_and_merged,
    grid_base_and_one_bit,
    mixed_length_pairs,
    onnx_backend,
    requires_torch,
    scifact_gguf_pairs,
    torch_fp32_backend,
)

from prorank_edge.formats import MERGED_ADAPTER_FOLDER  # noqa: E402


@pytest.fixture(scope="module")
def base_and_merged(tiny_qwen2_dir, tmp_path_factory):
    """(a base on the grids of SmolLM2's file, then that base fine-tuned by a rank-4 delta, merged from its
    adapter)."""
    return grid_base_and_merged(tiny_qwen2_dir, tmp_path_factory.mktemp("int4_adapter"))


def _scores(backend, pairs):
    return backend.score_batch(backend.prompts.build_pairs(pairs))


def _split_and_rounded(merged, tmp_path):
    """int4 of the checkpoint (its adapter split off) into tmp_path/split, and of the same merged weights without
    the adapter folder (plainly rounded) into tmp_path/plain; returns (split's export info, the test pairs, and
    their torch fp32, split and rounded scores)."""
    from prorank_edge.export.onnx_export import export_onnx

    plain = tmp_path / "plain_checkpoint"
    shutil.copytree(merged, plain)
    shutil.rmtree(plain / MERGED_ADAPTER_FOLDER)
    info = export_onnx(merged, tmp_path / "split", quant="int4")
    export_onnx(plain, tmp_path / "plain", quant="int4")
    pairs = mixed_length_pairs(16)
    return (info, pairs, _scores(torch_fp32_backend(merged), pairs), _scores(onnx_backend(tmp_path / "split"), pairs),
            _scores(onnx_backend(tmp_path / "plain"), pairs))


@requires_torch
def test_int4_keeps_an_adapters_delta_that_plain_4bit_rounding_loses(base_and_merged, tmp_path):
    from onnx import TensorProto, load
    from scipy.stats import spearmanr

    _, merged = base_and_merged
    assert (merged / MERGED_ADAPTER_FOLDER / "adapter.safetensors").is_file()  # apply_adapter keeps it
    info, pairs, reference, split, rounded = _split_and_rounded(merged, tmp_path)
    assert info["int4"]["base_plus_adapter"] and info["int4"]["adapter_rank"] == 4

    graph = load(str(tmp_path / "split" / "model.onnx"), load_external_data=False).graph
    ops = [node.op_type for node in graph.node]
    thin = [node for node in graph.node if node.op_type == "MatMul" and "/adapter_" in node.name]
    # every matrix of the body (7 x 2 layers): a 4-bit base plus the two fp32 factors, and the embedding's
    # factor (a silent fallback to fp32 fails here)
    weights = {init.name: init for init in graph.initializer}
    constant = [node for node in graph.node if node.op_type == "MatMul" and node.input[1] in weights]
    assert ops.count("MatMulNBits") == 14 and len(thin) == 2 * 14 + 1 and constant == thin
    # the embedding: an int8 table (its base) and the adapter's rows, no 4-bit GatherBlockQuantized
    tables = [weights[node.input[0]] for node in graph.node if node.op_type == "Gather" and node.input[0] in weights]
    assert "GatherBlockQuantized" not in ops and sorted(t.data_type for t in tables) == [
        TensorProto.FLOAT, TensorProto.FLOAT, TensorProto.INT8]  # scales, the delta's B, the int8 base

    split_error, rounded_error = np.abs(split - reference).max(), np.abs(rounded - reference).max()
    print(f"\nint4 max |score - fp32|: base + adapter {split_error:.2e}, merged weights rounded {rounded_error:.2e}")
    # the base is on the grid, so what is left is fp32 rounding, not quantization
    assert split_error < 1e-3 < rounded_error
    assert spearmanr(split, reference).statistic > 0.999

    # the prefix reuse graphs are split alike: computing the shared prefix once changes no score
    from prorank_edge import Reranker

    query = pairs[0][0]
    documents = [doc for q, doc in pairs if q == query]
    with Reranker(str(tmp_path / "split"), prefix_cache=True) as cached, \
            Reranker(str(tmp_path / "split"), prefix_cache=False) as whole:
        on, off = cached.predict([(query, d) for d in documents]), whole.predict([(query, d) for d in documents])
        assert cached.describe()["computed_tokens"] < cached.describe()["prompt_tokens"]
    assert len(documents) > 1 and np.abs(on - off).max() < 1e-3


@requires_torch
@pytest.mark.parametrize("start_rank", [4, None], ids=["low_rank_plus_one_bit", "one_bit_only"])
def test_int4_keeps_a_one_bit_adapter_exactly(tiny_qwen2_dir, tmp_path, start_rank):
    """A 1-bit adapter (`train adapter --one-bit`) is full rank: the int4 graph carries it as +-1 in 4 bits (exact
    on the min-max grid) times its fp32 row scales, and the embedding's rows packed 8 signs a byte."""
    from onnx import load
    from safetensors import safe_open

    _, merged = grid_base_and_one_bit(tiny_qwen2_dir, tmp_path / "checkpoints", start_rank=start_rank)
    with safe_open(str(merged / MERGED_ADAPTER_FOLDER / "adapter.safetensors"), framework="numpy") as stored:
        one_bit = sum(key.endswith(".sign") for key in stored.keys())
    info, pairs, reference, split, rounded = _split_and_rounded(merged, tmp_path)
    assert info["int4"]["one_bit_weights"] == one_bit == 15  # the body's 14 matrices and the tied embedding
    assert info["int4"]["adapter_rank"] == (start_rank or 0)

    graph = load(str(tmp_path / "split" / "model.onnx"), load_external_data=False).graph
    ops = [node.op_type for node in graph.node]
    # each of the 14 matrices: a 4-bit base and a 4-bit sign MatMul (a silent fallback to fp32 fails here)
    assert ops.count("MatMulNBits") == 28 and ops.count("BitShift") == 1
    assert sum(op == "MatMul" and "/adapter_signs" in n.name for op, n in zip(ops, graph.node)) == 0

    split_error, rounded_error = np.abs(split - reference).max(), np.abs(rounded - reference).max()
    print(f"\nint4 of a 1-bit adapter, max |score - fp32|: split {split_error:.2e}, merged rounded {rounded_error:.2e}")
    assert split_error < 1e-3 < rounded_error

    from prorank_edge import Reranker  # the prefix graphs carry the 1-bit part too

    query = pairs[0][0]
    candidates = [(query, doc) for q, doc in pairs if q == query]
    with Reranker(str(tmp_path / "split"), prefix_cache=True) as cached:
        on = cached.predict(candidates)
        assert cached.describe()["computed_tokens"] < cached.describe()["prompt_tokens"]
    expected = reference[[i for i, (q, _) in enumerate(pairs) if q == query]]
    assert len(candidates) > 1 and np.abs(on - expected).max() < 1e-3


def test_an_adapter_that_matches_no_weight_of_the_graph_is_an_error(base_and_merged, tmp_path):
    """A graph whose weights are stored otherwise than the checkpoint's (say, a tracer that keeps a Transpose)
    must not quietly become plain int4, which loses the fine-tuning."""
    from prorank_edge.errors import ProrankError
    from prorank_edge.export.onnx_export import _quantize_int4, export_onnx
    from prorank_edge.export.onnx_int4 import adapter_parts

    base, merged = base_and_merged
    export_onnx(base, tmp_path / "fp32")
    parts = adapter_parts(merged)  # keys of the merged weights, which the base's graph does not hold
    with pytest.raises(ProrankError, match="no MatMul weight of this graph is one the checkpoint's adapter"):
        _quantize_int4(tmp_path / "fp32" / "model.onnx", tmp_path / "int4.onnx", parts)
    assert adapter_parts(base) is None  # a checkpoint without an adapter: plain int4


@pytest.mark.slow
def test_builtin_model_int4_ranks_like_fp32(tmp_path, scifact_dir):
    """The built-in reranker (SmolLM2 on the Q4_1 grid plus the shipped adapter), 4 SciFact queries x 10."""
    from scipy.stats import spearmanr

    from prorank_edge.export.onnx_export import export_onnx
    from prorank_edge.models import default_model

    model_dir = default_model().path
    pairs = scifact_gguf_pairs(scifact_dir, n_queries=4, negatives=9)
    export_onnx(model_dir, tmp_path / "int4", quant="int4", max_length=160)
    backend = onnx_backend(tmp_path / "int4")
    token_ids = backend.prompts.build_pairs(pairs)
    reference = torch_fp32_backend(model_dir, max_length=160)
    expected = np.concatenate([reference.score_batch(token_ids[i:i + 8]) for i in range(0, len(token_ids), 8)])
    scores = np.concatenate([backend.score_batch(token_ids[i:i + 8]) for i in range(0, len(token_ids), 8)])
    rho = np.mean([spearmanr(scores[i:i + 10], expected[i:i + 10]).statistic for i in range(0, len(pairs), 10)])
    drift = np.abs(scores - expected).max()
    print(f"\nbuilt-in int4: per-query Spearman {rho:.4f}, max |drift| {drift:.2e}")
    # measured: 1.0000 and under 5e-4 (plain int4 of the merged weights: 0.39; with a 4-bit table: 0.976, 2.2)
    assert rho >= 0.99 and drift < 1e-2
