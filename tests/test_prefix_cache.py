"""Prefix reuse planning (contract.shared_prefix_length / prefix_batches) and how the Reranker uses it, on a
stand-in backend that records what it was asked to compute (no engine)."""

import numpy as np
import pytest

from prorank_edge.backends.base import ScoringBackend
from prorank_edge.contract import prefix_batches, shared_prefix_length
from prorank_edge.reranker import Reranker


def test_shared_prefix_is_taken_from_the_ids_and_leaves_a_last_token():
    assert shared_prefix_length([[1, 2, 3, 4], [1, 2, 3, 5, 6]]) == 3
    assert shared_prefix_length([[1, 2, 3], [1, 2, 3, 4]]) == 2  # a whole prompt as prefix would leave no score
    assert shared_prefix_length([[1, 2, 3]]) == 2
    assert shared_prefix_length([[9, 2], [1, 2]]) == 0
    assert shared_prefix_length([]) == 0


def test_a_tokenizer_merge_across_the_query_boundary_shortens_the_prefix(qwen_tokenizer):
    """The prefix comes from the built ids, not from the template: where the document's first token would merge
    with what precedes it, the ids differ there and the shared part ends before it."""
    from prorank_edge.contract import PromptBuilder

    builder = PromptBuilder(qwen_tokenizer, max_length=256)
    ids = builder.build("what causes influenza", ["Influenza viruses.", "Bacteria do not."])
    shared = shared_prefix_length(ids)
    assert ids[0][:shared] == ids[1][:shared] and ids[0][shared] != ids[1][shared]
    query_end = len(builder.prefix_ids) + len(builder.query_ids("what causes influenza")) + len(builder.separator_ids)
    assert shared >= query_end  # at least prefix + query + separator; "document:" tokens too, when they match


def test_prefix_batches_keep_groups_apart_and_cover_every_prompt_once():
    ids = [[1, 2, 3, 10], [7, 8, 20], [1, 2, 3, 11, 12], [7, 8, 21, 22], [1, 2, 3, 13], [5, 6]]
    groups = ["a", "b", "a", "b", "a", "c"]
    plan = prefix_batches(ids, groups, batch_size=2)
    seen = sorted(i for _, batch in plan for i in batch)
    assert seen == list(range(len(ids)))
    for _, batch in plan:
        assert len({groups[i] for i in batch}) == 1
        assert len(batch) <= 2
    by_group = {groups[batch[0]]: prefix for prefix, batch in plan}
    assert by_group == {"a": 3, "b": 2, "c": 0}  # a lone candidate ("c") gets no prefix pass
    assert [p for p, _ in prefix_batches(ids, None, batch_size=8)] == [0]  # no group: the common prefix of all


class RecordingBackend(ScoringBackend):
    """Scores a prompt by a hash of its ids, exactly as if joined; records prefix and suffix calls."""

    name = "recording"
    reuses_prefix = True

    def __init__(self, tokenizer, **kwargs):
        super().__init__(tokenizer, **kwargs)
        self.prefixes: list[tuple[int, ...]] = []
        self.whole_batches = 0

    @staticmethod
    def value(ids) -> float:
        return float(sum((i + 1) * t for i, t in enumerate(ids)) % 9973)

    def score_batch(self, token_ids):
        self.whole_batches += 1
        return np.array([self.value(t) for t in token_ids], dtype=np.float32)

    def score_with_prefix(self, prefix, suffixes):
        self.prefixes.append(tuple(prefix))
        return np.array([self.value(list(prefix) + list(s)) for s in suffixes], dtype=np.float32)


@pytest.fixture()
def recorder(qwen_tokenizer):
    return RecordingBackend(qwen_tokenizer, max_length=128)


def test_predict_groups_interleaved_queries_and_scores_like_whole_prompts(recorder):
    pairs = [("what causes flu", f"document {i} " * i) for i in range(5)]
    pairs += [("is coffee healthy", f"text {i}") for i in range(4)]
    pairs = [pairs[i] for i in (0, 5, 1, 6, 2, 7, 3, 8, 4)]  # the two queries alternate
    with_reuse = Reranker.from_backend(recorder, batch_size=2).predict(pairs)
    whole = [recorder.value(ids) for ids in recorder.prompts.build_pairs(pairs)]
    np.testing.assert_array_equal(with_reuse, np.asarray(whole, dtype=np.float32))
    assert len(set(recorder.prefixes)) == 2 and recorder.whole_batches == 0
    # batches of 2: the 5 candidates of the first query take 3 calls, all with the same prefix
    assert len(recorder.prefixes) == 3 + 2


def test_prefix_cache_off_scores_whole_prompts(recorder):
    reranker = Reranker.from_backend(recorder, prefix_cache=False)
    results = reranker.rank("what causes flu", ["a", "bb", "ccc"])
    assert recorder.prefixes == [] and recorder.whole_batches == 1
    assert reranker.describe()["prefix_cache"] is False and len(results) == 3


@pytest.mark.parametrize("prefix_cache", [True, False])
def test_reranker_cuts_padded_batches_by_the_backends_call_cost(recorder, prefix_cache):
    documents = ["word " * 60] * 3 + ["word"] * 3  # 3 long and 3 short prompts of one query
    reranker = Reranker.from_backend(recorder, batch_size=8, prefix_cache=prefix_cache)
    calls = lambda: len(recorder.prefixes) + recorder.whole_batches  # noqa: E731
    reranker.rank("what causes flu", documents)
    assert calls() == 1  # no call cost (a backend that does not pad): one full batch
    recorder.padding_call_cost = 16  # padding 3 prompts by ~60 tokens costs more than a call
    reranker.rank("what causes flu", documents)
    assert calls() == 3
    recorder.padding_call_cost = 10_000
    reranker.rank("what causes flu", documents)
    assert calls() == 4
