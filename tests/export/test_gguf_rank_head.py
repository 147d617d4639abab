"""GGUF rank head (export/rank_head.py, `export --rank-head`): the rotation is exact, llama.cpp's rank pooling
through the stored rerank template (what `llama-server --reranking` runs) scores like prorank-edge, files
without a head keep working, and the loader's refusal of a classifier head for Qwen2/Llama stays documented."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("llama_cpp")
pytest.importorskip("gguf")

from conftest import TINY_PAIRS, requires_torch, scifact_gguf_pairs  # noqa: E402

from prorank_edge.backends.gguf_backend import GgufBackend  # noqa: E402
from prorank_edge.backends.llama_runtime import (  # noqa: E402
    LlamaVocabTokenizer,
    gguf_metadata_string,
    import_llama_cpp,
    load_gguf_model,
    rank_pooling_scores,
)
from prorank_edge.errors import ProrankError  # noqa: E402
from prorank_edge.export.gguf_export import export_gguf, rerank_template  # noqa: E402
from prorank_edge.export.parity import spearman  # noqa: E402
from prorank_edge.export.rank_head import SEPARATOR_TOKEN, head_rotation, rotate_for_rank_head  # noqa: E402
from prorank_edge.formats import GGUF_RANK_HEAD_KEY, RANK_HEAD_KIND  # noqa: E402

# Rank pooling against the same file's logits through GgufBackend, f16: the two read the same body, but the
# backend's LM head is f16 rows and its decodes batch 8 prompts, so they differ by f16 rounding (measured: random
# Qwen2 5e-4, random Llama 1.7e-3; the built-in model 0.023, the size of its f16 file's own distance from torch
# fp32, 0.021). On the built-in model most of that is llama.cpp's batch shape: decoded one prompt at a time, as
# rank pooling is, the two differ by 0.0068 (an f32 head takes that to 7e-5), while the backend's own scores move
# by 0.016 between one prompt and 8 per decode (Ice Lake, 40 SciFact pairs; docs/export.md).
F16_TOLERANCE = 1e-2


@pytest.fixture(scope="module")
def rank_head_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("rank_head")
    done = {}

    def export(model_dir: Path, quant: str = "f16") -> tuple[Path, dict]:
        key = (str(model_dir), quant)
        if key not in done:
            path = root / f"{model_dir.name}-{quant}-rank.gguf"
            done[key] = (path, export_gguf(model_dir, path, quant, rank_head=True))
        return done[key]

    return export


def served_ids(path: Path, pairs) -> list[list[int]]:
    """The token ids llama-server's /v1/rerank decodes: its rerank template filled with the raw texts, tokenized as
    one string by llama.cpp (special tokens parsed)."""
    llama_cpp = import_llama_cpp()
    model = load_gguf_model(llama_cpp, path)
    try:
        template = llama_cpp.llama_model_chat_template(model, b"rerank")
        assert template, "no tokenizer.chat_template.rerank in the file"
        template = template.decode("utf-8")
        tokenizer = LlamaVocabTokenizer(llama_cpp, model)
        return [tokenizer.encode(template.replace("{query}", q).replace("{document}", d)).ids for q, d in pairs]
    finally:
        llama_cpp.llama_model_free(model)


def rank_scores(path: Path, token_ids) -> list[float]:
    """llama.cpp's rank pooling, one decode per prompt (what llama-server does per document)."""
    llama_cpp = import_llama_cpp()
    model = load_gguf_model(llama_cpp, path)
    try:
        return rank_pooling_scores(llama_cpp, model, token_ids)
    finally:
        llama_cpp.llama_model_free(model)


def served_scores(path: Path, pairs) -> list[float]:
    """What llama-server's /v1/rerank computes for these pairs."""
    return rank_scores(path, served_ids(path, pairs))


