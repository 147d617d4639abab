"""The scoring contract: how a (query, document) pair becomes token ids and how logits become a score.

Every backend (torch, ONNX, GGUF) and both training stages use this module, so a pair is scored the same
way everywhere. It depends only on numpy and `tokenizers`, never on torch.

Prompt layout of the released ProRank models (mixedbread-ai/mxbai-rerank-base-v2 / large-v2); each piece is
tokenized on its own, without special tokens, and the ids are joined:

    prefix  [instruction: {instruction} SEP] query: {query}  SEP  document: {document}  SEP  task_prompt  suffix

`max_length` is the whole prompt, template included. The content is the query piece, the separator after it
and the document piece (mxbai-rerank's `max_length`); the query piece gets at most 3/4 of it, the document the
rest, and only these two are cut, so the task prompt and the assistant suffix always reach the model.
Score = logit(positive label) - logit(negative label) at the last position.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import ContractError
from .formats import CONTRACT_FILENAME

CONTRACT_VERSION = 1

PRORANK_PREFIX = (
    "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
    "<|im_start|>user\n"
)
PRORANK_TASK_PROMPT = (
    "You are a search relevance expert who evaluates how well documents match search queries. "
    "For each query-document pair, carefully analyze the semantic relationship between them, "
    "then provide your binary relevance judgment (0 for not relevant, 1 for relevant).\nRelevance:"
)
PRORANK_SUFFIX = "<|im_end|>\n<|im_start|>assistant\n"

DEFAULT_MAX_LENGTH = 512
# Below this many content tokens a prompt cannot hold a meaningful query and document.
MIN_CONTENT_TOKENS = 8


@dataclass(frozen=True)
class ScoringContract:
    """Everything needed to score a pair, saved as JSON beside a model's weights or inside an artifact."""

    prefix: str = PRORANK_PREFIX
    instruction_template: str = "instruction: {instruction}"
    query_template: str = "query: {query}"
    document_template: str = "document: {document}"
    separator: str = "\n"
    task_prompt: str = PRORANK_TASK_PROMPT
    suffix: str = PRORANK_SUFFIX
    positive_label: str = "1"
    negative_label: str = "0"
    # Filled in once a tokenizer is known; kept in the file so artifacts need not re-derive them.
    positive_token_id: int | None = None
    negative_token_id: int | None = None
    max_length: int = DEFAULT_MAX_LENGTH
    # normalized score = sigmoid((score - offset) / scale)
    normalize_offset: float = 0.0
    normalize_scale: float = 1.0
    version: int = CONTRACT_VERSION
    extra: dict = field(default_factory=dict)

    # ---- serialization -------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, ensure_ascii=False)

    @classmethod
    def from_dict(cls, data: dict, source: str = "contract") -> ScoringContract:
        if not isinstance(data, dict):
            raise ContractError(f"{source}: expected a JSON object")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ContractError(f"{source}: unknown field(s) {', '.join(unknown)}")
        version = data.get("version", CONTRACT_VERSION)
        if version != CONTRACT_VERSION:
            raise ContractError(f"{source}: contract version {version} is not supported (expected {CONTRACT_VERSION})")
        try:
            contract = cls(**data)
        except TypeError as exc:  # pragma: no cover - guarded by the field check above
            raise ContractError(f"{source}: {exc}") from None
        contract.validate(source)
        return contract

    @classmethod
    def from_json(cls, text: str, source: str = "contract") -> ScoringContract:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ContractError(f"{source}: invalid JSON ({exc.msg} at line {exc.lineno})") from None
        return cls.from_dict(data, source)

    def save(self, directory: str | Path) -> Path:
        path = Path(directory) / CONTRACT_FILENAME
        path.write_text(self.to_json() + "\n", encoding="utf-8")
        return path

    @classmethod
    def load(cls, directory: str | Path) -> ScoringContract:
        """The contract saved beside a model, or the ProRank default when the model has none."""
        path = Path(directory) / CONTRACT_FILENAME
        if not path.is_file():
            return cls()
        return cls.from_json(path.read_text(encoding="utf-8"), source=str(path))

    def replace(self, **changes) -> ScoringContract:
        return dataclasses.replace(self, **changes)

    def validate(self, source: str = "contract") -> None:
        for name in ("instruction_template", "query_template", "document_template"):
            placeholder = "{" + name.split("_")[0] + "}"
            if placeholder not in getattr(self, name):
                raise ContractError(f"{source}: {name} must contain {placeholder}")
        if not isinstance(self.max_length, int) or self.max_length <= 0:
            raise ContractError(f"{source}: max_length must be a positive integer")
        if not self.normalize_scale or not math.isfinite(self.normalize_scale):
            raise ContractError(f"{source}: normalize_scale must be a finite non-zero number")

    # ---- scores -------------------------------------------------------------------------------------
    def normalize(self, scores: np.ndarray) -> np.ndarray:
        """Map raw logit differences to [0, 1]."""
        z = (np.asarray(scores, dtype=np.float64) - self.normalize_offset) / self.normalize_scale
        return (0.5 * (1.0 + np.tanh(0.5 * z))).astype(np.float32)  # sigmoid without exp overflow


