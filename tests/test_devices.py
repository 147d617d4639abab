"""prorank_edge.devices: one --device parser for every backend, and the CPU facts speed decisions read."""

import pytest
from conftest import has_module

from prorank_edge.devices import Device, cpu_flags, cpu_has_native_bf16, parse_device, usable_cores
from prorank_edge.errors import ProrankError


@pytest.mark.parametrize("text,expected", [
    (None, Device("auto")), ("", Device("auto")), ("auto", Device("auto")), ("cpu", Device("cpu")),
    ("CPU", Device("cpu")), ("cuda", Device("cuda")), ("cuda:0", Device("cuda", 0)), (" cuda:3 ", Device("cuda", 3)),
])
def test_parse_device(text, expected):
    assert parse_device(text) == expected


@pytest.mark.parametrize("text", ["gpu", "cuda:", "cuda:x", "cuda:-1", "mps", "cpu:0", "cuda:1:2"])
def test_unknown_devices_name_the_accepted_forms(text):
    with pytest.raises(ProrankError, match=r"unknown device .*; use auto, cpu, cuda or cuda:N"):
        parse_device(text)


def test_cpu_facts_are_read_from_this_machine():
    flags = cpu_flags()
    assert usable_cores() >= 1
    assert cpu_has_native_bf16() == bool({"avx512_bf16", "amx_bf16"} & flags)


@pytest.mark.skipif(not has_module("onnxruntime"), reason="onnx extra not installed")
def test_onnx_providers_follow_the_parser():
    from prorank_edge.backends.onnx_backend import CPU, resolve_providers

    assert resolve_providers("auto") == [CPU] and resolve_providers("cpu") == [CPU]
    with pytest.raises(ProrankError, match="unknown device 'gpu'"):
        resolve_providers("gpu")


@pytest.mark.skipif(not has_module("torch"), reason="torch extra not installed")
def test_torch_device_follows_the_parser():
    from prorank_edge.backends.torch_backend import resolve_device

    assert str(resolve_device("cpu")) == "cpu"
    with pytest.raises(ProrankError, match="unknown device 'gpu'"):
        resolve_device("gpu")


@pytest.mark.skipif(not has_module("llama_cpp"), reason="gguf extra not installed")
def test_llama_cpp_layers_follow_the_parser():
    from prorank_edge.backends.gguf_backend import _gpu_layers
    from prorank_edge.backends.llama_runtime import import_llama_cpp

    llama_cpp = import_llama_cpp()
    assert _gpu_layers(llama_cpp, "cpu") == (0, 0)
    with pytest.raises(ProrankError, match="unknown device 'gpu'"):
        _gpu_layers(llama_cpp, "gpu")