def marker_id(path: Path) -> int:
    """The token id of the separator marker in the file's vocabulary."""
    llama_cpp = import_llama_cpp()
    model = load_gguf_model(llama_cpp, path)
    try:
        (token,) = LlamaVocabTokenizer(llama_cpp, model).encode(SEPARATOR_TOKEN).ids
        return token
    finally:
        llama_cpp.llama_model_free(model)


def backend_scores(path: Path, pairs) -> np.ndarray:
    backend = GgufBackend(path, device="cpu")
    try:
        return backend.score_batch(backend.prompts.build_pairs(pairs))
    finally:
        backend.close()


def per_query_order(pairs, scores) -> dict[str, list[int]]:
    orders: dict[str, list[tuple[float, int]]] = {}
    for i, ((query, _), score) in enumerate(zip(pairs, scores)):
        orders.setdefault(query, []).append((-float(score), i))
    return {q: [i for _, i in sorted(items)] for q, items in orders.items()}


# ---- the rotation itself (numpy and torch, no llama.cpp) -----------------------------------------------------

def test_head_rotation_is_orthogonal_with_the_head_first():
    head = np.random.default_rng(1).normal(size=48)
    q = head_rotation(head)
    assert np.allclose(q.T @ q, np.eye(48), atol=1e-12)
    assert np.allclose(q[:, 0], head / np.linalg.norm(head), atol=1e-12)
    with pytest.raises(ProrankError, match="zero"):
        head_rotation(np.zeros(8))


@requires_torch
@pytest.mark.parametrize("kind", ["qwen2", "llama"])
def test_rotated_checkpoint_scores_the_same_and_holds_the_score_in_channel_0(kind, wide_qwen2_dir, wide_llama_dir,
                                                                            tmp_path):
    """Torch fp32 on the rotated weights: the same scores, and channel 0 of the final normed hidden state at the
    last token is the score (what llama.cpp's rank pooling returns)."""
    import torch
    from safetensors.torch import load_file, save_file
    from transformers import AutoModelForCausalLM

    from prorank_edge.backends.torch_backend import TorchBackend

    source = wide_qwen2_dir if kind == "qwen2" else wide_llama_dir
    config = json.loads((source / "config.json").read_text())
    state = {k: v.float().numpy() for k, v in load_file(str(source / "model.safetensors")).items()}
    reference = TorchBackend(source, device="cpu", dtype="float32")
    ids = reference.prompts.build_pairs(TINY_PAIRS)
    expected = reference.score_batch(ids)
    pos, neg = reference.prompts.positive_token_id, reference.prompts.negative_token_id

    rotated = rotate_for_rank_head(state, config, pos, neg)
    assert not np.allclose(rotated["model.embed_tokens.weight"], state["model.embed_tokens.weight"], atol=1e-3)
    target = tmp_path / "rotated"
    target.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json", "prorank_contract.json"):
        (target / name).write_bytes((source / name).read_bytes())
    (target / "config.json").write_text(json.dumps({**config, "tie_word_embeddings": False}))
    save_file({k: torch.from_numpy(v) for k, v in rotated.items()}, str(target / "model.safetensors"),
              metadata={"format": "pt"})

    np.testing.assert_allclose(TorchBackend(target, device="cpu", dtype="float32").score_batch(ids), expected,
                               atol=1e-4)
    model = AutoModelForCausalLM.from_pretrained(target, dtype=torch.float32).eval()
    with torch.no_grad():
        channel0 = [model.model(torch.tensor([p])).last_hidden_state[0, -1, 0].item() for p in ids]
    np.testing.assert_allclose(channel0, expected, atol=1e-4)


def test_rotation_refuses_a_tensor_it_does_not_know():
    rng = np.random.default_rng(0)
    n = 8
    state = {"model.embed_tokens.weight": rng.normal(size=(20, n)), "model.norm.weight": np.ones(n),
             "model.layers.0.self_attn.q_norm.weight": np.ones(n)}
    with pytest.raises(ProrankError, match="q_norm"):
        rotate_for_rank_head(state, {"num_hidden_layers": 0}, 1, 2)


