"""prorank_edge.reranker: the Python API's input checks and result shape, on a stand-in backend (no engine)."""

import numpy as np
import pytest

from prorank_edge.backends.base import ScoringBackend
from prorank_edge.errors import InputError
from prorank_edge.reranker import Reranker


class LengthBackend(ScoringBackend):
    """Scores a prompt by its length: enough to check ordering and shapes without a model."""

    name = "length"

    def score_batch(self, token_ids):
        return np.array([len(ids) for ids in token_ids], dtype=np.float32)


@pytest.fixture()
def reranker(qwen_tokenizer):
    return Reranker.from_backend(LengthBackend(qwen_tokenizer, max_length=256))


def test_rank_returns_no_texts_unless_asked_like_cross_encoder(reranker):
    documents = ["short", "a much longer document than the first one", "medium sized text"]
    ranked = reranker.rank("query", documents)
    assert [r["corpus_id"] for r in ranked] == [1, 2, 0]
    assert all(set(r) == {"corpus_id", "score"} for r in ranked)
    with_text = reranker.rank("query", documents, return_documents=True, top_k=2)
    assert [r["text"] for r in with_text] == [documents[1], documents[2]]


@pytest.mark.parametrize("call,message", [
    (lambda r: r.predict([("q", "ok"), ("q", "bad \ud800")]), "pair 1: the document: invalid Unicode: a lone "
                                                                 "surrogate U+D800 at character 5"),
    (lambda r: r.predict([("q \udcff", "ok")]), "pair 0: the query: invalid Unicode"),
    (lambda r: r.predict([("q", "ok")], instruction="\udc80"), "the instruction: invalid Unicode"),
    (lambda r: r.rank("q", ["ok", "\ud83d"]), "document 1: invalid Unicode: a lone surrogate U+D83D"),
    (lambda r: r.rank("q \ud800", ["ok"]), "the query: invalid Unicode"),
])
def test_lone_surrogates_are_input_errors_not_tokenizer_type_errors(reranker, call, message):
    with pytest.raises(InputError, match=message.replace("+", r"\+")):
        call(reranker)


def test_valid_astral_characters_pass(reranker):
    assert reranker.predict([("emoji \U0001f600", "text \U0001f389")]).shape == (1,)
