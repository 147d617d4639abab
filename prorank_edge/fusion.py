"""Blending a reranker's scores with first-stage scores (numpy only, so an edge box can fuse too)."""

from __future__ import annotations

import numpy as np

from .errors import ProrankError


def minmax(values) -> np.ndarray:
    """Scale one query's scores to [0, 1]; a constant list maps to 0.5 (no information either way)."""
    values = np.asarray(values, dtype=np.float64)
    span = values.max() - values.min() if len(values) else 0.0
    return np.full(len(values), 0.5) if span == 0 else (values - values.min()) / span


def fuse_scores(first_stage, rerank, weight: float) -> np.ndarray:
    """weight x reranker + (1 - weight) x first stage, each min-max normalized within one query's candidates.

    Per-query min-max puts BM25's unbounded scores and the reranker's logit differences on one scale; weight 1
    is the reranker alone, weight 0 the first stage alone.
    """
    if not 0.0 <= weight <= 1.0:
        raise ProrankError(f"the fusion weight must be between 0 and 1, got {weight}")
    return weight * minmax(rerank) + (1.0 - weight) * minmax(first_stage)