# ---- through llama.cpp --------------------------------------------------------------------------------------

@requires_torch
@pytest.mark.parametrize("kind", ["qwen2", "llama"])
def test_llama_cpp_rank_pooling_scores_like_prorank_edge(kind, wide_qwen2_dir, wide_llama_dir, rank_head_files):
    source = wide_qwen2_dir if kind == "qwen2" else wide_llama_dir
    path, info = rank_head_files(source)
    assert info["rank_head"] is True
    ours = backend_scores(path, TINY_PAIRS)
    served = served_scores(path, TINY_PAIRS)
    assert np.abs(np.array(served) - ours).max() < F16_TOLERANCE
    assert per_query_order(TINY_PAIRS, served) == per_query_order(TINY_PAIRS, ours)


@requires_torch
def test_rank_head_file_scores_like_the_plain_export(wide_qwen2_dir, gguf_cache, rank_head_files):
    """The rotated file is still a correct causal LM: prorank-edge's logit scores match the plain file's."""
    plain, _ = gguf_cache(wide_qwen2_dir, "f16")
    rotated, _ = rank_head_files(wide_qwen2_dir)
    np.testing.assert_allclose(backend_scores(rotated, TINY_PAIRS), backend_scores(plain, TINY_PAIRS), atol=1e-2)


@requires_torch
def test_rerank_template_splits_pieces_as_prorank_does(wide_qwen2_dir, rank_head_files):
    """Tokenized as one string, "...droplets.\\n" would merge into one token; the separator token keeps the pieces
    apart, so llama.cpp's ids equal PromptBuilder's once the marker is read as the separator."""
    path, _ = rank_head_files(wide_qwen2_dir)
    llama_cpp = import_llama_cpp()
    model = load_gguf_model(llama_cpp, path)
    backend = GgufBackend(path, device="cpu")
    try:
        template = llama_cpp.llama_model_chat_template(model, b"rerank").decode()
        assert SEPARATOR_TOKEN in template and template.count("{query}") == template.count("{document}") == 1
        assert gguf_metadata_string(llama_cpp, model, GGUF_RANK_HEAD_KEY) == RANK_HEAD_KIND
        tokenizer = LlamaVocabTokenizer(llama_cpp, model)
        marker = marker_id(path)
        (separator,) = backend.prompts.separator_ids
        pairs = [("what spreads influenza?", "Influenza spreads by respiratory droplets."), *TINY_PAIRS]
        for (query, document), ours in zip(pairs, backend.prompts.build_pairs(pairs)):
            served = tokenizer.encode(template.replace("{query}", query).replace("{document}", document)).ids
            assert [separator if t == marker else t for t in served] == ours
        # Without the marker the same text tokenizes differently, which is why it is there.
        plain = rerank_template(backend.contract)
        query, document = pairs[0]
        assert tokenizer.encode(plain.replace("{query}", query).replace("{document}", document)).ids \
            != backend.prompts.build_pairs(pairs[:1])[0]
    finally:
        backend.close()
        llama_cpp.llama_model_free(model)


@requires_torch
@pytest.mark.parametrize("quant", ["q8_0", "q4_k_m"])
def test_quantized_rank_head_files_rank_like_their_own_logits(quant, wide_llama_dir, rank_head_files):
    path, _ = rank_head_files(wide_llama_dir, quant)
    ours = backend_scores(path, TINY_PAIRS)
    served = np.array(served_scores(path, TINY_PAIRS))
    assert spearman(served, ours) > 0.97


