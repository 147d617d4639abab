"""A fine-tuned reranker stored as a low-rank difference from its base model, small enough for the repository.

Training saves a full 540 MB checkpoint, whether it fine-tuned every weight or trained a LoRA (merged on save).
Each 2-D weight's delta from the base is kept as a truncated SVD, `delta ~ B @ A` (rank r, fp16), and each 1-D
weight's delta (norms, biases) in full. A delta of rank <= r (LoRAs of ranks summing to r, as the built-in
default is made) is then kept exactly; a full fine-tune's is approximated. `apply_adapter` adds them back onto
the base checkpoint and saves a plain checkpoint that every backend and the exporters read. `adapter.json`
records the base, the rank and how much of each delta the rank keeps (relative Frobenius error), so the loss is
on record.

`adapter_deltas` reads the deltas back with numpy alone, so the torch merge here and the GGUF merge of
gguf_adapter.py (an edge box without torch) add the very same arrays. `make_adapter` and `apply_adapter` need
torch and safetensors (the `torch` extra).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import ProrankError
from .formats import ADAPTER_INFO_FILENAME, ADAPTER_WEIGHTS_FILENAME, CONTRACT_FILENAME, MERGED_ADAPTER_FOLDER

if TYPE_CHECKING:
    import numpy as np

_A, _B, _FULL = ".lora_a", ".lora_b", ".delta"


def _state_dict(model_dir: Path) -> dict:
    from safetensors.torch import load_file

    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise ProrankError(f"{model_dir}: no safetensors weights")
    state = {}
    for file in files:
        state.update(load_file(str(file)))
    return state


def make_adapter(base_dir: str | Path, trained_dir: str | Path, output_dir: str | Path, rank: int = 16,
                 base_name: str | None = None) -> dict:
    """Write the low-rank difference `trained - base` into output_dir; returns the adapter's info."""
    import torch
    from safetensors.torch import save_file

    base_dir, trained_dir, output_dir = Path(base_dir), Path(trained_dir), Path(output_dir)
    base, trained = _state_dict(base_dir), _state_dict(trained_dir)
    if set(base) != set(trained):
        raise ProrankError(f"{trained_dir}: its weights are not those of {base_dir} (different tensor names)")
    tensors, errors = {}, {}
    for name in sorted(trained):
        delta = trained[name].float() - base[name].float()
        if delta.shape != base[name].shape:
            raise ProrankError(f"{name}: shape {tuple(trained[name].shape)} differs from the base's")
        if not delta.abs().max() > 0:
            continue
        if delta.dim() == 2 and min(delta.shape) > rank:
            u, s, vh = torch.linalg.svd(delta, full_matrices=False)
            b, a = u[:, :rank] * s[:rank], vh[:rank]
            tensors[name + _B], tensors[name + _A] = b.half().contiguous(), a.half().contiguous()
            rest = s[rank:].square().sum().sqrt() / s.square().sum().sqrt()
            errors[name] = round(float(rest), 4)
        else:
            tensors[name + _FULL] = delta.half().contiguous()
            errors[name] = 0.0
    output_dir.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(output_dir / ADAPTER_WEIGHTS_FILENAME))
    shutil.copyfile(trained_dir / CONTRACT_FILENAME, output_dir / CONTRACT_FILENAME)
    info = {"base": base_name or str(base_dir), "rank": rank, "tensors": len(errors),
            "relative_error": errors, "bytes": (output_dir / ADAPTER_WEIGHTS_FILENAME).stat().st_size}
    (output_dir / ADAPTER_INFO_FILENAME).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    return info


def adapter_factors(adapter_dir: str | Path) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], dict[str, np.ndarray]]:
    """({name: (B, A)} of the low-rank 2-D deltas, {name: delta} of those stored in full), float32, names as in
    the base checkpoint. Needs numpy and safetensors only."""
    import numpy as np
    from safetensors.numpy import load_file

    adapter_dir = Path(adapter_dir)
    if not (adapter_dir / ADAPTER_WEIGHTS_FILENAME).is_file():
        raise ProrankError(f"{adapter_dir}: no {ADAPTER_WEIGHTS_FILENAME}")
    stored = load_file(str(adapter_dir / ADAPTER_WEIGHTS_FILENAME))
    low_rank, full = {}, {}
    for key, value in stored.items():
        if key.endswith(_FULL):
            full[key[: -len(_FULL)]] = value.astype(np.float32)
        elif key.endswith(_B):
            name = key[: -len(_B)]
            if name + _A not in stored:
                raise ProrankError(f"{adapter_dir}: {key} has no matching {name + _A}")
            low_rank[name] = (value.astype(np.float32), stored[name + _A].astype(np.float32))
        elif not key.endswith(_A):
            raise ProrankError(f"{adapter_dir}: unexpected adapter tensor {key}")
    return low_rank, full


def merged_adapter_factors(model_dir: str | Path) -> dict[str, tuple[np.ndarray, np.ndarray]] | None:
    """{name: (B, A)} of the adapter a merged checkpoint keeps in MERGED_ADAPTER_FOLDER (apply_adapter writes it),
    or None for a checkpoint without one: what the 4-bit exporters keep apart from the base."""
    adapter_dir = Path(model_dir) / MERGED_ADAPTER_FOLDER
    if not (adapter_dir / ADAPTER_WEIGHTS_FILENAME).is_file():
        return None
    low_rank, _ = adapter_factors(adapter_dir)
    return low_rank


def adapter_deltas(adapter_dir: str | Path) -> dict[str, np.ndarray]:
    """Tensor name (as in the base checkpoint) -> float32 delta: `B @ A` for 2-D weights, stored in full for
    the rest. Needs numpy and safetensors only."""
    low_rank, full = adapter_factors(adapter_dir)
    return {**full, **{name: b @ a for name, (b, a) in low_rank.items()}}


def apply_adapter(base_dir: str | Path, adapter_dir: str | Path, output_dir: str | Path) -> Path:
    """Save base + adapter as a plain checkpoint (config, weights, tokenizer of the base; the adapter's contract).

    The adapter itself is kept in the checkpoint's MERGED_ADAPTER_FOLDER: the int4 ONNX exporter quantizes the
    base and keeps the delta exact from it (export/onnx_int4.py)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base_dir, adapter_dir, output_dir = Path(base_dir), Path(adapter_dir), Path(output_dir)
    deltas = adapter_deltas(adapter_dir)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    # Tied embeddings appear under both names in the state dict; add each delta once, to the stored tensor.
    state = model.state_dict(keep_vars=True)
    with torch.no_grad():
        for name, delta in deltas.items():
            if name not in state:
                raise ProrankError(f"{adapter_dir}: tensor {name!r} is not in the base model {base_dir}")
            if tuple(state[name].shape) != delta.shape:
                raise ProrankError(f"{adapter_dir}: the delta of {name} has shape {delta.shape}, the base "
                                   f"{base_dir} has {tuple(state[name].shape)}")
            state[name].add_(torch.from_numpy(delta).to(state[name].dtype))
    model.save_pretrained(output_dir, safe_serialization=True)
    AutoTokenizer.from_pretrained(base_dir).save_pretrained(output_dir)
    shutil.copyfile(adapter_dir / CONTRACT_FILENAME, output_dir / CONTRACT_FILENAME)
    (output_dir / MERGED_ADAPTER_FOLDER).mkdir()
    for name in (ADAPTER_WEIGHTS_FILENAME, ADAPTER_INFO_FILENAME):
        if (adapter_dir / name).is_file():
            shutil.copyfile(adapter_dir / name, output_dir / MERGED_ADAPTER_FOLDER / name)
    return output_dir
