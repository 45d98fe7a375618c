"""--precision: one decision from the hardware facts (tested with the facts given, on any CPU), recorded where the
run says what ran, and an autocast that really runs the matrix products in bf16."""
import json

import pytest
import torch

import utils.precision as precision
from tests.test_cli import demo_args, run
from utils.precision import autocast, choose_precision

AVX2 = frozenset({"avx2", "fma"})


@pytest.mark.parametrize("requested,device,flags,cuda_bf16,expected,reason", [
    ("auto", "cpu", AVX2, False, "fp32", "--precision auto: this CPU has no native bf16"),
    ("auto", "cpu", AVX2 | {"avx512_bf16"}, False, "bf16", "this CPU has native bf16 (avx512_bf16)"),
    ("auto", "cpu", AVX2 | {"amx_bf16", "avx512_bf16"}, False, "bf16", "(amx_bf16, avx512_bf16)"),
    ("bf16", "cpu", AVX2, False, "fp32", "--precision bf16 asked, but this CPU has no native bf16.*fp32 runs"),
    ("bf16", "cpu", AVX2 | {"amx_bf16"}, False, "bf16", "--precision bf16; this CPU has native bf16"),
    ("fp32", "cpu", AVX2 | {"amx_bf16"}, False, "fp32", "--precision fp32"),
    ("auto", "cuda", frozenset(), True, "bf16", "--precision auto: this GPU has native bf16"),
    ("auto", "cuda", frozenset(), False, "fp32", "this GPU has no native bf16"),
    ("bf16", "cuda", frozenset(), False, "fp32", "asked, but this GPU has no native bf16"),
])
def test_the_decision_from_hardware_facts(requested, device, flags, cuda_bf16, expected, reason):
    import re
    ran, why = choose_precision(requested, device, flags, cuda_bf16)
    assert ran == expected and (reason in why or re.search(reason, why)), why


@pytest.mark.parametrize("flags,expected", [(AVX2, "fp32"), (AVX2 | {"avx512_bf16"}, "bf16")])
def test_config_json_and_the_log_say_what_ran_and_why(tmp_path, demo_root, monkeypatch, flags, expected):
    monkeypatch.setattr(precision, "cpu_flags", lambda: flags)
    out = tmp_path / "run"
    assert run("--mode", "train", *demo_args(demo_root, out, "--epochs", "1", "--precision", "auto")) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["precision"] == expected and "--precision auto: this CPU has" in config["precision_reason"]
    log = (out / "log.txt").read_text()
    assert f"precision: {'bf16 autocast' if expected == 'bf16' else 'fp32'} on cpu (--precision auto" in log


def test_forced_bf16_autocast_runs_the_models_matrix_products_in_bf16(tiny_model):
    """Any CPU: the decision is made beforehand, the autocast itself always applies bf16 when told to."""
    dtypes = []
    hooks = [m.register_forward_hook(lambda m, i, o: dtypes.append(o.dtype))
             for m in tiny_model.modules() if isinstance(m, torch.nn.Linear)]
    with torch.no_grad(), autocast(torch.device("cpu"), True):
        tiny_model(torch.rand(1, 3, 32, 32))
    for h in hooks:
        h.remove()
    assert len(dtypes) > 10 and set(dtypes) == {torch.bfloat16}
    dtypes.clear()
    with torch.no_grad(), autocast(torch.device("cpu"), False):
        tiny_model(torch.rand(1, 3, 32, 32))
    assert torch.bfloat16 not in dtypes


def test_metrics_keys_record_the_precision_that_ran(demo_root, monkeypatch):
    from config import parse_config
    from engine.evaluate import setting_key
    from methods import get_method
    monkeypatch.setattr(precision, "cpu_flags", lambda: AVX2)
    cfg = parse_config(["--dataset", "demo", "--class_name", "widget", "--dataset_dir", demo_root, "--bf16",
                        "--device", "cpu", "--backbone", "test_vit", "--image_size", "32", "--patch_size", "8",
                        "--feature_layers", "2", "--reg_layers", "2", "--reg_weights", "0.05"])
    model = get_method("patchguard").build_model(cfg.method_options.model)
    assert cfg.precision == "fp32" and setting_key(cfg, model, "none", 0.0, 0, None)["precision"] == "fp32"