@requires_torch
@pytest.mark.slow
def test_builtin_model_rank_head_ranks_like_prorank_edge(smollm2_dir, scifact_dir, rank_head_files):
    """SmolLM2-135M at f16 on 40 SciFact pairs: rank pooling vs the same file's logit scores, on prorank-edge's
    ids. llama-server's own ids equal them where nothing is cut; it does not cut a long abstract to max_length,
    so there its score is of the whole text (the documented difference)."""
    pairs = scifact_gguf_pairs(scifact_dir)
    path, _ = rank_head_files(smollm2_dir)
    backend = GgufBackend(path, device="cpu")
    try:
        ids = backend.prompts.build_pairs(pairs)
        ours = backend.score_batch(ids)
        (separator,) = backend.prompts.separator_ids
    finally:
        backend.close()
    pooled = np.array(rank_scores(path, ids))
    assert spearman(pooled, ours) > 0.999
    assert np.abs(pooled - ours).max() < 0.05  # 8 prompts per decode against one: llama.cpp's batch numerics
    # Decoded as rank pooling decodes (one prompt at a time), only the read-out differs: f32 channel vs f16 rows.
    one_by_one = GgufBackend(path, device="cpu", n_seq_max=1)
    try:
        assert np.abs(pooled - one_by_one.score_batch(ids)).max() < F16_TOLERANCE
    finally:
        one_by_one.close()
    served = served_ids(path, pairs)
    marker = marker_id(path)
    fits = [i for i, s in enumerate(served) if [separator if t == marker else t for t in s] == ids[i]]
    cut = [i for i in range(len(pairs)) if i not in fits]
    assert fits and cut  # both kinds are present in this sample
    np.testing.assert_allclose(np.array(rank_scores(path, [served[i] for i in fits])), pooled[fits], atol=1e-3)


@requires_torch
@pytest.mark.parametrize("kind", ["qwen2", "llama"])
def test_loader_refuses_a_classifier_head_for_qwen2_and_llama(kind, wide_qwen2_dir, wide_llama_dir, tmp_path,
                                                              monkeypatch):
    """Why the rotation exists: a QWEN2/LLAMA file with llama.cpp's own classifier tensor `cls.output` does not
    load (llama-cpp-python 0.3.36: "wrong number of tensors"). If a llama.cpp update accepts it, this fails, and
    the exporter can write the head as Qwen3 rerankers do."""
    import gguf

    original = gguf.GGUFWriter.write_header_to_file

    def with_cls_head(self, *args, **kwargs):
        self.add_tensor("cls.output.weight", np.zeros((1, 256), np.float32))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(gguf.GGUFWriter, "write_header_to_file", with_cls_head)
    path = tmp_path / "cls.gguf"
    export_gguf(wide_qwen2_dir if kind == "qwen2" else wide_llama_dir, path, "f16")  # the vocabulary check passes
    monkeypatch.undo()
    with pytest.raises(ProrankError, match="wrong number of tensors"):
        load_gguf_model(import_llama_cpp(), path)


@requires_torch
def test_adapter_merge_refuses_a_rank_head_file(wide_llama_dir, rank_head_files, tmp_path):
    from prorank_edge.gguf_adapter import apply_adapter_to_gguf

    path, _ = rank_head_files(wide_llama_dir)
    with pytest.raises(ProrankError, match="rank head"):
        apply_adapter_to_gguf(path, tmp_path / "no-adapter", tmp_path / "out.gguf")


@requires_torch
def test_export_command_writes_a_rank_head(tiny_qwen2_dir, tmp_path):
    from click.testing import CliRunner

    from prorank_edge.cli import main

    output = tmp_path / "served.gguf"
    result = CliRunner().invoke(main, ["export", "--model", str(tiny_qwen2_dir), "--format", "gguf", "--quant",
                                       "f16", "--rank-head", "--output", str(output)])
    assert result.exit_code == 0, result.output
    assert f"llama-server -m {output} --reranking" in result.output
    served = np.array(served_scores(output, TINY_PAIRS))
    assert np.abs(served - backend_scores(output, TINY_PAIRS)).max() < F16_TOLERANCE
