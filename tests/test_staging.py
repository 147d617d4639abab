"""prorank_edge.staging: staged writes leave nothing behind on an error, Ctrl-C or SIGTERM, and the next write
removes what a killed process left."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
from conftest import requires_torch

from prorank_edge.errors import ProrankError
from prorank_edge.staging import make_parent, remove_stale, staged


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_staged_removes_the_staging_path_and_its_siblings_on_error(tmp_path):
    target = tmp_path / "model.gguf"
    with pytest.raises(RuntimeError):
        with staged(target) as partial:
            partial.write_bytes(b"half")
            partial.with_name(partial.name + ".f16").write_bytes(b"intermediate")
            raise RuntimeError("export failed")
    assert list(tmp_path.iterdir()) == []


def test_staged_folder_is_renamed_into_place(tmp_path):
    target = tmp_path / "artifact"
    with staged(target, folder=True) as staging:
        (staging / "model.onnx").write_bytes(b"graph")
        os.replace(staging, target)
    assert [p.name for p in tmp_path.iterdir()] == ["artifact"]
    assert (target / "model.onnx").read_bytes() == b"graph"


def test_stale_staging_of_a_dead_process_is_removed_and_a_live_one_kept(tmp_path):
    target = tmp_path / "out"
    dead = tmp_path / f".out.partial-{_dead_pid()}-0a1b2c3d"
    (dead / "fp32").mkdir(parents=True)
    dead_file = tmp_path / f".out.partial-{_dead_pid()}-ffffffff.f16"
    dead_file.write_bytes(b"x")
    live = tmp_path / f".out.partial-{os.getpid()}-00000000"
    live.mkdir()
    other_target = tmp_path / f".outer.partial-{_dead_pid()}-11111111"
    other_target.mkdir()
    assert sorted(remove_stale(target)) == sorted([dead, dead_file])
    assert live.exists() and other_target.exists() and not dead.exists() and not dead_file.exists()
    # a new staged write to the same target clears them as well
    dead.mkdir()
    with staged(target, folder=True):
        assert not dead.exists()


def test_make_parent_names_the_folder_it_cannot_create(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(ProrankError, match=f"{blocker / 'sub'}: cannot create the output folder"):
        make_parent(blocker / "sub" / "model.gguf")


def test_sigterm_unwinds_a_staged_write(tmp_path):
    """The CLI's handler: SIGTERM raises Terminated, so the staging folder goes as on Ctrl-C."""
    script = textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        from prorank_edge.staging import Terminated, sigterm_raises, staged
        sigterm_raises()
        try:
            with staged(Path({str(tmp_path / "out")!r}), folder=True) as staging:
                (staging / "part").write_text("x")
                print("staged", flush=True)
                time.sleep(60)
        except Terminated:
            sys.exit(143)
    """)
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "staged"
    assert any(p.name.startswith(".out.partial-") for p in tmp_path.iterdir())
    started = time.monotonic()
    child.send_signal(signal.SIGTERM)
    assert child.wait(timeout=30) == 143
    assert time.monotonic() - started < 30
    assert list(tmp_path.iterdir()) == []


@requires_torch
@pytest.mark.slow
def test_sigterm_during_a_real_export_leaves_no_staging_folder(tiny_qwen2_dir, tmp_path):
    output = tmp_path / "tiny-onnx"
    child = subprocess.Popen(
        [sys.executable, "-m", "prorank_edge.cli", "export", "--model", str(tiny_qwen2_dir), "--format", "onnx",
         "--quant", "fp32", "--output", str(output)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not any(p.name.startswith(".tiny-onnx.partial-") for p in tmp_path.iterdir()):
        assert child.poll() is None, child.communicate()
        assert time.monotonic() < deadline, "the export never staged its folder"
        time.sleep(0.05)
    child.send_signal(signal.SIGTERM)
    _, err = child.communicate(timeout=120)
    assert child.returncode == 143, err
    assert err.strip().splitlines()[-1] == "terminated" and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []
