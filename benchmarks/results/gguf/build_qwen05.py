"""A Qwen2.5-0.5B-shaped random-weight checkpoint with the real Qwen2.5 tokenizer, contract max_length 512."""
import sys, shutil, importlib.metadata
sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[3])); sys.path.insert(0, sys.path[0] + "/tests")
from pathlib import Path
import torch
from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM
from prorank_edge.contract import ScoringContract
out = Path("/tmp/exp/qwen05"); tok = Path("/tmp/exp/qwen_tok")
if not (out / "model.safetensors").exists():
    tokenizer = AutoTokenizer.from_pretrained(tok)
    config = Qwen2Config(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                         num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=32768,
                         rope_theta=1000000.0, rms_norm_eps=1e-6, tie_word_embeddings=True)
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config).eval()
    model.save_pretrained(out); tokenizer.save_pretrained(out)
    ScoringContract(max_length=512).save(out)
from prorank_edge.export import gguf_export as ge
ge.GGUF_FTYPES["iq4_nl"] = "LLAMA_FTYPE_MOSTLY_IQ4_NL"; ge.GGUF_HEAD_TYPES["iq4_nl"] = "GGML_TYPE_Q8_0"
export_gguf = ge.export_gguf
for q in sys.argv[1:]:
    p = Path(f"/tmp/exp/qwen05-{q}.gguf")
    if not p.exists():
        info = export_gguf(out, p, q, smoothing_alpha=0.0)
        print(q, info["bytes"] // 10**6, "MB", info["quant_fallback"], info["seconds"], "s", flush=True)
