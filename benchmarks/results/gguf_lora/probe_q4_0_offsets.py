"""Prototype 2: Q4_1 base stored as q4_0 + block offsets carried by the LoRA, with the adapter delta."""
import json, sys
from pathlib import Path
sys.path[:0] = [str(Path(__file__).resolve().parents[3]), str(Path(__file__).parent)]
import numpy as np
import gguf
from gguf import quants
from tokenizers import Tokenizer
from probe_base_plus_lora import M, OUT, low_rank, config, base_tensors, n_head, n_kv, READ
from prorank_edge.contract import PromptBuilder, ScoringContract
from prorank_edge.export import gguf_export as ge

QT = gguf.GGMLQuantizationType
names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config['num_hidden_layers'])

def q41_as_q40(w):
    """(q4_0 bytes [rows, nb*18], offsets [rows, nb] float32) with dequant(q4_0) + offsets per block == Q4_1(w)."""
    rows, cols = w.shape
    q = quants.quantize(w.astype(np.float32), QT.Q4_1).reshape(rows, cols // 32, 20)
    d = q[..., 0:2].copy().view(np.float16)[..., 0].astype(np.float32)
    m = q[..., 2:4].copy().view(np.float16)[..., 0].astype(np.float32)
    q40 = np.concatenate([q[..., 0:2], q[..., 4:]], axis=-1).reshape(rows, -1)
    return np.ascontiguousarray(q40), m + 8 * d

raw, loras = {}, {}
for hf, t in base_tensors():
    name = names.get_name(hf, try_suffixes=('.weight',))
    if t.ndim != 2:
        continue
    if '.attn_q.' in name or '.attn_k.' in name:
        t = ge.rotary_interleave(t, n_head if '.attn_q.' in name else n_kv)
    if name in ('token_embd.weight', 'output.weight'):
        raw[name] = (quants.quantize(t, QT.Q8_0), QT.Q8_0)
        b, a = low_rank['model.embed_tokens.weight']
        loras[name] = (b, a.T) if name == 'token_embd.weight' else (a, b)
        continue
    q40, off = q41_as_q40(t)
    raw[name] = (q40, QT.Q4_0)
    nb = t.shape[1] // 32
    s = np.kron(np.eye(nb, dtype=np.float32), np.ones((1, 32), np.float32))   # (nb, in)
    a_parts, b_parts = [s], [off]
    if hf in low_rank:
        b, a = low_rank[hf]
        if '.attn_q.' in name or '.attn_k.' in name:
            b = ge.rotary_interleave(b, n_head if '.attn_q.' in name else n_kv)
        a_parts.insert(0, a); b_parts.insert(0, b)
    loras[name] = (np.concatenate(a_parts, 0), np.concatenate(b_parts, 1))

def write_base(path):
    orig_add = gguf.GGUFWriter.add_tensor
    def add(self, name, tensor, raw_shape=None, raw_dtype=None, tensor_endianess=None):
        if name in raw:
            data, qt = raw[name]
            return orig_add(self, name, data, raw_dtype=qt)
        return orig_add(self, name, tensor, raw_shape, raw_dtype, tensor_endianess)
    cfg = dict(config, tie_word_embeddings=False)
    tok = (M / 'tokenizer.json').read_text()
    prompts = PromptBuilder(Tokenizer.from_str(tok), ScoringContract.load(M), None)
    gguf.GGUFWriter.add_tensor = add
    ge._read_tensors = lambda d: base_tensors()
    try:
        ge._write_unquantized(M, cfg, 'LLAMA', tok, prompts, path, {}, False)
    finally:
        gguf.GGUFWriter.add_tensor = orig_add
        ge._read_tensors = READ

def write_lora(path, dtype):
    w = gguf.GGUFWriter(path, 'llama')
    w.add_type(gguf.GGUFType.ADAPTER)
    w.add_string(gguf.Keys.Adapter.TYPE, 'lora')
    w.add_float32(gguf.Keys.Adapter.LORA_ALPHA, 0.0)  # scale 1 for every rank
    for name, (a, b) in loras.items():
        w.add_tensor(name + '.lora_a', np.ascontiguousarray(a, dtype=dtype))
        w.add_tensor(name + '.lora_b', np.ascontiguousarray(b, dtype=dtype))
    w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()

if len(sys.argv) == 1: write_base(OUT / 'base2.q4_0.gguf')
if len(sys.argv) == 1: write_lora(OUT / 'offsets.f16.lora.gguf', np.float16)
if len(sys.argv) == 1: write_lora(OUT / 'offsets.f32.lora.gguf', np.float32)

def write_lora_mixed(path, a_type, b_type, pad_to=1):
    w = gguf.GGUFWriter(path, 'llama')
    w.add_type(gguf.GGUFType.ADAPTER)
    w.add_string(gguf.Keys.Adapter.TYPE, 'lora')
    w.add_float32(gguf.Keys.Adapter.LORA_ALPHA, 0.0)
    for name, (a, b) in loras.items():
        if name in ('token_embd.weight', 'output.weight'):
            w.add_tensor(name + '.lora_a', np.ascontiguousarray(a, dtype=np.float16))
            w.add_tensor(name + '.lora_b', np.ascontiguousarray(b, dtype=np.float16))
            continue
        r = a.shape[0]; rp = -(-r // pad_to) * pad_to
        a = np.concatenate([a, np.zeros((rp - r, a.shape[1]), np.float32)]); b = np.concatenate([b, np.zeros((b.shape[0], rp - r), np.float32)], 1)
        for suffix, t, qt in (('.lora_a', a, a_type), ('.lora_b', b, b_type)):
            if qt == 'q8_0':
                w.add_tensor(name + suffix, quants.quantize(np.ascontiguousarray(t, np.float32), QT.Q8_0), raw_dtype=QT.Q8_0)
            else:
                w.add_tensor(name + suffix, np.ascontiguousarray(t, dtype=qt))
    w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()

if len(sys.argv) > 1 and sys.argv[1] == 'mixed':
    write_lora_mixed(OUT / 'offsets.a8b16.lora.gguf', 'q8_0', np.float16)
    write_lora_mixed(OUT / 'offsets.a8b8.lora.gguf', 'q8_0', 'q8_0', pad_to=32)

if len(sys.argv) > 1 and sys.argv[1] == 'lean':
    # tied: token_embd = Q8_0 of the merged embedding; no output copy, no embedding LoRA
    merged_embed = dict(READ(M))['model.embed_tokens.weight']
    raw['token_embd.weight'] = (quants.quantize(merged_embed, QT.Q8_0), QT.Q8_0)
    raw.pop('output.weight'); loras.pop('token_embd.weight'); loras.pop('output.weight')
    BT = base_tensors
    import proto
    def tied():
        for n, t in BT():
            if n != 'lm_head.weight':
                yield n, t
    base_tensors = tied
    globals()['base_tensors'] = tied
    orig_add = gguf.GGUFWriter.add_tensor
    def add(self, name, tensor, raw_shape=None, raw_dtype=None, tensor_endianess=None):
        if name in raw:
            data, qt = raw[name]
            return orig_add(self, name, data, raw_dtype=qt)
        return orig_add(self, name, tensor, raw_shape, raw_dtype, tensor_endianess)
    tok = (M / 'tokenizer.json').read_text()
    prompts = PromptBuilder(Tokenizer.from_str(tok), ScoringContract.load(M), None)
    gguf.GGUFWriter.add_tensor = add
    ge._read_tensors = lambda d: tied()
    try:
        ge._write_unquantized(M, config, 'LLAMA', tok, prompts, OUT / 'base3.q4_0.gguf', {}, False)
    finally:
        gguf.GGUFWriter.add_tensor = orig_add
        ge._read_tensors = READ
    write_lora_mixed(OUT / 'offsets3.a8b8.lora.gguf', 'q8_0', 'q8_0', pad_to=32)
