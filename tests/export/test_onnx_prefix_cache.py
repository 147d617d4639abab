"""Prefix reuse in ONNX artifacts: the prefix/suffix graphs export_onnx and quantize_onnx write beside model.onnx,
and the onnx backend scoring a query's shared prompt prefix once with them, against whole-prompt scoring."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from conftest import ONNX_PARITY_ATOL, mixed_length_pairs, onnx_backend, torch_fp32_backend  # noqa: E402

from prorank_edge import Reranker  # noqa: E402
from prorank_edge.contract import shared_prefix_length  # noqa: E402
from prorank_edge.errors import ProrankError  # noqa: E402
from prorank_edge.formats import (  # noqa: E402
    ONNX_MODEL_FILENAME,
    ONNX_PREFIX_INPUT_NAME,
    ONNX_PREFIX_MODEL_FILENAME,
    ONNX_PREFIX_OUTPUT_NAMES,
    ONNX_SUFFIX_INPUT_NAMES,
    ONNX_SUFFIX_MODEL_FILENAME,
)

REUSE_FILES = (ONNX_PREFIX_MODEL_FILENAME, ONNX_SUFFIX_MODEL_FILENAME)
# Short enough that the long query below is cut to its 3/4 share and long documents are cut too.
MAX_LENGTH = 160
INSTRUCTION = "Judge whether the passage answers the biomedical question"
LONG_QUERY = "which proteins in the cell membrane transport glucose " * 20


def _quantize(*args, **kwargs):
    from prorank_edge.export.onnx_export import quantize_onnx

    return quantize_onnx(*args, **kwargs)


@pytest.fixture(scope="module")
def quantized(tiny_qwen2_onnx, tmp_path_factory):
    """quantize_onnx of the fp32 Qwen2 artifact, once per level."""
    root = tmp_path_factory.mktemp("onnx_reuse_quant")
    done: dict[str, Path] = {}

    def get(quant: str) -> Path:
        if quant not in done:
            done[quant] = root / quant
            _quantize(tiny_qwen2_onnx, done[quant], quant)
        return done[quant]

    return get


def _interleaved_pairs() -> list[tuple[str, str]]:
    """Two queries taking turns, so each query's candidates are spread over the input; empty documents and
    documents long enough to be truncated among them."""
    documents = [doc for _, doc in mixed_length_pairs(10)] + ["", " "]
    queries = ("effects of vitamin D on bone density", "how do transformers attend")
    return [(queries[i % 2], doc) for i, doc in enumerate(documents)]


def _reranker(path) -> Reranker:
    # batch_size 2: a query's candidates fill several calls, so its prefix must outlive a call.
    return Reranker(str(path), batch_size=2, max_length=MAX_LENGTH)


def _torch_reranker(model_dir) -> Reranker:
    return Reranker.from_backend(torch_fp32_backend(model_dir, max_length=MAX_LENGTH), batch_size=2)


def _score_all(reranker: Reranker, prefix_cache: bool) -> tuple[dict[str, np.ndarray], dict]:
    """Every case scored with the prefix cache on or off; describe() counts these calls' tokens only."""
    reranker.prefix_cache = prefix_cache
    reranker.backend.token_counts = {"prompt_tokens": 0, "computed_tokens": 0}
    pairs = _interleaved_pairs()
    documents = [doc for _, doc in pairs]
    long_ranking = reranker.rank(LONG_QUERY, documents)
    scores = {
        "interleaved": reranker.predict(pairs),
        "instruction": reranker.predict(pairs, instruction=INSTRUCTION),
        "long_query": np.asarray([r["score"] for r in sorted(long_ranking, key=lambda r: r["corpus_id"])]),
    }
    return scores, reranker.describe()


def _max_difference(a: dict, b: dict) -> float:
    return max(float(np.abs(a[k] - b[k]).max()) for k in a)


# ---- what the export writes ------------------------------------------------------------------------------

