"""prorank-edge: small language models as fast, quantized document rerankers (ProRank scoring)."""

from .contract import CONTRACT_FILENAME, PromptBuilder, ScoringContract
from .errors import ProrankError
from .reranker import Reranker

__version__ = "0.1.0"

__all__ = ["CONTRACT_FILENAME", "PromptBuilder", "ProrankError", "Reranker", "ScoringContract", "__version__"]
