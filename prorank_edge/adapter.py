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
#: a 2-D delta stored in 1 bit a weight: its signs packed 8 to a byte along each row, and one fp16 scale a row
_SIGN, _SIGN_SCALE = ".sign", ".sign_scale"


def _state_dict(model_dir: Path) -> dict:
    from safetensors.torch import load_file

    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise ProrankError(f"{model_dir}: no safetensors weights")
    state = {}
    for file in files:
        state.update(load_file(str(file)))
    return state


def _load_pair(base_dir: Path, trained_dir: Path) -> tuple[dict, dict]:
    """The base's and the trained checkpoint's weights, checked to be the same tensors (names and shapes)."""
    base, trained = _state_dict(base_dir), _state_dict(trained_dir)
    if set(base) != set(trained):
        raise ProrankError(f"{trained_dir}: its weights are not those of {base_dir} (different tensor names)")
    for name in sorted(trained):
        if trained[name].shape != base[name].shape:
            raise ProrankError(f"{name}: shape {tuple(trained[name].shape)} differs from the base's")
    return base, trained


def _truncated_svd(delta, rank: int):
    """(B, A) of `delta ~ B @ A` at `rank` (torch float32 in, float32 out), and the share of delta's norm it
    leaves out."""
    import torch

    u, s, vh = torch.linalg.svd(delta, full_matrices=False)
    rest = s[rank:].square().sum().sqrt() / s.square().sum().sqrt()
    return u[:, :rank] * s[:rank], vh[:rank], float(rest)


def make_adapter(base_dir: str | Path, trained_dir: str | Path, output_dir: str | Path, rank: int = 16,
                 base_name: str | None = None) -> dict:
    """Write the low-rank difference `trained - base` into output_dir; returns the adapter's info."""
    from safetensors.torch import save_file

    base_dir, trained_dir, output_dir = Path(base_dir), Path(trained_dir), Path(output_dir)
    base, trained = _load_pair(base_dir, trained_dir)
    tensors, errors = {}, {}
    for name in sorted(trained):
        delta = trained[name].float() - base[name].float()
        if not delta.abs().max() > 0:
            continue
        if delta.dim() == 2 and min(delta.shape) > rank:
            b, a, rest = _truncated_svd(delta, rank)
            tensors[name + _B], tensors[name + _A] = b.half().contiguous(), a.half().contiguous()
            errors[name] = round(rest, 4)
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


def make_sign_adapter(base_dir: str | Path, trained_dir: str | Path, output_dir: str | Path,
                      start_adapter: str | Path | None = None, base_name: str | None = None,
                      svd_rank: int = 0) -> dict:
    """Write `trained - base` as the adapter the training started from, kept as it is, plus the rest in 1 bit a
    weight (the whole change from the base when there is no start adapter): for each 2-D weight the sign of what
    training changed beyond the start adapter, times one fp16 scale per row (the row's mean absolute change, the
    scale that best fits signs in the least-squares sense; BitDelta, arXiv 2402.10193, keeps one per matrix).
    1-D deltas are stored in full. How a full fine-tune of the built-in model ships: 135M weights in 17 MB on top
    of the start adapter.

    svd_rank > 0 first keeps a rank-`svd_rank` SVD of each 2-D change beyond the start adapter (fp16 factors,
    appended to the start's), and codes only what the SVD leaves in 1 bit: a full fine-tune's change has a few
    strong directions that signs blur. On issue 19's round 13 retrained checkpoint (dev nDCG@10 0.7307, 100 dev
    queries x BM25 top 20), rank 16 plus signs kept 0.7239 where signs alone kept 0.7065, for 11.5 MB more.
    Returns the adapter's info; its relative_error is each weight's error against its change beyond the start
    adapter (of the 1-bit part alone when svd_rank is 0)."""
    import numpy as np
    import torch
    from safetensors.numpy import save_file

    base_dir, trained_dir, output_dir = Path(base_dir), Path(trained_dir), Path(output_dir)
    base, trained = _load_pair(base_dir, trained_dir)
    start_low_rank, start_full, start_signs = ({}, {}, {}) if start_adapter is None else _read_adapter(start_adapter)
    if start_signs:
        raise ProrankError(f"{start_adapter}: already holds a 1-bit part; start from a low-rank adapter")
    unused = (set(start_low_rank) | set(start_full)) - set(trained)
    if unused:
        raise ProrankError(f"{start_adapter}: tensors {sorted(unused)[:3]} are not in {trained_dir}")
    if svd_rank < 0:
        raise ProrankError(f"svd_rank must be 0 (signs only) or more, not {svd_rank}")
    tensors, errors = {}, {}
    for name in sorted(trained):
        delta = (trained[name].to(torch.float32) - base[name].to(torch.float32)).numpy()
        b, a = start_low_rank.get(name, (None, None))
        if b is not None:
            delta = delta - b @ a  # the very product adapter_deltas adds back
        changed = np.abs(delta).max() > 0
        if changed and (delta.ndim != 2 or delta.shape[1] % 8):
            tensors[name + _FULL] = delta.astype(np.float16)  # norms, biases: small, kept whole
            errors[name] = 0.0
        elif changed:
            rest = delta
            if svd_rank and min(delta.shape) > svd_rank:
                b_new, a_new, _ = _truncated_svd(torch.from_numpy(delta), svd_rank)
                b_new, a_new = (f.half().float().numpy() for f in (b_new, a_new))  # as stored
                rest = delta - b_new @ a_new  # what the fp16 factors leave
                b = b_new if b is None else np.concatenate([b, b_new], axis=1)
                a = a_new if a is None else np.concatenate([a, a_new], axis=0)
            scale = np.abs(rest).mean(axis=1).astype(np.float16)
            tensors[name + _SIGN] = np.packbits(rest > 0, axis=1)
            tensors[name + _SIGN_SCALE] = scale
            coded = np.where(rest > 0, 1.0, -1.0) * scale.astype(np.float32)[:, None]
            errors[name] = round(float(np.linalg.norm(rest - coded) / np.linalg.norm(delta)), 4)
        if b is not None:
            tensors[name + _B], tensors[name + _A] = b.astype(np.float16), a.astype(np.float16)
    output_dir.mkdir(parents=True, exist_ok=True)
    save_file({key: np.ascontiguousarray(value) for key, value in tensors.items()},
              str(output_dir / ADAPTER_WEIGHTS_FILENAME))
    shutil.copyfile(trained_dir / CONTRACT_FILENAME, output_dir / CONTRACT_FILENAME)
    rank = max((value.shape[0] for key, value in tensors.items() if key.endswith(_A)), default=0)
    info = {"base": base_name or str(base_dir), "rank": rank, "sign_bits": 1, "svd_rank": svd_rank,
            "start_adapter": None if start_adapter is None else str(start_adapter), "tensors": len(errors),
            "relative_error": errors, "bytes": (output_dir / ADAPTER_WEIGHTS_FILENAME).stat().st_size}
    (output_dir / ADAPTER_INFO_FILENAME).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    return info