def test_export_writes_reuse_graphs_sharing_the_weights(tiny_qwen2_onnx, tiny_qwen2_dir):
    import onnx

    info = json.loads((tiny_qwen2_onnx / "export_info.json").read_text())
    reuse = info["prefix_reuse"]
    assert (reuse["prefix_model"], reuse["suffix_model"]) == REUSE_FILES
    assert reuse["prefix_inputs"] == [ONNX_PREFIX_INPUT_NAME]
    assert reuse["prefix_outputs"] == list(ONNX_PREFIX_OUTPUT_NAMES)
    assert reuse["suffix_inputs"] == list(ONNX_SUFFIX_INPUT_NAMES) and reuse["suffix_output"] == "score"
    for name in REUSE_FILES:
        assert info["files"][name] == (tiny_qwen2_onnx / name).stat().st_size
    # No second copy of the weights: both graphs together are a fraction of a percent of model.onnx.
    assert reuse["bytes"] == sum(info["files"][name] for name in REUSE_FILES)
    assert reuse["bytes"] < 0.01 * info["files"][ONNX_MODEL_FILENAME]
    assert reuse["weight_bytes_shared_with_model"] > 1.5 * info["files"][ONNX_MODEL_FILENAME]
    assert info["files"][ONNX_MODEL_FILENAME] == info["model_bytes"]  # model.onnx itself is unchanged

    prefix = onnx.load(str(tiny_qwen2_onnx / ONNX_PREFIX_MODEL_FILENAME), load_external_data=False).graph
    suffix = onnx.load(str(tiny_qwen2_onnx / ONNX_SUFFIX_MODEL_FILENAME), load_external_data=False).graph
    assert [i.name for i in prefix.input] == [ONNX_PREFIX_INPUT_NAME]
    assert [o.name for o in prefix.output] == list(ONNX_PREFIX_OUTPUT_NAMES)
    assert [i.name for i in suffix.input] == list(ONNX_SUFFIX_INPUT_NAMES)
    assert [o.name for o in suffix.output] == ["score"]
    for graph in (prefix, suffix):
        external = [t for t in graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
        assert external and {e.value for t in external for e in t.external_data if e.key == "location"} == {
            ONNX_MODEL_FILENAME}
    # The suffix graph ends in the folded head: the only vocabulary-sized tensor is the embedding table.
    vocab = json.loads((tiny_qwen2_dir / "config.json").read_text())["vocab_size"]
    suffix = onnx.load(str(tiny_qwen2_onnx / ONNX_SUFFIX_MODEL_FILENAME)).graph  # external data read back
    assert sum(vocab in t.dims for t in suffix.initializer) == 1
    layers = json.loads((tiny_qwen2_dir / "config.json").read_text())["num_hidden_layers"]
    keys = next(o for o in prefix.output if o.name == ONNX_PREFIX_OUTPUT_NAMES[0]).type.tensor_type.shape.dim
    assert keys[0].dim_value == layers and keys[3].dim_param  # [layers, batch, kv_heads, P, head_dim]


# ---- fp32: reuse against whole prompts and against torch -------------------------------------------------

@pytest.mark.parametrize("kind", ["qwen2", pytest.param("llama", marks=pytest.mark.slow)])
def test_fp32_reuse_matches_whole_prompts_and_torch(kind, request):
    model_dir = request.getfixturevalue(f"tiny_{kind}_dir")
    reranker = _reranker(request.getfixturevalue("tiny_qwen2_onnx" if kind == "qwen2" else "tiny_llama_onnx"))
    started = time.perf_counter()
    on, on_info = _score_all(reranker, prefix_cache=True)
    on_seconds = time.perf_counter() - started
    started = time.perf_counter()
    off, off_info = _score_all(reranker, prefix_cache=False)
    off_seconds = time.perf_counter() - started
    reference = _torch_reranker(model_dir)
    torch_reuse, torch_info = _score_all(reference, prefix_cache=True)
    torch_scores, _ = _score_all(reference, prefix_cache=False)
    print(f"\n{kind}: |reuse - whole| {_max_difference(on, off):.2e}, |reuse - torch| "
          f"{_max_difference(on, torch_scores):.2e}, |reuse - torch reuse| {_max_difference(on, torch_reuse):.2e}; "
          f"reuse on {on_seconds:.2f}s, off {off_seconds:.2f}s")

    assert len(reranker.prompts.query_ids(LONG_QUERY)) == reranker.prompts.query_budget  # the query was cut
    assert on_info["prefix_cache"] and on_info["prefix_graphs"] and not off_info["prefix_cache"]
    assert on_info["computed_tokens"] < on_info["prompt_tokens"] == off_info["prompt_tokens"]
    assert off_info["computed_tokens"] == off_info["prompt_tokens"]
    # Counted as the torch backend counts: each query's prefix computed once however many batches it spans.
    assert {k: on_info[k] for k in ("prompt_tokens", "computed_tokens")} == \
        {k: torch_info[k] for k in ("prompt_tokens", "computed_tokens")}
    assert all(np.ptp(s) > 10 * ONNX_PARITY_ATOL for s in off.values())  # distinct scores: a real comparison
    assert _max_difference(on, off) < ONNX_PARITY_ATOL
    assert _max_difference(on, torch_scores) < ONNX_PARITY_ATOL
    assert _max_difference(on, torch_reuse) < ONNX_PARITY_ATOL


def test_prefix_keys_values_are_kept_between_calls(tiny_qwen2_onnx, tiny_qwen2_dir):
    """Consecutive batches of one query run the prefix graph once; a new prefix runs it again."""
    backend = onnx_backend(tiny_qwen2_onnx)
    reference = torch_fp32_backend(tiny_qwen2_dir)
    first = backend.prompts.build("does coffee affect sleep", ["caffeine delays sleep", "", "tea has less"])
    second = backend.prompts.build("knee injuries from running", ["runners hurt their knees"] * 2)
    calls = []
    run = backend.prefix_session.run
    backend.prefix_session.run = lambda *args: calls.append(1) or run(*args)
    for group, ids in ((first, first[:2]), (first, first[2:]), (second, second)):
        prefix = shared_prefix_length(group)
        scores = backend.score_with_prefix(ids[0][:prefix], [row[prefix:] for row in ids])
        expected = reference.score_with_prefix(ids[0][:prefix], [row[prefix:] for row in ids])
        assert np.abs(scores - expected).max() < ONNX_PARITY_ATOL
        assert np.abs(scores - backend.score_batch(ids)).max() < ONNX_PARITY_ATOL
    assert len(calls) == 2
    # score_batch counted every token as computed; score_with_prefix as the torch backend does.
    whole = sum(len(row) for row in first + second)
    assert backend.token_counts["prompt_tokens"] == reference.token_counts["prompt_tokens"] + whole
    assert backend.token_counts["computed_tokens"] == reference.token_counts["computed_tokens"] + whole


# ---- quantized levels ------------------------------------------------------------------------------------

@pytest.mark.parametrize("quant", ["int8", "w8a8", "int4", "fp16"])
def test_quantized_reuse_keeps_the_ranking(quant, quantized, tiny_qwen2_onnx):
    import onnx

    artifact = quantized(quant)
    info = json.loads((artifact / "export_info.json").read_text())
    assert info["quant"] == quant and info["prefix_reuse"]["bytes"] < 0.05 * info["model_bytes"]
    suffix = onnx.load(str(artifact / ONNX_SUFFIX_MODEL_FILENAME), load_external_data=False).graph
    ops = {node.op_type for node in suffix.node}
    if quant in ("int8", "int4"):
        assert "MatMulNBits" in ops
    if quant == "w8a8":
        assert "MatMulInteger" in ops
    if quant == "int4":
        assert "GatherBlockQuantized" in ops
    if quant == "fp16":
        assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in suffix.initializer)
    # onnxruntime's CPU provider runs these fp16 graphs (it inserts casts where it lacks fp16 kernels).
    reranker = _reranker(artifact)
    on, on_info = _score_all(reranker, prefix_cache=True)
    off, _ = _score_all(reranker, prefix_cache=False)
    fp32, _ = _score_all(_reranker(tiny_qwen2_onnx), prefix_cache=False)
    print(f"\n{quant}: |reuse - whole| {_max_difference(on, off):.2e}, |reuse - fp32| {_max_difference(on, fp32):.2e}")
    assert on_info["prefix_graphs"] and on_info["computed_tokens"] < on_info["prompt_tokens"]
    for case in on:
        assert list(np.argsort(-on[case], kind="stable")) == list(np.argsort(-off[case], kind="stable")), case
    assert _max_difference(on, off) < {"fp16": 2e-2, "w8a8": 3e-2}.get(quant, ONNX_PARITY_ATOL)


