"""Prototype: GGUF base (various 4-bit types) + LoRA of the built-in adapter; accuracy vs torch fp32."""
import ctypes, json, sys, time
from pathlib import Path
sys.path[:0] = [str(Path(__file__).resolve().parents[3])]
import numpy as np
from scipy.stats import spearmanr
from tokenizers import Tokenizer
from prorank_edge.adapter import adapter_factors
from prorank_edge.contract import PromptBuilder, ScoringContract
from prorank_edge.export import gguf_export as ge
from prorank_edge.backends.gguf_backend import GgufBackend
from prorank_edge.backends.llama_runtime import captured_llama_log
import llama_cpp
import gguf

M = Path('~/.cache/prorank-edge/models/SmolLM2-135M-Instruct-prorank-f5da8765827a').expanduser()
OUT = Path('/tmp/gguf_lora_probe'); OUT.mkdir(exist_ok=True)
low_rank, full = adapter_factors(M / 'adapter')
config = json.loads((M / 'config.json').read_text())
n_head, n_kv = config['num_attention_heads'], config['num_key_value_heads']

READ = ge._read_tensors

def base_tensors():
    for name, t in READ(M):
        if name in low_rank:
            b, a = low_rank[name]
            t = t - b @ a
        yield name, t
        if name == 'model.embed_tokens.weight':
            yield 'lm_head.weight', t

def write_base(path):
    cfg = dict(config, tie_word_embeddings=False)
    tok = (M / 'tokenizer.json').read_text()
    prompts = PromptBuilder(Tokenizer.from_str(tok), ScoringContract.load(M), None)
    orig = ge._read_tensors
    ge._read_tensors = lambda d: base_tensors()
    try:
        ge._write_unquantized(M, cfg, 'LLAMA', tok, prompts, path, {}, False)
    finally:
        ge._read_tensors = orig

def write_lora(path, dtype=np.float16):
    arch = gguf.MODEL_ARCH.LLAMA
    names = gguf.get_tensor_name_map(arch, config['num_hidden_layers'])
    w = gguf.GGUFWriter(path, gguf.MODEL_ARCH_NAMES[arch])
    w.add_type(gguf.GGUFType.ADAPTER)
    w.add_string(gguf.Keys.Adapter.TYPE, 'lora')
    rank = next(iter(low_rank.values()))[1].shape[0]
    w.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(rank))  # scale alpha/rank = 1
    for hf, (b, a) in low_rank.items():
        targets = [hf, 'lm_head.weight'] if hf == 'model.embed_tokens.weight' else [hf]
        for target in targets:
            name = names.get_name(target, try_suffixes=('.weight',))
            if name == 'token_embd.weight':
                la, lb = b, a.T          # rows picked from A (vocab, r); B is (embd, r)
            else:
                bb = b
                if '.attn_q.' in name or '.attn_k.' in name:
                    bb = ge.rotary_interleave(b, n_head if '.attn_q.' in name else n_kv)
                la, lb = a, bb          # a: (r, in), b: (out, r)
            w.add_tensor(name + '.lora_a', np.ascontiguousarray(la, dtype=dtype))
            w.add_tensor(name + '.lora_b', np.ascontiguousarray(lb, dtype=dtype))
    w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()

def quantize(src, dst, ftype, head='GGML_TYPE_Q8_0'):
    p = llama_cpp.llama_model_quantize_default_params()
    p.ftype = getattr(llama_cpp, ftype); p.nthread = 2
    p.output_tensor_type = getattr(llama_cpp, head); p.token_embedding_type = getattr(llama_cpp, head)
    with captured_llama_log(llama_cpp):
        assert llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), p) == 0

class LoraBackend(GgufBackend):
    def __init__(self, path, lora, **kw):
        super().__init__(path, **kw)
        if lora:
            ad = llama_cpp.llama_adapter_lora_init(self._handles['model'], str(lora).encode())
            assert ad, 'lora init failed'
            self._ad = ad
            arr = (llama_cpp.llama_adapter_lora_p_ctypes * 1)(ad)
            sc = (ctypes.c_float * 1)(1.0)
            assert llama_cpp.llama_set_adapters_lora(self._handles['ctx'], arr, 1, sc) == 0

if __name__ == '__main__':
    base_f16 = OUT / 'base.f16.gguf'
    if not base_f16.exists():
        write_base(base_f16)
    lora = OUT / 'adapter.lora.gguf'
    if not lora.exists():
        write_lora(lora)
    for ft in sys.argv[1:]:
        dst = OUT / f'base.{ft}.gguf'
        if ft != 'f16' and not dst.exists():
            quantize(base_f16, dst, 'LLAMA_FTYPE_MOSTLY_' + ft.upper())
    print('written', sorted(p.name for p in OUT.glob('*.gguf')))