def _read_adapter(adapter_dir: str | Path) -> tuple[dict, dict, dict]:
    """An adapter's three parts from one read of its weights, names as in the base checkpoint: {name: (B, A)} of
    the low-rank 2-D deltas and {name: delta} of those stored in full, float32, and {name: (signs, scales)} of the
    2-D deltas stored in 1 bit a weight as make_sign_adapter wrote them (signs packed 8 a byte along each row,
    scales float32 a row; empty for a purely low-rank adapter). unpack_signs makes such a part a delta: unpacked,
    the built-in model's 1-bit part takes 540 MB, so only the callers that need it pay for it."""
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
        elif not key.endswith((_A, _SIGN, _SIGN_SCALE)):
            raise ProrankError(f"{adapter_dir}: unexpected adapter tensor {key}")
    signs = {}
    for name, (key, scale_key) in sign_scale_keys(stored).items():
        if scale_key not in stored:
            raise ProrankError(f"{adapter_dir}: {key} has no matching {scale_key}")
        bits, scale = stored[key], stored[scale_key].astype(np.float32)
        if bits.ndim != 2 or scale.shape != (bits.shape[0],):
            raise ProrankError(f"{adapter_dir}: {key} {bits.shape} and {scale_key} {scale.shape} do not "
                               "describe one matrix")
        signs[name] = (bits, scale)
    return low_rank, full, signs


def sign_matrix(bits: np.ndarray) -> np.ndarray:
    """A 1-bit part's signs, packed 8 a byte along each row (numpy.packbits), as float32 +1 (bit set) and -1."""
    import numpy as np

    return np.unpackbits(bits, axis=1).astype(np.float32) * 2 - 1


def unpack_signs(bits: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """The float32 delta of a 1-bit part: +scale where its bit is set, -scale elsewhere, one scale a row."""
    return sign_matrix(bits) * scales[:, None]


def adapter_factors(adapter_dir: str | Path) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], dict[str, np.ndarray]]:
    """({name: (B, A)} of the low-rank 2-D deltas, {name: delta} of those stored in full), float32, names as in
    the base checkpoint. Needs numpy and safetensors only."""
    low_rank, full, _ = _read_adapter(adapter_dir)
    return low_rank, full


def sign_scale_keys(stored: dict) -> dict[str, tuple[str, str]]:
    """{weight name: (its signs' key, its scales' key)} of the 1-bit parts among an adapter's stored tensors."""
    return {key[: -len(_SIGN)]: (key, key[: -len(_SIGN)] + _SIGN_SCALE) for key in stored if key.endswith(_SIGN)}


def merged_adapter_factors(model_dir: str | Path) -> dict[str, tuple[np.ndarray, np.ndarray]] | None:
    """{name: (B, A)} of the low-rank part of the adapter a merged checkpoint keeps in MERGED_ADAPTER_FOLDER
    (apply_adapter writes it), or None for a checkpoint without one."""
    parts = merged_adapter_parts(model_dir)
    return None if parts is None else parts[0]


def merged_adapter_parts(model_dir: str | Path) -> tuple[dict, dict] | None:
    """({name: (B, A)} of the low-rank part, {name: (signs, scales)} of the 1-bit part, packed as stored) of the
    adapter a merged checkpoint keeps, or None for a checkpoint without one: what the 4-bit exporters keep apart
    from the base."""
    adapter_dir = Path(model_dir) / MERGED_ADAPTER_FOLDER
    if not (adapter_dir / ADAPTER_WEIGHTS_FILENAME).is_file():
        return None
    low_rank, _, signs = _read_adapter(adapter_dir)
    return low_rank, signs


def adapter_deltas(adapter_dir: str | Path) -> dict[str, np.ndarray]:
    """Tensor name (as in the base checkpoint) -> float32 delta: `B @ A` for 2-D weights, stored in full for
    the rest. Needs numpy and safetensors only."""
    low_rank, full, signs = _read_adapter(adapter_dir)
    deltas = {**full, **{name: b @ a for name, (b, a) in low_rank.items()}}
    for name, part in signs.items():
        delta = unpack_signs(*part)
        deltas[name] = deltas[name] + delta if name in deltas else delta
    return deltas


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