@pytest.mark.slow
def test_export_onnx_quantizes_the_reuse_graphs(tiny_qwen2_dir, tiny_qwen2_onnx, quantized, tmp_path):
    """export_onnx(quant=...) writes what quantize_onnx writes from the fp32 artifact (the traces are the same)."""
    from prorank_edge.export.onnx_export import export_onnx

    info = export_onnx(tiny_qwen2_dir, tmp_path / "int4", quant="int4")
    assert info["prefix_reuse"]["weight_bytes_shared_with_model"] > info["model_bytes"]
    on, _ = _score_all(_reranker(tmp_path / "int4"), prefix_cache=True)
    requantized, _ = _score_all(_reranker(quantized("int4")), prefix_cache=True)
    assert _max_difference(on, requantized) < ONNX_PARITY_ATOL


# ---- artifacts without the reuse graphs ------------------------------------------------------------------

def test_old_artifact_scores_whole_prompts(tiny_qwen2_onnx, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(tiny_qwen2_onnx, old)
    for name in REUSE_FILES:
        (old / name).unlink()
    reranker = _reranker(old)
    assert reranker.backend.reuses_prefix is False and reranker.describe()["prefix_graphs"] is False
    scores, info = _score_all(reranker, prefix_cache=True)
    expected, _ = _score_all(_reranker(tiny_qwen2_onnx), prefix_cache=True)
    assert not info["prefix_cache"] and info["computed_tokens"] == info["prompt_tokens"]
    assert _max_difference(scores, expected) < ONNX_PARITY_ATOL
    # Quantizing such an artifact still works; it stays without reuse graphs.
    info = _quantize(old, tmp_path / "int8", "int8")
    assert info["prefix_reuse"] is None and not any((tmp_path / "int8" / name).exists() for name in REUSE_FILES)
    assert onnx_backend(tmp_path / "int8").reuses_prefix is False


def test_half_a_pair_of_reuse_graphs_is_refused(tiny_qwen2_onnx, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_qwen2_onnx, broken)
    (broken / ONNX_SUFFIX_MODEL_FILENAME).unlink()
    with pytest.raises(ProrankError, match=f"{ONNX_SUFFIX_MODEL_FILENAME}: missing"):
        onnx_backend(broken)
    (broken / ONNX_SUFFIX_MODEL_FILENAME).write_bytes(b"not a protobuf" * 100)
    with pytest.raises(ProrankError, match=f"{ONNX_SUFFIX_MODEL_FILENAME}: cannot load"):
        onnx_backend(broken)


def test_a_rewritten_model_onnx_is_caught_before_its_weights_are_misread(tiny_qwen2_onnx, tmp_path):
    """prefix.onnx and suffix.onnx read their weights at byte offsets inside model.onnx: re-saving it (as any
    graph tool would, here with one more metadata entry) moves them, and loading must refuse, not misread."""
    import onnx

    changed = tmp_path / "changed"
    shutil.copytree(tiny_qwen2_onnx, changed)
    model = onnx.load(str(changed / "model.onnx"))
    model.metadata_props.add(key="edited_by", value="another tool")
    onnx.save(model, str(changed / "model.onnx"))
    with pytest.raises(ProrankError, match="model.onnx has changed since export"):
        onnx_backend(changed)


def test_artifact_of_symbolic_links_scores_and_quantizes(tiny_qwen2_onnx, tmp_path):
    """A Hugging Face cache snapshot links every file to a blob named by its hash; the reuse graphs must still
    find model.onnx's bytes (onnx.load refuses external data behind a link, so the exporter reads them itself)."""
    blobs, snapshot = tmp_path / "blobs", tmp_path / "snapshot"
    blobs.mkdir()
    snapshot.mkdir()
    for index, item in enumerate(sorted(tiny_qwen2_onnx.iterdir())):
        shutil.copyfile(item, blobs / f"blob{index}")
        (snapshot / item.name).symlink_to(blobs / f"blob{index}")
    scores, info = _score_all(_reranker(snapshot), prefix_cache=True)
    expected, _ = _score_all(_reranker(tiny_qwen2_onnx), prefix_cache=True)
    assert info["prefix_graphs"] and _max_difference(scores, expected) == 0
    copy = _quantize(snapshot, tmp_path / "copy", "fp32")
    assert copy["prefix_reuse"]["weight_bytes_shared_with_model"] > copy["model_bytes"]
    assert onnx_backend(tmp_path / "copy").reuses_prefix
