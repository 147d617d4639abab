"""The GGUF backend's prefix reuse against itself without it: the same scores on f16 exports of random Qwen2 and
Llama models with real tokenizers, the same rankings on q8_0 / q4_k_m, the tokens it really computed, no prefix
carried over to another query, and KV cells shared (not copied) between sequences."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("llama_cpp")
pytest.importorskip("gguf")

from conftest import PREFIX_CASES, PREFIX_DOCS, PREFIX_QUERY, requires_torch, scifact_gguf_pairs  # noqa: E402

from prorank_edge.backends.gguf_backend import GgufBackend  # noqa: E402
from prorank_edge.contract import shared_prefix_length  # noqa: E402
from prorank_edge.errors import ProrankError  # noqa: E402
from prorank_edge.reranker import Reranker  # noqa: E402

pytestmark = requires_torch  # the random checkpoints are built with torch before export

MODELS = ["wide_qwen2_dir", "wide_llama_dir"]
# llama.cpp's CPU kernels round activations to f16 (q8 for quantized weights) before each matmul, so a float32
# difference in summation order, which the shape of a decode decides, can flip a rounding: without the cache a
# prompt's score already moves with what it is batched with (f16: up to 6e-4 with flash attention off, 2.4e-3
# on; q8_0 / q4_k_m on the random Llama: 2e-2 / 3e-2). Suffix-only decodes are other shapes, so the cache moves
# scores by as much or a few times more; measured max |reuse - no reuse| on these tests: f16 1.8e-3 (flash
# attention off) and 1.2e-2 (on, the default), q8_0 2.1e-2, q4_k_m 5.2e-2, with no ranking changed.
EXACT_ATOL = 1e-5  # one prompt per decode, flash attention off: the same float ops with or without the cache
F16_ATOL = {False: 3e-3, None: 3e-2}  # by flash_attn
QUANT_ATOL = {"q8_0": 0.05, "q4_k_m": 0.15}
# Candidates closer than this (scored without the cache) are a tie that the ranking check leaves alone. On an
# AVX2-only EPYC with llama.cpp's repacked q4_K layout (the choice there) the cache moved one random-model score
# by 0.019 and swapped it with a candidate 0.012 away; with the plain layout (PRORANK_EDGE_LLAMA_REPACK=0)
# nothing moved. Wider gaps must keep their order, so a cache that reorders real candidates still fails.
QUANT_TIE = {"q8_0": 0.0, "q4_k_m": 0.03}
MAX_LENGTH = 160
QUERY, DOCS, CASES = PREFIX_QUERY, PREFIX_DOCS, PREFIX_CASES


def gguf_path(request, fixture: str, quant: str = "f16"):
    return request.getfixturevalue("gguf_cache")(request.getfixturevalue(fixture), quant)[0]


def pair(path, **options):
    """(with reuse, without) Rerankers on one GGUF file; extra options go to the backend (n_seq_max)."""
    def load(cache):
        return Reranker(str(path), max_length=MAX_LENGTH, threads=2, prefix_cache=cache, **options)
    return load(True), load(False)


def in_input_order(results):
    return np.array([r["score"] for r in sorted(results, key=lambda r: r["corpus_id"])])


def interleaved_pairs():
    return [(QUERY if i % 2 else "what causes influenza", doc) for i, doc in enumerate(DOCS * 2)]


@pytest.mark.parametrize("fixture", MODELS)
def test_one_suffix_per_call_is_exact(fixture, request):
    """One prompt per decode with flash attention off runs the same float ops with or without the cache, so any
    error in positions, cells or logit rows shows in full: each case's candidates one by one (the first call
    computes the prefix, the others reuse it), a single candidate, and a suffix of one token."""
    backend = GgufBackend(gguf_path(request, fixture), max_length=MAX_LENGTH, threads=2, flash_attn=False)
    try:
        for case, kwargs in CASES.items():
            ids = backend.prompts.build(kwargs["query"], kwargs.get("documents", DOCS), kwargs.get("instruction"))
            cut = shared_prefix_length(ids)
            alone = np.concatenate([backend.score_batch([i]) for i in ids])
            reused = np.concatenate([backend.score_with_prefix(ids[0][:cut], [i[cut:]]) for i in ids])
            # a one-token decode takes llama.cpp's matrix-vector kernels, which sum in another order
            atol = EXACT_ATOL if min(len(i) for i in ids) - cut > 1 else F16_ATOL[False]
            np.testing.assert_allclose(reused, alone, atol=atol, err_msg=case)
            last = backend.score_with_prefix(ids[0][:-1], [ids[0][-1:]])
            np.testing.assert_allclose(last, alone[:1], atol=F16_ATOL[False], err_msg=f"{case}, one-token suffix")
    finally:
        backend.close()


@pytest.mark.slow
@pytest.mark.parametrize("flash_attn", [False, None])
@pytest.mark.parametrize("fixture", MODELS)
def test_f16_scores_equal_without_reuse(fixture, flash_attn, request):
    """Through the Reranker, each case with the defaults (all candidates and the prefix in one decode), with
    2-candidate batches (one prefix serves several calls) and with n_seq_max=2 under batches of 16 (several
    decodes of one call against the same prefix cells), and two queries interleaved; flash_attn None is the
    default (llama.cpp turns it on)."""
    path = gguf_path(request, fixture)
    atol = F16_ATOL[flash_attn]
    worst = 0.0
    for options, batch_size in (({}, 16), ({}, 2), ({"n_seq_max": 2}, 16)):
        on, off = pair(path, batch_size=batch_size, flash_attn=flash_attn, **options)
        with on, off:
            assert on.describe()["prefix_cache"] and not off.describe()["prefix_cache"]
            for case, kwargs in CASES.items():
                documents = kwargs.get("documents", DOCS)
                with_reuse = in_input_order(on.rank(kwargs["query"], documents, instruction=kwargs.get("instruction")))
                without = in_input_order(off.rank(kwargs["query"], documents, instruction=kwargs.get("instruction")))
                np.testing.assert_allclose(with_reuse, without, atol=atol, err_msg=f"{case} {options}")
                worst = max(worst, float(np.abs(with_reuse - without).max()))
            with_reuse, without = on.predict(interleaved_pairs()), off.predict(interleaved_pairs())
            np.testing.assert_allclose(with_reuse, without, atol=atol, err_msg=f"interleaved {options}")
            worst = max(worst, float(np.abs(with_reuse - without).max()))
            assert on.describe()["computed_tokens"] < on.describe()["prompt_tokens"]
    print(f"{fixture} f16 flash_attn={flash_attn}: max |reuse - no reuse| = {worst:.3g}")


@pytest.mark.slow
@pytest.mark.parametrize("quant", ["q8_0", "q4_k_m"])
@pytest.mark.parametrize("fixture", MODELS)
def test_quantized_rankings_unchanged(fixture, quant, request, scifact_dir):
    """Real SciFact pairs (4 candidates per query); a quantized file must not rank differently with the cache."""
    pairs = scifact_gguf_pairs(scifact_dir, n_queries=6)
    on, off = pair(gguf_path(request, fixture, quant), batch_size=2)
    with on, off:
        with_reuse, without = on.predict(pairs), off.predict(pairs)
    for start in range(0, len(pairs), 4):  # scifact_gguf_pairs: each query with its 4 candidates in a row
        on_block, off_block = with_reuse[start:start + 4], without[start:start + 4]
        for i in range(4):
            for j in range(4):
                if off_block[i] - off_block[j] > QUANT_TIE[quant]:  # i above j, by more than a tie
                    assert on_block[i] > on_block[j], (pairs[start][0], i, j, off_block, on_block)
    np.testing.assert_allclose(with_reuse, without, atol=QUANT_ATOL[quant])
    print(f"{fixture} {quant}: max |reuse - no reuse| = {float(np.abs(with_reuse - without).max()):.3g}")


def test_token_counts_count_each_prefix_once(wide_qwen2_dir, gguf_cache):
    """Two queries interleaved, batches of 2: each query's prefix runs once however many batches it spans."""
    on, off = pair(gguf_cache(wide_qwen2_dir, "f16")[0], batch_size=2)
    pairs = interleaved_pairs()
    with on, off:
        on.predict(pairs)
        off.predict(pairs)
        ids = on.prompts.build_pairs(pairs)
        total = sum(len(i) for i in ids)
        saved = 0
        for query in {q for q, _ in pairs}:
            members = [ids[i] for i, (q, _) in enumerate(pairs) if q == query]
            saved += (len(members) - 1) * shared_prefix_length(members)
        info = on.describe()
        assert (info["prompt_tokens"], info["computed_tokens"]) == (total, total - saved)
        assert saved > 0 and info["computed_share"] < 1
        assert off.describe()["computed_tokens"] == off.describe()["prompt_tokens"] == total


