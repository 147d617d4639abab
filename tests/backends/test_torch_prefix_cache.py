"""The torch backend's prefix reuse against itself without it: the same scores in fp32 on random Qwen2 and Llama
models with real tokenizers, the same rankings in bf16, and the tokens it really computed."""

import numpy as np
import pytest
from conftest import PREFIX_CASES, PREFIX_DOCS, PREFIX_QUERY, requires_torch

from prorank_edge.contract import shared_prefix_length
from prorank_edge.reranker import Reranker

pytestmark = requires_torch

QUERY, DOCS, CASES = PREFIX_QUERY, PREFIX_DOCS, PREFIX_CASES


def pair(model_dir, dtype="float32", **options):
    def load(cache):
        return Reranker(str(model_dir), backend="torch", device="cpu", dtype=dtype, max_length=160,
                        prefix_cache=cache, **options)
    return load(True), load(False)


def in_input_order(results):
    return np.array([r["score"] for r in sorted(results, key=lambda r: r["corpus_id"])])


@pytest.mark.parametrize("fixture", ["tiny_qwen2_dir", "tiny_llama_dir"])
@pytest.mark.parametrize("case", list(CASES))
def test_fp32_scores_equal_without_reuse(fixture, case, request):
    model_dir = request.getfixturevalue(fixture)
    on, off = pair(model_dir, batch_size=3)  # 7 candidates in 3 batches: one prefix serves all of them
    kwargs = CASES[case]
    docs = kwargs.get("documents", DOCS)
    with_reuse = in_input_order(on.rank(kwargs["query"], docs, instruction=kwargs.get("instruction")))
    without = in_input_order(off.rank(kwargs["query"], docs, instruction=kwargs.get("instruction")))
    np.testing.assert_allclose(with_reuse, without, atol=1e-4)
    ids = on.prompts.build(kwargs["query"], docs, kwargs.get("instruction"))
    shared = shared_prefix_length(ids)
    info, total = on.describe(), sum(len(i) for i in ids)
    # the prefix ran once for the three batches
    assert (info["prompt_tokens"], info["computed_tokens"]) == (total, total - (len(docs) - 1) * shared)
    assert off.describe()["computed_tokens"] == off.describe()["prompt_tokens"] == total


def test_one_candidate_and_interleaved_queries(tiny_qwen2_dir):
    on, off = pair(tiny_qwen2_dir, batch_size=2)
    ids = on.prompts.build(QUERY, DOCS[:1])[0]
    direct = on.backend.score_with_prefix(ids[:40], [ids[40:]])  # one suffix against a prefix pass
    np.testing.assert_allclose(direct, off.backend.score_batch([ids]), atol=1e-4)
    pairs = [(QUERY if i % 2 else "what causes influenza", doc) for i, doc in enumerate(DOCS * 2)]
    np.testing.assert_allclose(on.predict(pairs), off.predict(pairs), atol=1e-4)


def test_bf16_keeps_the_ranking(tiny_llama_dir):
    on, off = pair(tiny_llama_dir, dtype="bfloat16")
    with_reuse = in_input_order(on.rank(QUERY, DOCS))
    without = in_input_order(off.rank(QUERY, DOCS))
    assert list(np.argsort(-with_reuse, kind="stable")) == list(np.argsort(-without, kind="stable"))
    np.testing.assert_allclose(with_reuse, without, atol=0.05)