def score_from_logits(logits: np.ndarray, positive_token_id: int, negative_token_id: int) -> np.ndarray:
    """Reference score from full logits [batch, vocab] at the last position (used by tests and tools)."""
    logits = np.asarray(logits, dtype=np.float32)
    return logits[:, positive_token_id] - logits[:, negative_token_id]


class PromptBuilder:
    """Builds the token ids of ProRank prompts for one tokenizer and contract.

    `tokenizer` is a `tokenizers.Tokenizer` (a transformers fast tokenizer exposes one as
    `.backend_tokenizer`). Pieces are encoded once; only the query and documents are encoded per call.
    """

    def __init__(self, tokenizer, contract: ScoringContract | None = None, max_length: int | None = None):
        self.tokenizer = tokenizer
        contract = contract or ScoringContract()
        if max_length is not None:
            contract = contract.replace(max_length=int(max_length))
        contract.validate()
        self.positive_token_id = self._label_id(contract.positive_label, contract.positive_token_id)
        self.negative_token_id = self._label_id(contract.negative_label, contract.negative_token_id)
        if self.positive_token_id == self.negative_token_id:
            raise ContractError("the positive and negative labels map to the same token")
        self.contract = contract.replace(
            positive_token_id=self.positive_token_id, negative_token_id=self.negative_token_id
        )
        self.prefix_ids = self._encode(contract.prefix)
        self.separator_ids = self._encode(contract.separator)
        self.task_ids = self._encode(contract.task_prompt)
        self.suffix_ids = self._encode(contract.suffix)
        # The separator appears twice: after the query and after the document.
        self.template_length = (
            len(self.prefix_ids) + 2 * len(self.separator_ids) + len(self.task_ids) + len(self.suffix_ids)
        )
        if contract.max_length - self.template_length < MIN_CONTENT_TOKENS:
            raise ContractError(
                f"max_length {contract.max_length} is too small: the prompt template alone takes "
                f"{self.template_length} tokens; use at least {self.template_length + MIN_CONTENT_TOKENS}"
            )
        # The content counts the separator after the query, as mxbai-rerank's max_length does: its 3/4 query
        # cap is taken of that span, and without the separator a long query would keep a token fewer.
        self.content_budget = contract.max_length - self.template_length + len(self.separator_ids)
        # min(): a long custom separator must not leave the document a negative budget.
        self.query_budget = min(self.content_budget * 3 // 4, self.content_budget - len(self.separator_ids))

    @property
    def max_length(self) -> int:
        return self.contract.max_length

    def _encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False).ids)

    def _label_id(self, label: str, expected: int | None) -> int:
        ids = self._encode(label)
        if len(ids) != 1:
            raise ContractError(
                f"the label {label!r} is not a single token for this tokenizer (it encodes to {len(ids)} tokens); "
                "this model cannot be scored with the ProRank contract"
            )
        if expected is not None and expected != ids[0]:
            raise ContractError(
                f"the contract says label {label!r} is token {expected}, but the tokenizer gives {ids[0]}"
            )
        return ids[0]

    def query_ids(self, query: str, instruction: str | None = None) -> list[int]:
        text = self.contract.query_template.format(query=query)
        if instruction:
            text = self.contract.instruction_template.format(instruction=instruction) + self.contract.separator + text
        return self._encode(text)[: self.query_budget]

    def build(self, query: str, documents: Sequence[str], instruction: str | None = None) -> list[list[int]]:
        """Token ids of one prompt per document, for one query."""
        query_ids = self.query_ids(query, instruction)
        return self._join(query_ids, documents)

    def build_pairs(
        self, pairs: Iterable[tuple[str, str]], instruction: str | None = None
    ) -> list[list[int]]:
        """Token ids for (query, document) pairs; each distinct query is encoded once."""
        pairs = list(pairs)
        cache: dict[str, list[int]] = {}
        out: list[list[int]] = []
        docs = [d for _, d in pairs]
        doc_ids = self._encode_documents(docs)
        for (query, _), ids in zip(pairs, doc_ids):
            if query not in cache:
                cache[query] = self.query_ids(query, instruction)
            out.append(self._assemble(cache[query], ids))
        return out

    def _encode_documents(self, documents: Sequence[str]) -> list[list[int]]:
        texts = [self.contract.document_template.format(document=d) for d in documents]
        return [list(e.ids) for e in self.tokenizer.encode_batch(texts, add_special_tokens=False)]

    def _join(self, query_ids: list[int], documents: Sequence[str]) -> list[list[int]]:
        return [self._assemble(query_ids, ids) for ids in self._encode_documents(documents)]

    def _assemble(self, query_ids: list[int], document_ids: list[int]) -> list[int]:
        document_budget = self.content_budget - len(query_ids) - len(self.separator_ids)
        return (
            self.prefix_ids
            + query_ids
            + self.separator_ids
            + document_ids[:document_budget]
            + self.separator_ids
            + self.task_ids
            + self.suffix_ids
        )