def test_prefix_of_another_query_is_never_reused(wide_qwen2_dir, gguf_cache):
    """Two prefixes of one length that differ in one token, with the same documents, scored alternately in two
    calls each: every call must give what it gives after a fresh start (a cache keyed on the length, or kept
    across queries, would give B the scores of A's prefix with the same suffixes, which are A's scores)."""
    backend = GgufBackend(gguf_cache(wide_qwen2_dir, "f16")[0], max_length=MAX_LENGTH, threads=2, n_seq_max=2,
                          flash_attn=False)
    try:
        queries = ("does coffee affect sleep", "does tea affect sleep")
        prompts = {q: backend.prompts.build(q, DOCS[:5]) for q in queries}
        cuts = {q: shared_prefix_length(p) for q, p in prompts.items()}
        cut = cuts[queries[0]]
        assert set(cuts.values()) == {cut}, "the test needs prefixes of one length"
        parts = (slice(0, 3), slice(3, None))  # two calls per query: the second reuses the first one's prefix

        def score(q):
            return np.concatenate([backend.score_with_prefix(prompts[q][0][:cut], [p[cut:] for p in prompts[q][part]])
                                   for part in parts])

        fresh = {}
        for q in queries:
            backend.score_batch([[1, 2, 3]])  # whole prompts clear the KV cache: the next prefix runs again
            fresh[q] = score(q)
            np.testing.assert_allclose(fresh[q], backend.score_batch(prompts[q]), atol=F16_ATOL[False])
        assert np.abs(fresh[queries[0]] - fresh[queries[1]]).min() > 1e-2  # the prefixes do matter
        before = backend.token_counts["computed_tokens"]
        for q in queries * 2:
            np.testing.assert_allclose(score(q), fresh[q], atol=EXACT_ATOL, err_msg=q)
        suffix_tokens = sum(len(p) - cut for q in queries for p in prompts[q])
        # four query changes, four prefix passes; each query's second call computed only its suffixes
        assert backend.token_counts["computed_tokens"] - before == 2 * suffix_tokens + 4 * cut
    finally:
        backend.close()


