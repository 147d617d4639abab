"""Device names and CPU facts that every backend reads the same way; plain Python, no engine imported."""

from __future__ import annotations

import os
from dataclasses import dataclass

from .errors import ProrankError

DEVICE_HELP = "auto, cpu, cuda or cuda:N"


@dataclass(frozen=True)
class Device:
    """A parsed --device value: kind "auto", "cpu" or "cuda"; index only for "cuda:N" (None = the default GPU)."""

    kind: str
    index: int | None = None

    @property
    def gpu_index(self) -> int:
        return self.index or 0


def parse_device(device: str | None) -> Device:
    """"auto" (also None or ""), "cpu", "cuda" or "cuda:N"; anything else raises naming the accepted forms."""
    text = (device or "auto").strip().lower()
    if text in ("auto", "cpu", "cuda"):
        return Device(text)
    kind, colon, index = text.partition(":")
    if kind == "cuda" and colon and index.isdigit():
        return Device("cuda", int(index))
    raise ProrankError(f"unknown device {device!r}; use {DEVICE_HELP}")


def usable_cores() -> int:
    """Cores this process may run on (the affinity mask where the OS has one, e.g. in a container)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def cpu_flags() -> set[str]:
    """The first CPU's feature flags from /proc/cpuinfo (empty where there is none, e.g. macOS)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def int8_sums_may_saturate() -> bool:
    """True on x86 CPUs without AVX-512 VNNI or AVX-VNNI: there onnxruntime's u8 x s8 GEMM (the ONNX w8a8 level)
    adds products in pairs into saturating int16 (vpmaddubsw), which 8-bit weights can overflow."""
    import platform

    x86 = platform.machine().lower() in ("x86_64", "amd64", "i386", "i686")
    return x86 and not ({"avx512_vnni", "avx_vnni"} & cpu_flags())


def cpu_has_native_bf16() -> bool:
    """AVX-512 BF16 or AMX: bf16 matmuls run natively (measured 2.3x faster than fp32 on such a CPU)."""
    return bool({"avx512_bf16", "amx_bf16"} & cpu_flags())


#: "1" or "0" forces llama.cpp's repacked weight layouts on or off, whatever `llama_repack_choice` decides
LLAMA_REPACK_ENV = "PRORANK_EDGE_LLAMA_REPACK"


def llama_repack_choice() -> tuple[bool, str]:
    """(use llama.cpp's "extra" CPU buffer types, why), decided for this CPU at run time.

    Those buffer types repack weights at load into the layouts of llama.cpp's faster CPU kernels (AVX2 /
    AVX-512 interleaved blocks, and AMX tiles where the CPU has AMX). With the AMX one, llama-cpp-python 0.3.36
    segfaulted decoding Q4_K_M files on a Xeon with AMX (SmolLM2 and the tiny test models alike), so a CPU
    with AMX keeps the plain layout; every other CPU gets the repacked one. PRORANK_EDGE_LLAMA_REPACK=1 or 0
    overrides the choice.
    """
    forced = os.environ.get(LLAMA_REPACK_ENV, "").strip()
    if forced in ("0", "1"):
        return forced == "1", f"{LLAMA_REPACK_ENV}={forced}"
    if forced:
        raise ProrankError(f"{LLAMA_REPACK_ENV} must be 1 or 0, not {forced!r}")
    amx = sorted(flag for flag in cpu_flags() if flag.startswith("amx"))
    if amx:
        return False, f"this CPU has AMX ({', '.join(amx)}), where the repacked layouts crashed llama.cpp on Q4_K_M"
    return True, "no AMX on this CPU"
