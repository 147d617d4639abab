"""The torch backend against a plain full-logits transformers computation of the same prompts."""

import numpy as np
import pytest
from conftest import requires_torch
from test_contract import reference_ids

pytestmark = requires_torch

QUERY = "does vitamin D reduce the risk of fractures in older adults?"
DOCS = [
    "Vitamin D supplementation and fracture risk: a meta-analysis of randomized trials.",
    "short",
    "The mitochondrial genome encodes thirteen proteins of the respiratory chain. " * 12,
    "Ünïcødé and emoji 🙂 inside a document",
    "A" * 3000,
    "Calcium and vitamin D in elderly women",
]


def full_logits_scores(model_dir, ids_list):
    """Reference: one unpadded forward pass per prompt, full vocabulary logits, last position."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    pos, neg = tok.convert_tokens_to_ids("1"), tok.convert_tokens_to_ids("0")
    out = []
    with torch.no_grad():
        for ids in ids_list:
            logits = model(torch.tensor([ids])).logits[0, -1]
            out.append(float(logits[pos] - logits[neg]))
    return np.array(out)


@pytest.mark.parametrize("fixture", ["tiny_qwen2_dir", "tiny_llama_dir"])
def test_scores_equal_full_logits_reference(fixture, request, qwen_tokenizer):
    from prorank_edge import Reranker

    model_dir = request.getfixturevalue(fixture)
    reranker = Reranker(str(model_dir), dtype="float32", max_length=256, batch_size=4)
    built = reranker.prompts.build(QUERY, DOCS)
    if fixture == "tiny_qwen2_dir":  # the real Qwen2.5 tokenizer: ids equal the reference construction
        assert built == [reference_ids(qwen_tokenizer, QUERY, d, max_length=256) for d in DOCS]
    expected = full_logits_scores(model_dir, built)
    got = reranker.predict([(QUERY, d) for d in DOCS])
    assert np.abs(got - expected).max() < 1e-4
    assert np.std(expected) > 1e-3  # the comparison is not between constants
    ranked = reranker.rank(QUERY, DOCS, return_documents=True)
    assert [r["corpus_id"] for r in ranked] == list(np.argsort(-expected, kind="stable"))
    assert sorted(r["text"] for r in ranked) == sorted(DOCS)


def test_batch_size_does_not_change_scores(tiny_qwen2_dir):
    from prorank_edge import Reranker

    reranker = Reranker(str(tiny_qwen2_dir), dtype="float32")
    pairs = [(QUERY, d) for d in DOCS]
    one = reranker.predict(pairs, batch_size=1)
    many = reranker.predict(pairs, batch_size=6)
    assert np.abs(one - many).max() < 1e-4


def test_cpu_batches_cut_by_padding_cost_score_as_full_batches(tiny_qwen2_dir):
    from prorank_edge import Reranker
    from prorank_edge.backends.base import CPU_CALL_COST_TOKENS

    reranker = Reranker(str(tiny_qwen2_dir), device="cpu", dtype="float32")
    assert reranker.backend.padding_call_cost == CPU_CALL_COST_TOKENS
    pairs = [(QUERY, d * 20) for d in DOCS[:3]] + [(QUERY, d) for d in DOCS[3:]]  # long and short prompts
    planned = reranker.predict(pairs, batch_size=8)
    reranker.backend.padding_call_cost = None
    full = reranker.predict(pairs, batch_size=8)
    assert np.abs(planned - full).max() < 1e-4


def test_rank_options(tiny_qwen2_dir):
    from prorank_edge import Reranker
    from prorank_edge.errors import InputError

    reranker = Reranker(str(tiny_qwen2_dir), dtype="float32")
    top = reranker.rank(QUERY, DOCS, top_k=2)  # no texts by default, as CrossEncoder.rank
    assert len(top) == 2 and "text" not in top[0]
    assert top[0]["score"] >= top[1]["score"]
    norm = reranker.rank(QUERY, DOCS, normalize=True)
    assert all(0.0 <= r["score"] <= 1.0 for r in norm)
    assert [r["corpus_id"] for r in norm] == [r["corpus_id"] for r in reranker.rank(QUERY, DOCS)]
    with_instruction = reranker.predict([(QUERY, DOCS[0])], instruction="Judge scientific evidence")
    assert with_instruction[0] != pytest.approx(reranker.predict([(QUERY, DOCS[0])])[0], abs=1e-6)
    assert reranker.rank(QUERY, []) == []
    with pytest.raises(InputError):
        reranker.rank("  ", DOCS)


def test_bf16_is_close_to_fp32(tiny_qwen2_dir):
    from prorank_edge import Reranker

    pairs = [(QUERY, d) for d in DOCS]
    fp32 = Reranker(str(tiny_qwen2_dir), dtype="float32").predict(pairs)
    bf16 = Reranker(str(tiny_qwen2_dir), dtype="bfloat16")
    assert bf16.describe()["dtype"] == "bfloat16"
    assert np.corrcoef(fp32, bf16.predict(pairs))[0, 1] > 0.95


def test_dtype_auto_follows_cpu_flags(monkeypatch):
    import torch

    from prorank_edge.backends import torch_backend

    monkeypatch.setattr(torch_backend, "cpu_has_native_bf16", lambda: True)
    assert torch_backend.resolve_dtype("auto", torch.device("cpu")) == torch.bfloat16
    monkeypatch.setattr(torch_backend, "cpu_has_native_bf16", lambda: False)
    assert torch_backend.resolve_dtype("auto", torch.device("cpu")) == torch.float32