def test_sequences_share_the_prefix_cells(wide_qwen2_dir, gguf_cache):
    """The KV cache holds the prefix once plus the suffixes, not a copy per sequence, or these decodes would find
    no KV slot: the first call puts every sequence id on the prefix tokens, the second shares the cached prefix
    with llama_memory_seq_cp (in a unified KV cache it tags cells, it copies no data)."""
    import llama_cpp

    backend = GgufBackend(gguf_cache(wide_qwen2_dir, "f16")[0], max_length=512, n_batch=512, threads=2,
                          flash_attn=False)
    decodes = []
    decode = backend._decode
    backend._decode = lambda sequences, *a, **k: decodes.append(len(sequences)) or decode(sequences, *a, **k)
    try:
        prompts = backend.prompts.build("fracture risk in older adults " * 40, ["a", "b", "c", "d"])
        cut = shared_prefix_length(prompts)
        suffixes = [p[cut:] for p in prompts]
        cells = llama_cpp.llama_n_ctx(backend._handles["ctx"])
        assert cut + sum(map(len, suffixes)) <= cells < 2 * cut + sum(map(len, suffixes)), (cut, suffixes, cells)
        first = backend.score_with_prefix(prompts[0][:cut], suffixes)
        before = backend.token_counts["computed_tokens"]
        second = backend.score_with_prefix(prompts[0][:cut], suffixes)
        assert backend.token_counts["computed_tokens"] - before == sum(map(len, suffixes))  # the prefix was cached
        assert decodes == [4, 4]  # each call: all four suffixes in one decode (the first with the prefix)
        joined = backend.score_batch(prompts)
        np.testing.assert_allclose(first, joined, atol=F16_ATOL[False])  # 4 prompts per decode: batching noise
        np.testing.assert_allclose(second, joined, atol=F16_ATOL[False])
    finally:
        backend.close()


def test_prefix_too_long_for_n_ctx_falls_back_to_whole_prompts(wide_qwen2_dir, gguf_cache):
    """Prefix + one suffix over n_ctx: the joined prompt is too, and it is refused as without the cache."""
    backend = GgufBackend(gguf_cache(wide_qwen2_dir, "f16")[0], max_length=MAX_LENGTH, n_batch=MAX_LENGTH)
    try:
        with pytest.raises(ProrankError, match=f"a prompt needs 1 to {MAX_LENGTH}"):
            backend.score_with_prefix(list(range(100, 200)), [list(range(300, 380))])
        with pytest.raises(ProrankError, match="at least one token"):
            backend.score_with_prefix([1, 2, 3], [[4], []])
        assert backend.score_with_prefix([1, 2, 3], []).shape == (0,)
    finally:
        backend.close()
