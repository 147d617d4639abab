"""The low-rank difference adapter: a fine-tune stored as SVD factors of its deltas, merged back onto the base."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from conftest import ADAPTER_PAIRS, fine_tune  # noqa: E402

from prorank_edge.adapter import adapter_deltas, apply_adapter, make_adapter, make_sign_adapter  # noqa: E402
from prorank_edge.contract import ScoringContract  # noqa: E402
from prorank_edge.errors import ProrankError  # noqa: E402
from prorank_edge.formats import ADAPTER_INFO_FILENAME  # noqa: E402
from prorank_edge.reranker import Reranker  # noqa: E402


def _weights(model_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).state_dict()


def test_adapter_reproduces_a_low_rank_fine_tune(tiny_qwen2_dir, tmp_path):
    trained = fine_tune(tiny_qwen2_dir, tmp_path / "trained", delta_rank=4)
    info = make_adapter(tiny_qwen2_dir, trained, tmp_path / "adapter", rank=8)
    assert max(info["relative_error"].values()) < 1e-4  # rank 8 holds a rank-4 delta
    merged = apply_adapter(tiny_qwen2_dir, tmp_path / "adapter", tmp_path / "merged")

    expected, got, base = _weights(trained), _weights(merged), _weights(tiny_qwen2_dir)
    for name in expected:
        moved = (expected[name] - base[name]).abs().max()
        assert moved > 0
        # fp16 factors: the residual is a small fraction of how far the weight moved
        assert (got[name] - expected[name]).abs().max() < 2e-3 * max(1.0, float(moved) * 10)

    # fp32: the check is of the adapter's arithmetic (on a CPU with native bf16, "auto" would score in bf16)
    reference = Reranker(str(trained), backend="torch", device="cpu", dtype="float32").predict(ADAPTER_PAIRS)
    scores = Reranker(str(merged), backend="torch", device="cpu", dtype="float32").predict(ADAPTER_PAIRS)
    assert np.ptp(reference) > 1e-3
    np.testing.assert_allclose(scores, reference, atol=2e-3)


def test_a_smaller_rank_records_what_it_loses(tiny_qwen2_dir, tmp_path):
    trained = fine_tune(tiny_qwen2_dir, tmp_path / "trained", delta_rank=16)
    info = make_adapter(tiny_qwen2_dir, trained, tmp_path / "adapter", rank=2)
    assert json.loads((tmp_path / "adapter" / ADAPTER_INFO_FILENAME).read_text())["rank"] == 2
    two_d = {n: e for n, e in info["relative_error"].items() if n.endswith(("proj.weight", "embed_tokens.weight"))}
    assert min(two_d.values()) > 0.1  # rank 2 cannot hold a rank-16 delta
    small = (tmp_path / "adapter" / "adapter.safetensors").stat().st_size
    full = sum(f.stat().st_size for f in trained.glob("*.safetensors"))
    assert small < full / 4


def test_adapter_of_another_architecture_is_refused(tiny_qwen2_dir, tiny_llama_dir, tmp_path):
    with pytest.raises(ProrankError, match="not those of"):
        make_adapter(tiny_qwen2_dir, tiny_llama_dir, tmp_path / "adapter")


def _fine_tune_further(start_dir, out_dir, change):
    """A copy of start_dir whose 2-D weights moved by change(weight) (a full-rank change, as a full fine-tune's)."""
    import shutil

    from transformers import AutoModelForCausalLM

    shutil.copytree(start_dir, out_dir)
    model = AutoModelForCausalLM.from_pretrained(start_dir, dtype=torch.float32)
    with torch.no_grad():
        for weight in model.parameters():
            if weight.dim() == 2:
                weight.add_(change(weight))
    model.save_pretrained(out_dir, safe_serialization=True)
    return out_dir


def _start(tiny_qwen2_dir, tmp_path):
    """A rank-4 fine-tune of the base kept exactly as a rank-8 adapter, as the built-in default is."""
    trained = fine_tune(tiny_qwen2_dir, tmp_path / "start", delta_rank=4)
    make_adapter(tiny_qwen2_dir, trained, tmp_path / "start_adapter", rank=8)
    return apply_adapter(tiny_qwen2_dir, tmp_path / "start_adapter", tmp_path / "start_merged")


def test_sign_adapter_keeps_the_start_adapter_and_codes_the_rest_in_one_bit(tiny_qwen2_dir, tmp_path):
    start = _start(tiny_qwen2_dir, tmp_path)
    generator = torch.Generator().manual_seed(1)

    def row_signs(weight):  # +-s per row: exactly what one sign and one scale a row can hold
        signs = torch.randint(0, 2, weight.shape, generator=generator).float() * 2 - 1
        return signs * (0.002 + 0.01 * torch.rand(weight.shape[0], 1, generator=generator))

    trained = _fine_tune_further(start, tmp_path / "trained", row_signs)
    info = make_sign_adapter(tiny_qwen2_dir, trained, tmp_path / "adapter", tmp_path / "start_adapter")
    assert info["sign_bits"] == 1 and info["rank"] == 8
    assert max(info["relative_error"].values()) < 1e-3  # fp16 scales only

    merged = apply_adapter(tiny_qwen2_dir, tmp_path / "adapter", tmp_path / "merged")
    expected, got = _weights(trained), _weights(merged)
    for name in expected:
        assert (got[name] - expected[name]).abs().max() < 1e-4, name
    # the numpy deltas (what the GGUF merge adds) are those the torch merge added
    base = _weights(tiny_qwen2_dir)
    for name, delta in adapter_deltas(tmp_path / "adapter").items():
        np.testing.assert_allclose(delta, (got[name] - base[name]).numpy(), atol=1e-5)
    reference = Reranker(str(trained), backend="torch", device="cpu", dtype="float32").predict(ADAPTER_PAIRS)
    scores = Reranker(str(merged), backend="torch", device="cpu", dtype="float32").predict(ADAPTER_PAIRS)
    np.testing.assert_allclose(scores, reference, atol=2e-3)

    # 1 bit a weight: the 2-D part is an eighth of fp16 factors' size would be, plus the start's factors
    full = sum(f.stat().st_size for f in trained.glob("*.safetensors"))
    assert (tmp_path / "adapter" / "adapter.safetensors").stat().st_size < full / 8


def test_sign_adapter_records_the_error_of_a_gaussian_change(tiny_qwen2_dir, tmp_path):
    """Signs with the row's mean absolute value keep all but sqrt(1 - 2/pi) = 0.60 of a Gaussian change; a
    worse scale (the row's largest change, say) would record far more."""
    start = _start(tiny_qwen2_dir, tmp_path)
    generator = torch.Generator().manual_seed(2)
    trained = _fine_tune_further(start, tmp_path / "trained",
                                 lambda w: 0.01 * torch.randn(w.shape, generator=generator))
    info = make_sign_adapter(tiny_qwen2_dir, trained, tmp_path / "adapter", tmp_path / "start_adapter")
    two_d = [e for n, e in info["relative_error"].items() if n.endswith(("proj.weight", "embed_tokens.weight"))]
    assert two_d and all(0.55 < e < 0.65 for e in two_d), two_d


def test_sign_adapter_refuses_a_start_that_already_has_one_bit_parts(tiny_qwen2_dir, tmp_path):
    start = _start(tiny_qwen2_dir, tmp_path)
    trained = _fine_tune_further(start, tmp_path / "trained", lambda w: 0.001 * torch.ones_like(w))
    make_sign_adapter(tiny_qwen2_dir, trained, tmp_path / "adapter", tmp_path / "start_adapter")
    with pytest.raises(ProrankError, match="already holds a 1-bit part"):
        make_sign_adapter(tiny_qwen2_dir, trained, tmp_path / "again", tmp_path / "adapter")


def test_a_damaged_sign_part_names_the_tensor(tiny_qwen2_dir, tmp_path):
    from safetensors.numpy import load_file, save_file

    start = _start(tiny_qwen2_dir, tmp_path)
    trained = _fine_tune_further(start, tmp_path / "trained", lambda w: 0.001 * torch.ones_like(w))
    make_sign_adapter(tiny_qwen2_dir, trained, tmp_path / "adapter", tmp_path / "start_adapter")
    path = tmp_path / "adapter" / "adapter.safetensors"
    stored = load_file(str(path))
    key = next(k for k in stored if k.endswith(".sign_scale"))
    stored[key] = stored[key][:-1]
    save_file(stored, str(path))
    with pytest.raises(ProrankError, match=key.replace(".", r"\.")[: -len(r"\.sign_scale")]):
        adapter_deltas(tmp_path / "adapter")


def test_train_adapter_on_adapter_writes_the_one_bit_form(tiny_qwen2_dir, tmp_path):
    """The CLI route the built-in default is made by: `train adapter --on-adapter`."""
    pytest.importorskip("trl")
    pytest.importorskip("peft")
    from click.testing import CliRunner

    from prorank_edge.cli import main

    start = _start(tiny_qwen2_dir, tmp_path)
    trained = _fine_tune_further(start, tmp_path / "trained", lambda w: 0.001 * torch.ones_like(w))
    result = CliRunner().invoke(main, ["train", "adapter", "--model", str(trained), "--base", str(tiny_qwen2_dir),
                                       "--output", str(tmp_path / "adapter"),
                                       "--on-adapter", str(tmp_path / "start_adapter")])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["sign_bits"] == 1
    stored = json.loads((tmp_path / "adapter" / ADAPTER_INFO_FILENAME).read_text())
    assert stored["start_adapter"] == str(tmp_path / "start_adapter") and stored["rank"] == 8


def test_fitting_the_sign_scales_brings_the_scores_closer_to_the_checkpoint(tiny_qwen2_dir, tmp_path):
    """The row scales fitted on training groups (train/sign_scales.py) must lower the centred score error that
    signs with their mean-absolute scales leave; a fit that does not move them, or moves them wrongly, fails."""
    pytest.importorskip("bm25s")
    from conftest import write_topics_beir
    from safetensors.numpy import load_file, save_file

    from prorank_edge.evaluation.beir import load_beir
    from prorank_edge.train.config import DataConfig
    from prorank_edge.train.data import from_beir, listwise_groups
    from prorank_edge.train.sign_scales import distill_sign_scales

    start = _start(tiny_qwen2_dir, tmp_path)
    generator = torch.Generator().manual_seed(3)

    def row_signs(weight):  # exactly what one sign and one scale a row hold, so the right scales are known
        signs = torch.randint(0, 2, weight.shape, generator=generator).float() * 2 - 1
        return signs * (0.02 + 0.03 * torch.rand(weight.shape[0], 1, generator=generator))

    trained = _fine_tune_further(start, tmp_path / "trained", row_signs)
    make_sign_adapter(tiny_qwen2_dir, trained, tmp_path / "adapter", tmp_path / "start_adapter")
    # the Linear layers' scales put off by factors of 1/3 to 3, which the fit has to undo from scores alone
    path = tmp_path / "adapter" / "adapter.safetensors"
    stored = load_file(str(path))
    rng = np.random.default_rng(0)
    for key in stored:
        if key.endswith(".sign_scale") and "embed_tokens" not in key:
            stored[key] = (stored[key] * np.exp(rng.uniform(-1.1, 1.1, stored[key].shape))).astype(np.float16)
    save_file(stored, str(path))
    data = from_beir(load_beir(write_topics_beir(tmp_path / "beir"), "train"), DataConfig(dev_queries=2), seed=0)
    groups = listwise_groups(data.groups, 1, 3, seed=0)
    pairs = [(query, p.text) for query, passages in groups for p in passages]

    def centred_error():
        fresh = tmp_path / f"merged{len(list(tmp_path.iterdir()))}"
        merged = apply_adapter(tiny_qwen2_dir, tmp_path / "adapter", fresh)
        got = Reranker(str(merged), backend="torch", device="cpu", dtype="float32").predict(pairs)
        want = Reranker(str(trained), backend="torch", device="cpu", dtype="float32").predict(pairs)
        diff = got - want
        return float(np.mean((diff - diff.mean()) ** 2))

    before = centred_error()
    losses = distill_sign_scales(tiny_qwen2_dir, tmp_path / "adapter", trained, groups, 128, steps=40,
                                 learning_rate=5e-2, bf16=False)
    after = centred_error()
    assert len(losses) == 40 and before > 1e-3
    assert after < 0.5 * before, (before, after, losses)


def test_train_adapter_fits_the_sign_scales_on_training_queries_only(tiny_qwen2_dir, tmp_path):
    """build_adapter with --on-adapter, --data and --distill-steps: the fit runs, on groups of the queries
    training kept (the held-out dev ones excluded), and is recorded next to the dev figures."""
    pytest.importorskip("bm25s")
    from conftest import write_topics_beir

    from prorank_edge.train.adapter_cmd import build_adapter

    start = _start(tiny_qwen2_dir, tmp_path)
    trained = _fine_tune_further(start, tmp_path / "trained", lambda w: 0.01 * torch.sign(torch.randn_like(w)))
    beir = write_topics_beir(tmp_path / "beir")
    info = build_adapter(str(trained), str(tiny_qwen2_dir), tmp_path / "adapter", 16, str(beir), "train", 2, 0, 4,
                         2, start_adapter=tmp_path / "start_adapter", distill_steps=3)
    assert info["distill"]["steps"] == 3 and info["distill"]["queries"] == 6  # 8 queries, 2 held out
    assert info["dev"]["queries"] == 2 and "adapter" in info["dev"]["ndcg@10"]
    stored = json.loads((tmp_path / "adapter" / ADAPTER_INFO_FILENAME).read_text())
    assert stored["distill"] == info["distill"] and stored["sign_bits"] == 1


def test_one_bit_without_a_start_codes_the_whole_change_from_the_base(tiny_qwen2_dir, tmp_path):
    """`train adapter --one-bit`: a full fine-tune from the base itself, every 2-D change in signs."""
    pytest.importorskip("trl")
    pytest.importorskip("peft")
    from click.testing import CliRunner

    from prorank_edge.cli import main

    generator = torch.Generator().manual_seed(4)

    def row_signs(weight):
        signs = torch.randint(0, 2, weight.shape, generator=generator).float() * 2 - 1
        return signs * (0.002 + 0.01 * torch.rand(weight.shape[0], 1, generator=generator))

    trained = _fine_tune_further(tiny_qwen2_dir, tmp_path / "trained", row_signs)
    result = CliRunner().invoke(main, ["train", "adapter", "--model", str(trained), "--base", str(tiny_qwen2_dir),
                                       "--output", str(tmp_path / "adapter"), "--one-bit"])
    assert result.exit_code == 0, result.output
    info = json.loads((tmp_path / "adapter" / ADAPTER_INFO_FILENAME).read_text())
    assert info["start_adapter"] is None and info["rank"] == 0 and max(info["relative_error"].values()) < 1e-3
    merged = apply_adapter(tiny_qwen2_dir, tmp_path / "adapter", tmp_path / "merged")
    expected, got = _weights(trained), _weights(merged)
    for name in expected:
        assert (got[name] - expected[name]).abs().max() < 1e-4, name


def _low_rank_plus_noise(seed):
    """A change with two strong directions per matrix and a weak full-rank rest, as a full fine-tune's looks."""
    generator = torch.Generator().manual_seed(seed)

    def change(weight):
        rows, cols = weight.shape
        strong = torch.randn(rows, 2, generator=generator) @ torch.randn(2, cols, generator=generator)
        return 0.01 * strong + 0.001 * torch.randn(rows, cols, generator=generator)
    return change


def test_sign_adapter_keeps_an_svd_of_the_change_before_the_signs(tiny_qwen2_dir, tmp_path):
    trained = _fine_tune_further(tiny_qwen2_dir, tmp_path / "trained", _low_rank_plus_noise(3))
    signs_only = make_sign_adapter(tiny_qwen2_dir, trained, tmp_path / "signs")
    info = make_sign_adapter(tiny_qwen2_dir, trained, tmp_path / "adapter", svd_rank=2)
    assert info["rank"] == 2 and info["svd_rank"] == 2 and signs_only["rank"] == 0
    two_d = [n for n in info["relative_error"] if n.endswith(("proj.weight", "embed_tokens.weight"))]
    assert two_d
    for name in two_d:  # the signs now code only the weak rest: about 0.6 of it, 0.05 of the change
        assert info["relative_error"][name] < 0.25 < signs_only["relative_error"][name], name

    merged = apply_adapter(tiny_qwen2_dir, tmp_path / "adapter", tmp_path / "merged")
    expected, got, base = _weights(trained), _weights(merged), _weights(tiny_qwen2_dir)
    for name in two_d:
        error = (got[name] - expected[name]).norm() / (expected[name] - base[name]).norm()
        assert error < 0.25, name
    # the numpy deltas (what the GGUF merge adds) are those the torch merge added
    for name, delta in adapter_deltas(tmp_path / "adapter").items():
        np.testing.assert_allclose(delta, (got[name] - base[name]).numpy(), atol=1e-5)


def test_sign_adapter_appends_its_svd_to_the_start_adapter(tiny_qwen2_dir, tmp_path):
    from safetensors.numpy import load_file

    start = _start(tiny_qwen2_dir, tmp_path)
    trained = _fine_tune_further(start, tmp_path / "trained", _low_rank_plus_noise(4))
    info = make_sign_adapter(tiny_qwen2_dir, trained, tmp_path / "adapter", tmp_path / "start_adapter", svd_rank=2)
    assert info["rank"] == 8 + 2
    started, stored = (load_file(str(p / "adapter.safetensors")) for p in (tmp_path / "start_adapter",
                                                                           tmp_path / "adapter"))
    factor_keys = [key for key in started if key.endswith((".lora_a", ".lora_b"))]
    assert factor_keys
    for key in factor_keys:  # the start's factors kept bit for bit, the new directions after them
        rank = started[key].shape[1 if key.endswith(".lora_b") else 0]
        kept = stored[key][:, :rank] if key.endswith(".lora_b") else stored[key][:rank]
        np.testing.assert_array_equal(kept, started[key])


def test_svd_rank_needs_one_bit(tmp_path):
    from click.testing import CliRunner

    from prorank_edge.cli import main

    result = CliRunner().invoke(main, ["train", "adapter", "--model", str(tmp_path), "--output", str(tmp_path / "a"),
                                       "--svd-rank", "4"])
    assert result.exit_code == 2 and "--svd-rank goes with --one-bit" in result.output


def test_train_adapter_stores_no_fusion_weight_when_dev_cannot_tell_weights_apart(tiny_qwen2_dir, tmp_path,
                                                                                    monkeypatch):
    """A dev measurement whose fusion grid is flat (as one query gave for round 14's first coding: nDCG@10 1.0
    at every weight) leaves the contract without a fusion weight, where the tie rule's 0.0 used to be stored."""
    pytest.importorskip("bm25s")
    from conftest import write_topics_beir

    from prorank_edge.evaluation import evaluate
    from prorank_edge.train.adapter_cmd import build_adapter

    trained = _fine_tune_further(tiny_qwen2_dir, tmp_path / "trained", lambda w: 0.01 * torch.randn_like(w))
    beir = write_topics_beir(tmp_path / "beir")
    monkeypatch.setattr(evaluate, "tune_fusion_weight",
                        lambda report: (0.0, {w: 1.0 for w in evaluate.FUSION_GRID}))
    info = build_adapter(str(trained), str(tiny_qwen2_dir), tmp_path / "adapter", 4, str(beir), "train", 2, 0, 4, 2)
    assert info["dev"]["fusion_weight"] is None and info["dev"]["fusion_note"].endswith("no fusion weight stored")
    assert "fusion_weight" not in ScoringContract.load(tmp_path / "adapter").extra