def left_pad(sequences: Sequence[Sequence[int]], pad_id: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Left-padded int64 ids and attention mask: the last position is every row's final real token."""
    width = max(len(s) for s in sequences)
    ids = np.full((len(sequences), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(sequences), width), dtype=np.int64)
    for row, seq in enumerate(sequences):
        if len(seq):
            ids[row, width - len(seq):] = seq
            mask[row, width - len(seq):] = 1
    return ids, mask


def right_pad(sequences: Sequence[Sequence[int]], pad_id: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Right-padded int64 ids and mask: every row starts at the same position (a suffix, right after its prefix)."""
    width = max(len(s) for s in sequences)
    ids = np.full((len(sequences), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(sequences), width), dtype=np.int64)
    for row, seq in enumerate(sequences):
        ids[row, : len(seq)] = seq
        mask[row, : len(seq)] = 1
    return ids, mask


def position_ids(attention_mask: np.ndarray) -> np.ndarray:
    """Positions that start at 0 on each row's first real token (pads get 0), as generation does."""
    return np.clip(np.cumsum(attention_mask, axis=1) - 1, 0, None).astype(np.int64)


def length_batches(lengths: Sequence[int], batch_size: int, max_tokens: int | None = None,
                   call_cost: int | None = None) -> list[list[int]]:
    """Indices grouped into batches of similar length (longest first), so little compute goes to padding.

    `max_tokens` caps batch_size x longest length, which bounds activation memory on small devices.
    `call_cost`: for a backend that pads every row to the batch's longest prompt, what one more forward call
    costs, in tokens' worth of compute. The sorted prompts are then cut where the padding would cost more than
    another call (the least padded tokens + call_cost x calls over every cut into runs of at most batch_size).
    None fills every batch: llama.cpp does not pad, and a GPU runs the padding in parallel.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    if call_cost is not None:
        return [order[start:end] for start, end in _least_padded_runs([lengths[i] for i in order], batch_size,
                                                                         max_tokens, call_cost)]
    batches: list[list[int]] = []
    current: list[int] = []
    for index in order:
        longest = lengths[current[0]] if current else lengths[index]
        if current and (
            len(current) >= batch_size or (max_tokens is not None and longest * (len(current) + 1) > max_tokens)
        ):
            batches.append(current)
            current = []
        current.append(index)
    if current:
        batches.append(current)
    return batches


def _least_padded_runs(descending: Sequence[int], batch_size: int, max_tokens: int | None,
                       call_cost: int) -> list[tuple[int, int]]:
    """(start, end) runs of lengths sorted longest first that minimise sum(run size x its first length) +
    call_cost x runs; a run holds at most batch_size and at most max_tokens // its first length (at least 1).
    Dynamic programming from the end, O(n x batch_size); ties go to the larger run (fewer calls)."""
    n = len(descending)
    best = [0] * (n + 1)
    end_of = [n] * (n + 1)
    for start in range(n - 1, -1, -1):
        longest = descending[start]
        room = min(batch_size, n - start)
        if max_tokens is not None and longest > 0:
            room = max(1, min(room, max_tokens // longest))
        # min() keeps the first of equal costs, and sizes are tried largest first
        size = min(range(room, 0, -1), key=lambda k: k * longest + best[start + k])
        best[start] = size * longest + call_cost + best[start + size]
        end_of[start] = start + size
    runs, start = [], 0
    while start < n:
        runs.append((start, end_of[start]))
        start = end_of[start]
    return runs


def shared_prefix_length(sequences: Sequence[Sequence[int]]) -> int:
    """Length of the longest common prefix of the token ids, leaving every sequence at least one token.

    Taken from the ids, not from the template, so a tokenizer that merges across a piece boundary is still
    exact. The last token must stay out of the prefix: the score is read where it is computed.
    """
    if not sequences:
        return 0
    first = sequences[0]
    limit = min(len(s) for s in sequences) - 1
    length = 0
    while length < limit and all(s[length] == first[length] for s in sequences):
        length += 1
    return max(length, 0)


def prefix_batches(token_ids: Sequence[Sequence[int]], groups: Sequence | None, batch_size: int,
                   max_tokens: int | None = None, call_cost: int | None = None) -> list[tuple[int, list[int]]]:
    """(shared prefix length, indices) batches: prompts of one group (one query) only, similar lengths together.

    The prefix is common to the whole group, so a backend that keeps the last prefix's keys/values computes it
    once per query however many batches its candidates fill. `groups` is a key per prompt (None: one group).
    `call_cost` as in `length_batches` (the padding of suffixes is that of their whole prompts).
    """
    members: dict = {}
    for index, key in enumerate(groups if groups is not None else [None] * len(token_ids)):
        members.setdefault(key, []).append(index)
    out: list[tuple[int, list[int]]] = []
    for indices in members.values():
        # One candidate shares nothing with anyone: a prefix pass would only add a call.
        prefix = shared_prefix_length([token_ids[i] for i in indices]) if len(indices) > 1 else 0
        for batch in length_batches([len(token_ids[i]) for i in indices], batch_size, max_tokens, call_cost):
            out.append((prefix, [indices[k] for k in batch]))
    return out


def plan_batches(token_ids: Sequence[Sequence[int]], groups: Sequence | None, batch_size: int,
                 max_tokens: int | None, share_prefix: bool, call_cost: int | None = None
                 ) -> list[tuple[int, list[int]]]:
    """What to score together: `prefix_batches` with the prefix cache, else length batches over all prompts
    (any groups mixed) with no prefix (0). `call_cost` as in `length_batches`."""
    if share_prefix:
        return prefix_batches(token_ids, groups, batch_size, max_tokens, call_cost)
    return [(0, batch) for batch in length_batches([len(t) for t in token_ids], batch_size, max_tokens, call_cost)]
