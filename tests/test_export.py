"""ONNX export checked against PyTorch, and predict with ONNX Runtime alone, for both methods."""
import json
import os
import shutil

import numpy as np
import pytest

from tests.test_cli import demo_args, one_line_error, run

CASA_TINY = ["--backbone", "test_vit", "--image_size", "32", "--patch_size", "8", "--device", "cpu",
             "--num_workers", "0", "--no_tqdm", "--casa_head_hidden", "16", "--precision", "fp32"]


@pytest.fixture(scope="module", params=["patchguard", "casa"])
def exported(request, demo_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / request.param
    if request.param == "patchguard":
        args = demo_args(demo_root, out, "--epochs", "1", "--test_batch_size", "16")
    else:
        args = ["--method", "casa", "--dataset", "demo", "--class_name", "widget", "--dataset_dir", demo_root,
                "--output_dir", str(out), *CASA_TINY, "--epochs", "1", "--train_batch_size", "16",
                "--test_batch_size", "16"]
    assert run("--mode", "train", *args) == 0
    assert run("--mode", "export", *args) == 0
    return request.param, args, out


def test_export_writes_a_checked_onnx_model_with_its_metadata(exported):
    import onnx
    name, _, out = exported
    model = onnx.load(str(out / "export" / "model.onnx"))
    assert model.opset_import[0].version >= 17
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["method"] == name and meta["input_size"] == "32"
    assert json.loads(meta["config"])["method"] == name and len(json.loads(meta["heat_range"])) == 2
    log = (out / "log.txt").read_text()
    line = next(ln for ln in log.splitlines() if "ONNX Runtime against PyTorch" in ln)
    score_diff = float(line.split("max |score difference| ")[1].split()[0])
    map_diff = float(line.split("max |map difference| ")[1].split()[0])
    assert score_diff <= 1e-4 and map_diff <= 1e-3


def test_onnx_predict_agrees_with_the_pytorch_predict(exported, demo_root, tmp_path):
    name, args, out = exported
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    for defect in ("good", "hole", "scratch"):
        for f in sorted(os.listdir(os.path.join(demo_root, "widget", "test", defect)))[:2]:
            shutil.copy(os.path.join(demo_root, "widget", "test", defect, f), incoming / f"{defect}_{f}")
    assert run("--mode", "predict", *args, "--predict_dir", str(incoming), "--output_dir", str(tmp_path / "torch"),
               "--checkpoint_dir", str(out / "checkpoints")) == 0
    assert run("--mode", "predict", "--onnx", str(out / "export" / "model.onnx"), "--predict_dir", str(incoming),
               "--output_dir", str(tmp_path / "onnx"), "--no_tqdm") == 0
    a, b = (json.loads((tmp_path / d / "predictions" / "predictions.json").read_text()) for d in ("torch", "onnx"))
    assert a["threshold"] == pytest.approx(b["threshold"], abs=1e-4) and b["scored_with"].endswith("model.onnx")
    assert len(a["predictions"]) == len(b["predictions"]) == 6
    for p, q in zip(a["predictions"], b["predictions"]):
        assert p["image"] == q["image"] and p["score"] == pytest.approx(q["score"], abs=1e-4)
        assert p["anomalous"] == q["anomalous"]
        assert (tmp_path / "onnx" / "predictions" / q["heatmap"]).exists()


def test_export_mistakes_are_one_line(tmp_path, demo_root, capsys, exported):
    import onnx
    name, args, out = exported
    one_line_error(capsys, run("--mode", "export", *demo_args(demo_root, tmp_path / "none")), "checkpoint not found")
    blocked = tmp_path / "blocked"  # a file where the export folder should be: unwritable, even for root
    shutil.copytree(out / "checkpoints", blocked / "checkpoints")
    (blocked / "export").write_text("a file, not a folder")
    one_line_error(capsys, run("--mode", "export", *[a if a != str(out) else str(blocked) for a in args]),
                   "export is not writable")
    assert (blocked / "export").read_text() == "a file, not a folder"
    model = onnx.load(str(out / "export" / "model.onnx"))
    for p in model.metadata_props:
        if p.key == "input_size":
            p.value = "64"
    onnx.save(model, str(tmp_path / "other.onnx"))
    (tmp_path / "in").mkdir()
    shutil.copy(os.path.join(demo_root, "widget", "test", "good", "000.png"), tmp_path / "in")
    one_line_error(capsys, run("--mode", "predict", "--onnx", str(tmp_path / "other.onnx"), "--predict_dir",
                               str(tmp_path / "in"), "--output_dir", str(tmp_path / "o")),
                   "its input is 32 px but its metadata say 64 px")
    (tmp_path / "junk.onnx").write_bytes(b"not onnx")
    one_line_error(capsys, run("--mode", "predict", "--onnx", str(tmp_path / "junk.onnx"), "--predict_dir",
                               str(tmp_path / "in"), "--output_dir", str(tmp_path / "o")), "cannot load --onnx")


def test_a_disagreeing_export_is_refused_and_not_kept(exported, monkeypatch, capsys):
    import engine.export
    name, args, out = exported
    before = (out / "export" / "model.onnx").read_bytes()
    monkeypatch.setattr(engine.export, "MAP_TOLERANCE", -1.0)
    one_line_error(capsys, run("--mode", "export", *args), "disagrees with PyTorch.*not written")
    assert (out / "export" / "model.onnx").read_bytes() == before
    assert not [f for f in os.listdir(out / "export") if f.endswith(".tmp")]
    np.testing.assert_equal(len(os.listdir(out / "export")), 1)
