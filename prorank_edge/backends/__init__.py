"""Backend registry. Optional backends are imported only when asked for, so a missing extra never breaks
`import prorank_edge`; asking for one whose extra is absent raises an error that names the extra."""

from __future__ import annotations

import importlib
import importlib.util

from ..errors import MissingExtraError, ProrankError

# name -> (module, class, import that must succeed, extra that provides it)
_REGISTRY = {
    "torch": ("prorank_edge.backends.torch_backend", "TorchBackend", ("torch", "transformers"), "torch"),
    "onnx": ("prorank_edge.backends.onnx_backend", "OnnxBackend", ("onnxruntime",), "onnx"),
    "gguf": ("prorank_edge.backends.gguf_backend", "GgufBackend", ("llama_cpp",), "gguf"),
    "openvino": ("prorank_edge.backends.openvino_backend", "OpenVinoBackend", ("openvino",), "openvino"),
}
# The kinds of model each backend reads (models.detect_kind), the first being the one it is picked for by auto;
# openvino also runs the ONNX artifacts onnxruntime runs.
_READS = {"torch": ("torch",), "onnx": ("onnx",), "gguf": ("gguf",), "openvino": ("openvino", "onnx")}

BACKEND_NAMES = tuple(_REGISTRY)


def is_available(name: str) -> bool:
    """True when the backend's module exists and its dependencies are installed (nothing is imported)."""
    module, _, needs, _ = _REGISTRY[name]
    return importlib.util.find_spec(module) is not None and all(
        importlib.util.find_spec(dep) is not None for dep in needs
    )


def reads(name: str) -> tuple[str, ...]:
    """The model kinds backend `name` reads."""
    return _READS.get(name, (name,))


def available_backends() -> list[str]:
    return [name for name in _REGISTRY if is_available(name)]


def backend_class(name: str):
    if name not in _REGISTRY:
        raise ProrankError(f"unknown backend {name!r}; choose one of: {', '.join(_REGISTRY)}")
    module, cls, needs, extra = _REGISTRY[name]
    for dep in needs:
        if importlib.util.find_spec(dep) is None:
            raise MissingExtraError(f"the {name} backend", extra, dep)
    if importlib.util.find_spec(module) is None:
        raise ProrankError(f"the {name} backend is not part of this installation")
    return getattr(importlib.import_module(module), cls)
