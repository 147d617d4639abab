"""Export the built-in model at an extra llama.cpp level (experiment): q4_0, iq4_nl, q5_0... with smoothing alpha."""
import sys
sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[3]))
from pathlib import Path
from prorank_edge.export import gguf_export as ge
src, level, ftype, head, alpha, out = Path(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4], float(sys.argv[5]), Path(sys.argv[6])
ge.GGUF_FTYPES[level] = ftype
ge.GGUF_HEAD_TYPES[level] = head
info = ge.export_gguf(src, out, level, overwrite=True, smoothing_alpha=alpha)
print(out.name, info["bytes"] // 10**6, "MB", info["quant_fallback"], info["seconds"], "s")
