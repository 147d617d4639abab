"""Parity with the released models' reference code: mxbai-rerank 0.1.6's MxbaiRerankV2 (issue 13).

There `max_length` is the content (query piece, separator, document piece) and `predefined_length` the rest of
the template; here `max_length` is the whole prompt, so ours = mxbai-rerank's max_length + predefined_length.
mxbai-rerank is a test-only dependency; without it these tests skip.
"""

import numpy as np
import pytest
from conftest import requires_torch

from prorank_edge.contract import PromptBuilder

pytestmark = requires_torch

QUERY = "does vitamin D reduce the risk of fractures in older adults?"
LONG_QUERY = "what do randomized trials say about vitamin D, calcium, falls and hip fractures? " * 20
INSTRUCTION = "Find scientific evidence that supports or refutes the claim"
DOCS = [
    "Vitamin D supplementation and fracture risk: a meta-analysis of randomized trials.",
    "short",
    "The mitochondrial genome encodes thirteen proteins of the respiratory chain. " * 40,
    "Ünïcødé and emoji 🙂 inside a document " * 30,
]
# mxbai-rerank max_length values. At 48 and 150 a budget without the separator capped a long query one token
# short of mxbai-rerank's; at 101 both caps agree.
CONTENT_LENGTHS = (48, 101, 150)


@pytest.fixture(scope="module")
def mxbai_reference(request):
    """MxbaiRerankV2 built by its own __init__ on the local random-weight checkpoint (its from_pretrained calls
    take a folder as well as a Hub id), so its template lengths and max_length clamp are its own."""
    mxbai_rerank = pytest.importorskip("mxbai_rerank")
    import torch

    tiny_qwen2_dir = request.getfixturevalue("tiny_qwen2_dir")  # only once the skip is ruled out

    made = {}

    def reference(max_length: int):
        if max_length not in made:
            made[max_length] = mxbai_rerank.MxbaiRerankV2(str(tiny_qwen2_dir), device="cpu",
                                                          torch_dtype=torch.float32, max_length=max_length)
        return made[max_length]

    return reference


def mxbai_ids(reference, query, docs, instruction):
    """The unpadded ids of mxbai-rerank's own prepare_inputs, one list per document."""
    batch = reference.prepare_inputs([query] * len(docs), docs, instruction=instruction)
    return [row[mask.bool()].tolist() for row, mask in zip(batch["input_ids"], batch["attention_mask"])]


@pytest.mark.parametrize("content_length", CONTENT_LENGTHS)
def test_prompt_ids_equal_mxbai_prepare_inputs(content_length, mxbai_reference, qwen_tokenizer):
    reference = mxbai_reference(content_length)
    builder = PromptBuilder(qwen_tokenizer, max_length=content_length + reference.predefined_length)
    for instruction in (None, INSTRUCTION):
        for query in (QUERY, LONG_QUERY):
            expected = mxbai_ids(reference, query, DOCS, instruction)
            assert builder.build(query, DOCS, instruction) == expected, (query[:20], instruction)
            assert builder.build_pairs([(query, d) for d in DOCS], instruction) == expected
            assert max(map(len, expected)) == builder.max_length  # long documents were cut, to the full length
    # The cases reach both cuts: the long query hits its cap, which is 3/4 of mxbai-rerank's content length.
    assert len(builder.query_ids(LONG_QUERY)) == content_length * 3 // 4 == builder.query_budget
    assert builder.content_budget == reference.max_length == content_length


@pytest.mark.slow  # mxbai-rerank's forward makes full-vocabulary logits at every position
def test_scores_equal_mxbai_predict(mxbai_reference, request):
    from prorank_edge import Reranker

    reference = mxbai_reference(150)
    reranker = Reranker(str(request.getfixturevalue("tiny_qwen2_dir")), device="cpu", dtype="float32",
                        max_length=150 + reference.predefined_length)
    expected, got = [], []
    for instruction in (None, INSTRUCTION):
        for query in (QUERY, LONG_QUERY):
            # mxbai-rerank's own forward: left padding to a multiple of 8, full logits, last position.
            expected.append(reference.predict([query] * len(DOCS), DOCS, instruction=instruction).numpy())
            got.append(reranker.predict([(query, d) for d in DOCS], instruction=instruction))
    expected, got = np.concatenate(expected), np.concatenate(got)
    assert np.abs(got - expected).max() < 1e-4
    assert np.std(expected) > 1e-3  # the comparison is not between constants
