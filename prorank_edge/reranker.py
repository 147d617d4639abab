"""`Reranker`: the Python API, with sentence-transformers CrossEncoder conventions (`rank`, `predict`)."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Sequence

import numpy as np

from .backends import BACKEND_NAMES, backend_class, reads
from .backends.base import ScoringBackend
from .documents import Document, unicode_problem
from .errors import InputError, ModelNotFoundError, ProrankError
from .formats import DTYPE_BACKENDS
from .models import ModelSource, resolve_model

DEFAULT_BATCH_SIZE = 16


def _progress(total: int, show: bool | None, desc: str):
    from tqdm.auto import tqdm

    # None: only on a terminal, and only once the work has lasted a moment.
    disable = (not sys.stderr.isatty()) if show is None else not show
    return tqdm(total=total, desc=desc, unit="doc", disable=disable, delay=0 if show else 1.0, file=sys.stderr,
                leave=False)


def _check_unicode(text: str | None, what: str) -> None:
    """Tokenizers reject lone surrogates with a bare TypeError; name the text instead."""
    problem = unicode_problem(text) if text else None
    if problem:
        raise InputError(f"{what}: {problem}")


class Reranker:
    """Scores (query, document) pairs with a ProRank model on any backend.

    model: a local checkpoint folder, an exported artifact (.onnx folder or .gguf file), a Hugging Face Hub
        id (e.g. mixedbread-ai/mxbai-rerank-base-v2), or None for the built-in default.
    backend: "auto" (picked from the model), "torch", "onnx", "gguf", or "openvino" (an OpenVINO int8 artifact,
        or an ONNX artifact run by OpenVINO: bf16 on CPUs with AMX or AVX-512 BF16).
    device: "auto", "cpu", "cuda", "cuda:N".
    max_length: whole prompt length in tokens, template included (default: the model's contract, 512).
    prefix_cache: compute the prompt prefix that a query's candidates share (system prompt, instruction,
        query) once per query and score only each document's remaining tokens against its keys/values;
        exact, so on by default. describe() reports tokens computed against tokens in the prompts.
    """

    def __init__(self, model: str | None = None, backend: str = "auto", device: str = "auto",
                 max_length: int | None = None, batch_size: int = DEFAULT_BATCH_SIZE, dtype: str = "auto",
                 threads: int | None = None, prefix_cache: bool = True, **backend_options):
        self.source: ModelSource = resolve_model(model)
        name = self.source.kind if backend in (None, "auto") else backend
        if self.source.kind not in reads(name):
            others = " or ".join(n for n in BACKEND_NAMES if self.source.kind in reads(n))
            raise ProrankError(
                f"{self.source.path}: this is a {self.source.kind} model; the {name} backend cannot read it "
                f"(use --backend {others} or auto)"
            )
        if batch_size < 1:
            raise ProrankError("batch_size must be at least 1")
        self.batch_size = batch_size
        self.prefix_cache = bool(prefix_cache)
        options = dict(max_length=max_length, device=device, threads=threads, **backend_options)
        if name in DTYPE_BACKENDS:
            options["dtype"] = dtype
        backend_cls = backend_class(name)
        try:
            self.backend: ScoringBackend = backend_cls(self.source.path, **options)
        except ProrankError:
            raise
        except (OSError, ValueError, KeyError, RuntimeError) as exc:
            # Broken or foreign files surface as many exception types from transformers/onnxruntime/llama.cpp.
            raise ModelNotFoundError(f"{self.source.path}: cannot load this model ({type(exc).__name__}: "
                                     f"{str(exc).splitlines()[0] if str(exc) else 'no details'})") from exc

    @classmethod
    def from_backend(cls, backend: ScoringBackend, batch_size: int = DEFAULT_BATCH_SIZE,
                     prefix_cache: bool = True) -> Reranker:
        """Wrap an already built backend (e.g. a model held in memory during training)."""
        self = cls.__new__(cls)
        self.source = None
        self.backend = backend
        self.batch_size = batch_size
        self.prefix_cache = bool(prefix_cache)
        return self

    @property
    def contract(self):
        return self.backend.contract

    @property
    def prompts(self):
        return self.backend.prompts

    # ---- scoring ----------------------------------------------------------------------------------------
    def score_token_ids(self, token_ids: Sequence[Sequence[int]], batch_size: int | None = None,
                        show_progress_bar: bool | None = None, groups: Sequence | None = None) -> np.ndarray:
        """Raw scores for prompts that are already token ids, in their order (batched by length).

        groups: a key per prompt (e.g. its query); with the prefix cache on, a batch holds one group only and
        the group's shared prefix is computed once. None: all prompts form one group.
        """
        from .backends.base import score_sharing
        from .contract import plan_batches

        scores = np.empty(len(token_ids), dtype=np.float32)
        backend = self.backend
        batches = plan_batches(token_ids, groups, batch_size or self.batch_size, backend.max_batch_tokens,
                               self.prefix_cache and backend.reuses_prefix, backend.padding_call_cost)
        with _progress(len(token_ids), show_progress_bar, "scoring") as bar:
            for prefix, batch in batches:
                scores[batch] = score_sharing(backend.score_batch, backend.score_with_prefix,
                                              [token_ids[i] for i in batch], prefix)
                bar.update(len(batch))
        return scores

    def predict(self, pairs: Iterable[Sequence[str]], batch_size: int | None = None,
                show_progress_bar: bool | None = None, instruction: str | None = None,
                normalize: bool = False) -> np.ndarray:
        """Scores for (query, document) pairs, in order: raw logit differences, or in [0, 1] with normalize."""
        pairs = [tuple(p) for p in pairs]
        for i, pair in enumerate(pairs):
            if len(pair) != 2 or not all(isinstance(x, str) for x in pair):
                raise InputError(f"pair {i}: expected (query, document) strings")
            _check_unicode(pair[0], f"pair {i}: the query")
            _check_unicode(pair[1], f"pair {i}: the document")
        _check_unicode(instruction, "the instruction")
        if not pairs:
            return np.empty(0, dtype=np.float32)
        scores = self.score_token_ids(self.prompts.build_pairs(pairs, instruction), batch_size, show_progress_bar,
                                      groups=[query for query, _ in pairs])
        return self.contract.normalize(scores) if normalize else scores

    def rank(self, query: str, documents: Sequence[str], top_k: int | None = None, return_documents: bool = False,
             instruction: str | None = None, batch_size: int | None = None, show_progress_bar: bool | None = None,
             normalize: bool = False) -> list[dict]:
        """Documents best first, as [{"corpus_id", "score"}] plus "text" with return_documents (off by default,
        as in sentence-transformers' CrossEncoder.rank); ties keep the input order."""
        if not isinstance(query, str) or not query.strip():
            raise InputError("the query is empty")
        _check_unicode(query, "the query")
        _check_unicode(instruction, "the instruction")
        documents = list(documents)
        for i, doc in enumerate(documents):
            if not isinstance(doc, str):
                raise InputError(f"document {i}: expected a string, got {type(doc).__name__}")
            _check_unicode(doc, f"document {i}")
        if not documents:
            return []
        token_ids = self.prompts.build(query, documents, instruction)
        scores = self.score_token_ids(token_ids, batch_size, show_progress_bar)
        if normalize:
            scores = self.contract.normalize(scores)
        order = np.argsort(-scores, kind="stable")
        if top_k is not None:
            order = order[: max(0, int(top_k))]
        results = []
        for i in order:
            item = {"corpus_id": int(i), "score": float(scores[i])}
            if return_documents:
                item["text"] = documents[i]
            results.append(item)
        return results

    def describe(self, since: dict | None = None) -> dict:
        """The backend, its settings and the tokens scored so far; `since`, an earlier describe(), counts only
        the tokens scored after it."""
        info = self.backend.describe()
        info["max_length"] = self.contract.max_length
        info["batch_size"] = self.batch_size
        info["prefix_cache"] = self.prefix_cache and self.backend.reuses_prefix
        counts = {key: value - (since or {}).get(key, 0) for key, value in self.backend.token_counts.items()}
        info.update(counts)
        if counts["prompt_tokens"]:
            info["computed_share"] = round(counts["computed_tokens"] / counts["prompt_tokens"], 4)
        return info

    def close(self) -> None:
        self.backend.close()

    def __enter__(self) -> Reranker:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def rank_documents(reranker: Reranker, query: str, documents: Sequence[Document], instruction: str | None = None,
                   normalize: bool = False, fusion_weight: float | None = None) -> tuple[list[dict], float | None]:
    """Every document best first as {"rank", "id", "score", ...}, and the fusion weight that was used.

    fusion_weight None: the model's own weight (from its contract) when every document carries a first-stage
    score, else no fusion; a weight needs a score on every document.
    """
    from .fusion import fuse_scores

    unscored = next((d for d in documents if d.score is None), None)
    if fusion_weight is not None and unscored is not None:
        raise InputError(f"document {unscored.id!r} (line {unscored.line}): field 'score' is missing; a fusion "
                         "weight needs a first-stage score on every document")
    scores = reranker.predict([(query, d.full_text) for d in documents], instruction=instruction,
                              normalize=normalize)
    if fusion_weight is None and unscored is None:
        # A model that ranks worse than a first stage alone says so in its contract, with its tuned weight.
        fusion_weight = reranker.contract.extra.get("fusion_weight")
    final = scores if fusion_weight is None else fuse_scores([d.score for d in documents], scores, fusion_weight)
    records = []
    for rank, index in enumerate(np.argsort(-np.asarray(final), kind="stable"), start=1):
        doc = documents[index]
        record = {"rank": rank, "id": doc.id, "score": round(float(final[index]), 6)}
        if fusion_weight is not None:
            record.update(rerank_score=round(float(scores[index]), 6), first_stage_score=doc.score)
        if doc.title:
            record["title"] = doc.title
        record["text"] = doc.text
        records.append(record)
    return records, fusion_weight
