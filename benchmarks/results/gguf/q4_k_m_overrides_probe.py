"""Probe (issue 15): which of q4_k_m's tensors cost the ranking? One class of matrices at a time back to Q8_0.

Reads the files imatrix_q4k_probe.py left in OUT_DIR (llama.cpp's q4_k_m of the smoothed f16 GGUF, and that f16
file) and writes, per class, q4_k_m with that class's matrices quantized to Q8_0 from the same f16 weights
(gguf-py's Q8_0, the other tensors byte for byte), then:

    .venv/bin/python benchmarks/results/gguf/q4_k_m_overrides_probe.py OUT_DIR
    .venv/bin/python benchmarks/results/gguf/acc_probe.py <default model dir> 10 20 OUT_DIR/q4_k_m-q8-<class>.gguf,...
"""
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

CLASSES = {"ffn_down": (".ffn_down.",), "ffn_gate_up": (".ffn_gate.", ".ffn_up."),
           "attn_qkv": (".attn_q.", ".attn_k.", ".attn_v."), "attn_output": (".attn_output.",),
           "ffn_down+attn_qkv": (".ffn_down.", ".attn_q.", ".attn_k.", ".attn_v."),
           "ffn_down+ffn_gate_up": (".ffn_down.", ".ffn_gate.", ".ffn_up.")}


def main() -> None:
    import gguf

    from prorank_edge.gguf_adapter import _copy_fields, _field

    out = Path(sys.argv[1])
    base = gguf.GGUFReader(str(out / "q4_k_m.gguf"))
    source = {t.name: t for t in gguf.GGUFReader(str(out / "smoothed-f16.gguf")).tensors}
    arch = _field(base, "general.architecture")
    for label, parts in CLASSES.items():
        target = out / f"q4_k_m-q8-{label}.gguf"
        writer = gguf.GGUFWriter(str(target), arch)
        _copy_fields(base, writer, gguf)
        writer.add_file_type(gguf.LlamaFileType.MOSTLY_Q4_K_M)
        changed = 0
        for tensor in base.tensors:
            if any(p in tensor.name for p in parts):
                x = np.asarray(source[tensor.name].data, dtype=np.float32)
                writer.add_tensor(tensor.name, gguf.quants.quantize(x, gguf.GGMLQuantizationType.Q8_0),
                                  raw_dtype=gguf.GGMLQuantizationType.Q8_0)
                changed += 1
            else:
                writer.add_tensor(tensor.name, np.asarray(tensor.data), raw_dtype=tensor.tensor_type)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        print(label, changed, "matrices at Q8_0,", target.stat().st_size // 10**6, "MB", flush=True)


if __name__ == "__main__":
    main()
