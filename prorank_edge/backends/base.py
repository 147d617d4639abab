"""What every scoring backend provides: a tokenizer-bound prompt builder and a batch scorer."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

import numpy as np

from ..contract import PromptBuilder, ScoringContract

# One forward call on 2 CPU cores costs about 60-80 prompt tokens' worth of compute beyond its tokens (torch fp32,
# built-in model, Ice Lake: a 44-token pass took 126 ms and a 90-token one 151 ms, where full batches run at
# 1.0 ms a token): the weights stream through once per call. Padding a batch further than this is the worse deal.
CPU_CALL_COST_TOKENS = 64


def score_sharing(score_batch, score_with_prefix, prompts: Sequence[Sequence[int]], prefix: int) -> np.ndarray:
    """Scores of prompts whose first `prefix` tokens are the same: whole prompts when 0, else the prefix once."""
    if prefix:
        return score_with_prefix(prompts[0][:prefix], [p[prefix:] for p in prompts])
    return score_batch(prompts)


class ScoringBackend(ABC):
    """Scores batches of ProRank prompt token ids; everything before the ids lives in `contract.py`."""

    #: registry name, e.g. "torch"
    name: str = ""
    #: cap on batch_size x longest prompt per forward pass (activation memory); None means no cap
    max_batch_tokens: int | None = None
    #: True where score_with_prefix computes a shared prefix once; otherwise it scores whole prompts
    reuses_prefix: bool = False
    #: for a backend that pads a batch to its longest prompt on a CPU: one forward call's fixed cost in tokens'
    #: worth of compute, so the planner cuts batches where padding costs more (contract.length_batches); None
    #: fills every batch (no padding, or a GPU)
    padding_call_cost: int | None = None

    def __init__(self, tokenizer, contract: ScoringContract | None = None, max_length: int | None = None):
        self.prompts = PromptBuilder(tokenizer, contract, max_length=max_length)
        # Tokens in the prompts scored, and tokens the model actually ran (fewer when a prefix is reused).
        self.token_counts = {"prompt_tokens": 0, "computed_tokens": 0}

    @property
    def contract(self) -> ScoringContract:
        return self.prompts.contract

    @abstractmethod
    def score_batch(self, token_ids: Sequence[Sequence[int]]) -> np.ndarray:
        """Raw scores (logit(positive) - logit(negative) at the last position), float32, one per sequence."""

    def score_with_prefix(self, prefix: Sequence[int], suffixes: Sequence[Sequence[int]]) -> np.ndarray:
        """Scores of the prompts prefix + suffix (every suffix non-empty); this fallback joins and scores them."""
        return self.score_batch([list(prefix) + list(s) for s in suffixes])

    def count_tokens(self, prompt: int, computed: int) -> None:
        self.token_counts["prompt_tokens"] += int(prompt)
        self.token_counts["computed_tokens"] += int(computed)

    def describe(self) -> dict:
        """What ran, for logs and benchmark reports."""
        return {"backend": self.name}

    def close(self) -> None:  # noqa: B027 - a hook: a backend with nothing native to free keeps it
        """Free native resources; safe to call twice."""
