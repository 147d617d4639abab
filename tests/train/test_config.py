"""Training configs (train/config.py): `--set` overrides, the errors they give, and the shipped YAML files."""

from __future__ import annotations

import pytest
from conftest import REPO

pytest.importorskip("yaml")

from prorank_edge.train.config import ConfigError, load_config  # noqa: E402


def test_config_overrides_and_errors(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("data:\n  jsonl: x.jsonl\nstage2:\n  learning_rate: 1.0e-5\n")
    config = load_config(path, ["stage2.learning_rate=3e-4", "lora.enabled=true", "stage2.mixed_precision=no"])
    assert config.stage2.learning_rate == 3e-4 and config.lora_for("stage2").enabled
    assert config.stage2.mixed_precision == "no"
    with pytest.raises(ConfigError, match="stage2: unknown key"):
        load_config(path, ["stage2.learning_rte=1"])
    with pytest.raises(ConfigError, match="expected a number"):
        load_config(path, ["stage1.max_steps=lots"])
    with pytest.raises(ConfigError, match="stage1.prompts_per_step: expected an even number.*got 3"):
        load_config(path, ["stage1.prompts_per_step=3"])


@pytest.mark.parametrize("name", ["cpu_smollm2.yaml", "paper_qwen2.5_0.5b.yaml"])
def test_shipped_training_configs_load(name):
    """The README's training commands take these files as they are: every key must be one the config knows."""
    config = load_config(REPO / "train" / "configs" / name)
    assert config.stage1.prompts_per_step % 2 == 0 and config.stage1.output_dir != config.stage2.output_dir
    assert config.stage2.mixed_precision in ("no", "bf16", "fp16")
