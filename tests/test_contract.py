"""The scoring contract: prompt ids, truncation, padding, batching, serialization."""

import json

import numpy as np
import pytest

from prorank_edge.contract import (
    PRORANK_PREFIX,
    PRORANK_SUFFIX,
    PRORANK_TASK_PROMPT,
    PromptBuilder,
    ScoringContract,
    left_pad,
    length_batches,
    position_ids,
)
from prorank_edge.errors import ContractError

EXPECTED_PROMPT = (
    "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
    "<|im_start|>user\nquery: what is a cat\ndocument: A cat is a small feline.\n"
    "You are a search relevance expert who evaluates how well documents match search queries. For each "
    "query-document pair, carefully analyze the semantic relationship between them, then provide your binary "
    "relevance judgment (0 for not relevant, 1 for relevant).\nRelevance:<|im_end|>\n<|im_start|>assistant\n"
)


def reference_ids(tok, query, document, instruction=None, max_length=512):
    """The released models' construction, written out independently: pieces tokenized one by one."""
    enc = lambda s: tok.encode(s, add_special_tokens=False).ids  # noqa: E731
    prefix, sep, task, suffix = enc(PRORANK_PREFIX), enc("\n"), enc(PRORANK_TASK_PROMPT), enc(PRORANK_SUFFIX)
    # mxbai-rerank's content: query, the separator after it, document (tests/test_mxbai_parity.py runs its code)
    content = max_length - len(prefix) - len(sep) - len(task) - len(suffix)
    query_text = f"query: {query}" if instruction is None else f"instruction: {instruction}\nquery: {query}"
    q = enc(query_text)[: content * 3 // 4]
    d = enc(f"document: {document}")[: content - len(q) - len(sep)]
    return prefix + q + sep + d + sep + task + suffix


def test_prompt_text_matches_released_template(qwen_tokenizer):
    ids = PromptBuilder(qwen_tokenizer).build("what is a cat", ["A cat is a small feline."])[0]
    assert qwen_tokenizer.decode(ids, skip_special_tokens=False) == EXPECTED_PROMPT
    # <|im_start|> / <|im_end|> are single special tokens in Qwen2.5, not spelled out.
    assert ids[0] == qwen_tokenizer.token_to_id("<|im_start|>") == 151644


def test_ids_equal_reference_construction(qwen_tokenizer):
    builder = PromptBuilder(qwen_tokenizer)
    docs = ["short doc", "Ünïcødé text — with dashes", "x " * 2000]
    # the long query is cut at its 3/4 cap, where the separator's place in the content decides a token
    for query in ("does aspirin prevent heart attacks?", "aspirin and heart attacks " * 120):
        for instruction in (None, "Find scientific evidence"):
            built = builder.build(query, docs, instruction)
            for doc, ids in zip(docs, built):
                assert ids == reference_ids(qwen_tokenizer, query, doc, instruction)
    assert builder.positive_token_id == qwen_tokenizer.token_to_id("1")
    assert builder.negative_token_id == qwen_tokenizer.token_to_id("0")


def test_only_document_is_truncated(qwen_tokenizer):
    builder = PromptBuilder(qwen_tokenizer, max_length=128)
    ids = builder.build("q " * 500, ["word " * 1000])[0]
    assert len(ids) == 128
    tail = builder.separator_ids + builder.task_ids + builder.suffix_ids
    assert ids[-len(tail):] == tail  # task prompt and assistant suffix survive
    assert ids[: len(builder.prefix_ids)] == builder.prefix_ids
    # The query is capped at 3/4 of the content budget, so the document keeps the rest.
    query_ids = builder.query_ids("q " * 500)
    assert len(query_ids) == builder.content_budget * 3 // 4
    short = builder.build("short query", ["tiny"])[0]
    assert len(short) < 128


def test_build_pairs_equals_build(qwen_tokenizer):
    builder = PromptBuilder(qwen_tokenizer)
    pairs = [("q1", "a"), ("q2", "b"), ("q1", "c")]
    assert builder.build_pairs(pairs) == [builder.build(q, [d])[0] for q, d in pairs]


def test_too_small_max_length_is_rejected(qwen_tokenizer):
    with pytest.raises(ContractError, match="too small"):
        PromptBuilder(qwen_tokenizer, max_length=40)


def test_multi_token_label_is_rejected(qwen_tokenizer):
    with pytest.raises(ContractError, match="not a single token"):
        PromptBuilder(qwen_tokenizer, ScoringContract(positive_label="relevant document"))


def test_contract_json_roundtrip(tmp_path, qwen_tokenizer):
    contract = PromptBuilder(qwen_tokenizer).contract
    assert contract.positive_token_id == 16 and contract.negative_token_id == 15
    contract.save(tmp_path)
    assert ScoringContract.load(tmp_path) == contract
    assert ScoringContract.load(tmp_path / "missing") == ScoringContract()  # models without the file
    (tmp_path / "prorank_contract.json").write_text(json.dumps({"nonsense": 1}))
    with pytest.raises(ContractError, match="unknown field"):
        ScoringContract.load(tmp_path)
    with pytest.raises(ContractError, match="does not match|the tokenizer gives"):
        PromptBuilder(qwen_tokenizer, contract.replace(positive_token_id=99))


def test_normalize_is_sigmoid_with_offset():
    contract = ScoringContract(normalize_offset=2.0, normalize_scale=2.0)
    out = contract.normalize(np.array([2.0, 4.0, -1e6]))
    assert out[0] == pytest.approx(0.5)
    assert out[1] == pytest.approx(1 / (1 + np.exp(-1.0)))
    assert out[2] == pytest.approx(0.0)


def test_left_pad_and_positions():
    ids, mask = left_pad([[5, 6, 7], [8]], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    assert position_ids(mask).tolist() == [[0, 1, 2], [0, 0, 0]]


def test_length_batches_cover_every_index_once():
    lengths = [5, 100, 7, 100, 3, 50, 50, 2]
    batches = length_batches(lengths, batch_size=3)
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(len(lengths)))
    assert all(len(b) <= 3 for b in batches)
    assert [lengths[i] for i in batches[0]] == [100, 100, 50]  # longest first
    capped = length_batches(lengths, batch_size=8, max_tokens=200)
    assert all(len(b) * max(lengths[i] for i in b) <= 200 for b in capped)
