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


def _padded_cost(batches, lengths, call_cost):
    return sum(len(b) * max(lengths[i] for i in b) + call_cost for b in batches)


def test_length_batches_with_a_call_cost_cut_where_padding_costs_more():
    lengths = [200] * 4 + [100] * 4
    # one batch pads four prompts by 100 tokens (400) > one more call (64): two batches, longest first
    assert [[lengths[i] for i in b] for b in length_batches(lengths, 8, call_cost=64)] == [[200] * 4, [100] * 4]
    # a call dearer than the padding: one batch, as without a call cost
    assert length_batches(lengths, 8, call_cost=1000) == length_batches(lengths, 8)
    # equal lengths never split below batch_size
    assert [len(b) for b in length_batches([50] * 10, 4, call_cost=0)] == [4, 4, 2]


def test_length_batches_call_cost_plan_is_the_least_padded_cut():
    import itertools
    import random

    rng = random.Random(0)
    for _ in range(200):
        lengths = [rng.randint(1, 300) for _ in range(rng.randint(1, 9))]
        batch_size, call_cost = rng.randint(1, 5), rng.choice([0, 16, 64, 256])
        max_tokens = rng.choice([None, 600])
        plan = length_batches(lengths, batch_size, max_tokens, call_cost)
        assert sorted(i for b in plan for i in b) == list(range(len(lengths)))
        assert all(len(b) <= batch_size for b in plan)
        assert all(len(b) == 1 or len(b) * max(lengths[i] for i in b) <= max_tokens for b in plan if max_tokens)
        # brute force over every cut of the longest-first order into allowed runs
        order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
        best = None
        for cuts in itertools.product([False, True], repeat=len(order) - 1):
            runs, run = [], [order[0]]
            for index, cut in zip(order[1:], cuts):
                if cut:
                    runs.append(run)
                    run = []
                run.append(index)
            runs.append(run)
            if any(len(r) > batch_size or (max_tokens and len(r) > 1 and len(r) * lengths[r[0]] > max_tokens)
                   for r in runs):
                continue
            cost = _padded_cost(runs, lengths, call_cost)
            best = cost if best is None else min(best, cost)
        assert _padded_cost(plan, lengths, call_cost) == best
