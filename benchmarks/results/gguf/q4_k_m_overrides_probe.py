"""Probe (issue 15): which of q4_k_m's tensors cost the ranking? One class of matrices at a time back to Q8_0.

Reads the files imatrix_q4k_probe.py left in OUT_DIR (llama.cpp's q4_k_m of the smoothed f16 GGUF, and that f16
file) and writes, per class, q4_k_m with that class's matrices quantized to Q8_0 from the same f16 weights
(gguf-py's Q8_0, the other tensors byte for byte), then:

    .venv/bin/python benchmarks/results/gguf/q4_k_m_overrides_probe.py OUT_DIR
    .venv/bin/python benchmarks/results/gguf/acc_probe.py <default model dir> 10 20 OUT_DIR/q4_k_m-q8-<class>.gguf,...
"""
import sys
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

CLASSES = {"ffn_down": (".ffn_down.",), "ffn_gate_up": (".ffn_gate.", ".ffn_up."),
           "attn_qkv": (".attn_q.", ".attn_k.", ".attn_v."), "attn_output": (".attn_output.",),
           "ffn_down+attn_qkv": (".ffn_down.", ".attn_q.", ".attn_k.", ".attn_v."),
           "ffn_down+ffn_gate_up": (".ffn_down.", ".ffn_gate.", ".ffn_up.")}


def main() -> None:
    import shutil

    from prorank_edge.export.gguf_export import _requantize_to_q8_0

    out = Path(sys.argv[1])
    for label, parts in CLASSES.items():
        target = out / f"q4_k_m-q8-{label}.gguf"
        shutil.copyfile(out / "q4_k_m.gguf", target)
        changed = _requantize_to_q8_0(target, out / "smoothed-f16.gguf", parts)  # what `export` does to q4_k_m
        print(label, changed, "matrices at Q8_0,", target.stat().st_size // 10**6, "MB", flush=True)


if __name__ == "__main__":
    main()
