"""CaSA: attention-guided cut-and-paste, the attention map, entropy statistics, test-time adaptation, the NIH
layout, and end-to-end runs through the same CLI as PatchGuard."""
import json
import os
import shutil

import numpy as np
import pytest
import torch

import main as cli
from engine.reporting import setting_label
from datasets.cutpaste import AttentionCutPaste, CutPasteRanges
from datasets.pseudo_anomaly import patch_labels
from models.casa import CaSA, CaSAConfig, attention_entropy
from losses.casa_loss import casa_attack_loss
from models.tta import EntropyMomentTTA, adapted_parameters, moment_objective
from tests.conftest import MPDD
from tests.test_cli import TINY


def tiny_casa(**kw) -> CaSA:
    torch.manual_seed(0)
    return CaSA(CaSAConfig(backbone="test_vit", image_size=32, patch_size=8, head_hidden=16, **kw)).eval()


def test_cut_and_paste_points_follow_the_saliency():
    image = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    saliency = np.zeros((8, 8), np.float32)
    saliency[5:, 5:] = 1.0                     # only the bottom-right 3x3 of 8x8 patches: 14% of the image
    generator = AttentionCutPaste(CutPasteRanges(area=(0.01, 0.02), rotation=0, jitter=0))
    inside = 0
    for seed in range(60):
        out, mask = generator(image, saliency, np.random.default_rng(seed))
        ys, xs = np.nonzero(mask)
        inside += ys.mean() >= 36 and xs.mean() >= 36    # pasted around a high-attention point
        assert (out[~mask] == image[~mask]).all() and mask.any()
    assert inside >= 54                          # >= 90%, against about 14% for uniform points
    uniform = sum(np.nonzero(generator(image, None, np.random.default_rng(s))[1])[0].mean() >= 36 for s in range(60))
    assert uniform < 40


def test_cut_and_paste_cuts_where_the_saliency_is_high():
    """Rotation and jitter off: the pasted pixels are a verbatim copy of the source rectangle, which is found in
    the original image; its centre lies in the salient region."""
    image = np.random.default_rng(2).integers(0, 256, (64, 64, 3), dtype=np.uint8)  # every window unique
    saliency = np.zeros((8, 8), np.float32)
    saliency[:3, :3] = 1.0                       # top-left 3x3 patches: 14% of the image
    generator = AttentionCutPaste(CutPasteRanges(area=(0.01, 0.02), rotation=0, jitter=0))
    inside = 0
    for seed in range(40):
        out, mask = generator(image, saliency, np.random.default_rng(seed))
        ys, xs = np.nonzero(mask)
        y0, x0, h, w = ys.min(), xs.min(), ys.max() - ys.min() + 1, xs.max() - xs.min() + 1
        pasted = out[y0:y0 + h, x0:x0 + w]
        sources = [(y, x) for y in range(64 - h + 1) for x in range(64 - w + 1)
                   if (image[y:y + h, x:x + w] == pasted).all()]
        assert len(sources) == 1
        y, x = sources[0]
        inside += y + h / 2 < 28 and x + w / 2 < 28   # the source centre near the salient corner
    assert inside >= 36


def test_cut_and_paste_masks_and_patch_labels_agree():
    image = np.random.default_rng(1).integers(0, 256, (48, 48, 3), dtype=np.uint8)
    generator = AttentionCutPaste()
    for seed in range(20):
        out, mask = generator(image, np.random.default_rng(seed).random((6, 6)), np.random.default_rng(seed))
        assert out.shape == image.shape and out.dtype == np.uint8
        assert (out[~mask] == image[~mask]).all()
        labels = patch_labels(mask, 8).reshape(6, 6)
        assert (labels == mask.reshape(6, 8, 6, 8).any(axis=(1, 3))).all()


def explicit_attention(model: CaSA, images: torch.Tensor, layers) -> list:
    """softmax(q k^T / sqrt(d)) computed by hand from the input of each 1-based block in `layers`: (B, H, T, T)."""
    vit = model.feature_extractor.pretrained_model
    inputs = {}
    hooks = [vit.blocks[i - 1].register_forward_pre_hook(lambda m, a, i=i: inputs.__setitem__(i, a[0]))
             for i in layers]
    with torch.no_grad():
        vit.forward_features(model.feature_extractor.normalize(images))
    for h in hooks:
        h.remove()
    out = []
    for i in layers:
        attn = vit.blocks[i - 1].attn
        x = vit.blocks[i - 1].norm1(inputs[i])
        b, t, c = x.shape
        q, k, _ = attn.qkv(x).reshape(b, t, 3, attn.num_heads, c // attn.num_heads).permute(2, 0, 3, 1, 4)
        out.append(torch.softmax(q @ k.transpose(-2, -1) / (c // attn.num_heads) ** 0.5, dim=-1))
    return out


def explicit_cls_attention(model: CaSA, images: torch.Tensor) -> torch.Tensor:
    """The CLS row's patch columns of the hand-computed attention of the map layers: (B, L, H, N)."""
    p = model.feature_extractor.num_prefix_tokens
    return torch.stack([a[:, :, 0, p:] for a in explicit_attention(model, images, model.cfg.map_layers)], dim=1)


def test_map_is_a_non_negative_combination_of_real_attention_maps():
    model = tiny_casa(map_layers=(2, 6))
    with torch.no_grad():
        model.map_weights_raw.copy_(torch.tensor([[-3.0, 0.5], [1.0, -0.2]]))
        model.map_bias.fill_(0.3)
        x = torch.rand(2, 3, 32, 32)
        outputs = model(x)
    weights = model.map_weights
    assert (weights > 0).all()                    # softplus: non-negative even for negative raw values
    att = explicit_cls_attention(model, x)
    expected = (att * model.num_patches * weights[None, :, :, None]).sum((1, 2)) + 0.3
    torch.testing.assert_close(model.patch_map(outputs), expected, rtol=1e-4, atol=1e-5)
    assert model.cfg.map_layers == (2, 6) and tiny_casa().cfg.map_layers == (4, 5, 6)  # default: the last three


def test_attention_entropy_hand_values():
    uniform = torch.full((1, 2, 4, 4), 0.25)
    one_hot = torch.eye(4).expand(1, 2, 4, 4)
    entropy = attention_entropy([uniform, one_hot])
    torch.testing.assert_close(entropy, torch.tensor([[[np.log(4.0)] * 2, [0.0, 0.0]]], dtype=torch.float32))


def test_entropy_statistics_are_the_per_class_moments():
    from methods.casa import fit_entropy_statistics
    model = tiny_casa()
    normal, pseudo = torch.rand(5, 3, 32, 32), torch.rand(5, 3, 32, 32)
    batches = [{"image": normal[:3], "pseudo": pseudo[:3]}, {"image": normal[3:], "pseudo": pseudo[3:]}]
    fit_entropy_statistics(model, batches, torch.device("cpu"))
    depth = model.feature_extractor.depth
    for c, images in enumerate((normal, pseudo)):
        maps = explicit_attention(model, images, range(1, depth + 1))     # every block, by hand
        per_image = torch.stack([-(a * a.log()).sum(-1).mean(-1) for a in maps], dim=1).detach().numpy()
        np.testing.assert_allclose(model.entropy_mean[c].numpy(), per_image.mean(0), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(model.entropy_var[c].numpy(), ((per_image - per_image.mean(0)) ** 2).mean(0),
                                   rtol=1e-4, atol=1e-8)
    assert bool(model.has_statistics)


@pytest.fixture
def casa_with_statistics():
    model = tiny_casa()
    with torch.no_grad():
        _, entropy = model.forward_with_entropy(torch.rand(8, 3, 32, 32))
    model.entropy_mean.copy_(torch.stack([entropy.mean(0) * 0.9, entropy.mean(0) * 0.95]))
    model.entropy_var.copy_(torch.stack([entropy.var(0), entropy.var(0)]) + 1e-4)
    model.has_statistics.fill_(True)
    return model


def test_tta_adapts_only_its_parameters_never_the_model_and_lowers_its_objective(casa_with_statistics):
    model = casa_with_statistics
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    tta = EntropyMomentTTA(model, "layernorm", lr=1e-2, steps=5, episodic=False)
    chosen = {n for n, p in model.named_parameters() if id(p) in {id(q) for q in adapted_parameters(model, "layernorm")}}
    x = torch.rand(6, 3, 32, 32)
    with torch.no_grad():
        start = float(tta.objective(x, {}))
        tta(x)
        adapted = tta._state["params"]
        assert float(tta.objective(x, adapted)) < start
    assert set(adapted) == chosen and any(not torch.equal(adapted[n], before[n]) for n in chosen)
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())  # the model itself never moves
    assert all(p.requires_grad for p in model.parameters())


def test_tta_episodic_starts_from_the_trained_weights_online_carries_over_until_reset(casa_with_statistics):
    model = casa_with_statistics
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        episodic = EntropyMomentTTA(model, "layernorm", lr=1e-2, steps=2, episodic=True)
        first = episodic(x)
        torch.testing.assert_close(episodic(x), first, rtol=0, atol=0)   # the same start, the same result
        online = EntropyMomentTTA(model, "layernorm", lr=1e-2, steps=2, episodic=False)
        torch.testing.assert_close(online(x), first, rtol=0, atol=0)
        assert not torch.allclose(online(x), first)                        # two more steps from where it was
        online(x, update=False)
        online.reset()
        torch.testing.assert_close(online(x), first, rtol=0, atol=0)
        assert not torch.allclose(first, model(x))                         # TTA changes the outputs


def test_adaptive_attacker_gradient_matches_finite_differences_through_sgd_adaptation():
    """float64, SGD: d loss(adapted model(x)) / dx, with the adapted weights a function of x (one step)."""
    model = tiny_casa().double()
    with torch.no_grad():
        _, entropy = model.forward_with_entropy(torch.rand(8, 3, 32, 32, dtype=torch.float64))
        model.entropy_mean.copy_(torch.stack([entropy.mean(0) * 0.9, entropy.mean(0) * 0.95]))
        model.entropy_var.copy_(torch.stack([entropy.var(0), entropy.var(0)]) + 1e-4)
        model.has_statistics.fill_(True)
    tta = EntropyMomentTTA(model, "layernorm", lr=0.5, steps=1, optimizer="sgd")
    x = torch.rand(3, 3, 32, 32, dtype=torch.float64)
    labels = torch.zeros(3, 16, dtype=torch.float64)

    def loss(images):
        return casa_attack_loss(tta(images, differentiable=True, update=False), labels).sum()
    xg = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(loss(xg), xg)
    unaware = torch.autograd.grad(casa_attack_loss(model(xg), labels).sum(), xg)[0]
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        d = torch.randn(x.shape, generator=g, dtype=torch.float64)
        h = 1e-5
        with torch.no_grad():
            numeric = (loss(x + h * d) - loss(x - h * d)) / (2 * h)
        assert float((grad * d).sum()) == pytest.approx(float(numeric), rel=1e-5, abs=1e-8)
    assert not torch.allclose(grad, unaware)   # the adaptation's own dependence on x is in the gradient


def test_adaptive_attack_hurts_the_adapted_model_at_least_as_much_as_the_unaware_one(casa_with_statistics):
    from attacks import PGD
    model = casa_with_statistics
    tta = EntropyMomentTTA(model, "layernorm", lr=0.05, steps=1, optimizer="sgd")
    torch.manual_seed(0)
    x = torch.rand(6, 3, 32, 32)
    labels = torch.zeros(6, 16)
    labels[3:, :5] = 1
    unaware = PGD(model, 8 / 255, 5, loss_fn=casa_attack_loss)(x, labels)
    adaptive = PGD(model, 8 / 255, 5, loss_fn=casa_attack_loss,
                   forward=lambda z: tta(z, differentiable=True, update=False))(x, labels)
    with torch.no_grad():
        on_adapted = [float(casa_attack_loss(tta(a), labels).mean()) for a in (x, unaware, adaptive)]
    assert on_adapted[2] >= on_adapted[1] > on_adapted[0]


def test_moment_objective_hand_values_for_both_classes():
    """One block, one head. Predicted normal (logit <= 0): entropies 1, 3 (mean 2, variance 1) against stored
    mean 1, variance 4: |2 - 1| / 2 + |1 - 4| / 4 = 1.25. Predicted anomalous: 0, 0, 3 (mean 1, variance 2)
    against 2, 1: |1 - 2| / 1 + |2 - 1| / 1 = 2. Weighted by class share: 1.25 * 2/5 + 2 * 3/5 = 1.7."""
    from types import SimpleNamespace
    stored = SimpleNamespace(entropy_mean=torch.tensor([1.0, 2.0]).view(2, 1, 1),
                             entropy_var=torch.tensor([4.0, 1.0]).view(2, 1, 1))
    outputs = torch.tensor([[-1.0], [0.5], [-2.0], [3.0], [1.0]])
    entropy = torch.tensor([1.0, 0.0, 3.0, 0.0, 3.0]).view(5, 1, 1)
    assert float(moment_objective(stored, outputs, entropy)) == pytest.approx(1.7)
    # a single image of a class: its mean term only (no variance of one value): |3 - 2| / 1, all weight on it
    assert float(moment_objective(stored, torch.tensor([[1.0]]), torch.tensor([3.0]).view(1, 1, 1))) == \
        pytest.approx(1.0)


def test_moment_objective_is_zero_at_the_stored_statistics(casa_with_statistics):
    model = casa_with_statistics
    outputs = torch.tensor([[-1.0] + [0.0] * 16] * 3)           # all predicted normal
    entropy = model.entropy_mean[0].expand(3, *model.entropy_mean.shape[1:]).clone()
    entropy[0] += model.entropy_var[0].sqrt() * np.sqrt(1.5)    # mean unchanged, variance = stored variance
    entropy[1] -= model.entropy_var[0].sqrt() * np.sqrt(1.5)
    assert float(moment_objective(model, outputs, entropy)) == pytest.approx(0.0, abs=1e-4)


@pytest.mark.skipif(not os.path.isdir(MPDD), reason="shared data not present")
def test_casa_end_to_end_on_mpdd_and_checkpoint_rebuilds_itself(tmp_path):
    out = tmp_path / "run"
    args = ["--method", "casa", "--dataset", "mpdd", "--class_name", "metal_plate", "--dataset_dir", MPDD,
            "--output_dir", str(out), *TINY, "--epochs", "2", "--train_batch_size", "16", "--saliency_warmup", "1",
            "--saliency_every", "1", "--test_batch_size", "32", "--epsilon_test", "8", "--step_test", "1",
            "--num_visualization", "2", "--step_visualization", "1"]
    assert cli.main(["--mode", "all", *args]) == 0
    ckpt = out / "checkpoints" / "casa_mpdd_metal_plate.pth"
    from methods import get_method, load_model
    from utils.checkpoint import read_checkpoint
    _, model, config = load_model(str(ckpt), get_method("casa"))
    assert isinstance(model, CaSA) and config["method"] == "casa" and bool(model.has_statistics)
    assert read_checkpoint(str(out / "checkpoints" / "casa_mpdd_metal_plate_last.pth"))["saliency"].shape == (54, 4, 4)
    metrics = json.loads((out / "metrics.json").read_text())
    labels = [(s["attack"], s["tta"], s["attacker"]) for s in metrics["settings"]]
    assert labels == [("none", False, None), ("none", True, None), ("pgd", False, None), ("pgd", True, "unaware"),
                      ("pgd", True, "adaptive")]
    assert all(s["checks"]["ok"] for s in metrics["settings"] if s["attack"] != "none")
    assert "casa_attack_loss" in metrics["settings"][2]["repr"]
    assert "through test-time adaptation" in metrics["settings"][4]["repr"]
    assert "through" not in metrics["settings"][3]["repr"]
    assert (out / "visualization" / "tsne.png").exists() and (out / "visualization" / "index.html").exists()

    # rows without TTA are what a run without TTA gives: the adaptation leaks into nothing
    test = ["--mode", "test", *args, "--epsilon_test", "2", "8", "--step_test", "2"]
    results = {}
    for name, extra in (("with", ["--tta_mode", "online", "--tta_steps", "3", "--tta_lr", "0.05"]),
                        ("off", ["--tta", "off"])):
        (tmp_path / name).mkdir()
        shutil.copytree(out / "checkpoints", tmp_path / name / "checkpoints")
        test[test.index("--output_dir") + 1] = str(tmp_path / name)
        assert cli.main([*test, *extra]) == 0
        results[name] = json.loads((tmp_path / name / "metrics.json").read_text())["settings"]
    plain = [s for s in results["with"] if not s["tta"]]
    assert len(plain) == 3 and len(results["with"]) == 8
    assert [(s["attack"], s["eps_255"]) for s in plain] == [(s["attack"], s["eps_255"]) for s in results["off"]]
    for a, b in zip(plain, results["off"]):
        for metric in ("image_auroc", "pixel_auroc", "aupro"):
            assert a[metric] == pytest.approx(b[metric], abs=1e-6), (setting_label(a), metric)
    assert abs(results["with"][1]["image_auroc"] - plain[0]["image_auroc"]) > 1e-3  # and TTA did change scores

    # the joint objective barely attacks the map; the map objective does, and the min row takes the worst
    test[test.index("--output_dir") + 1] = str(tmp_path / "off")
    assert cli.main([*test, "--tta", "off", "--epsilon_test", "8", "--attack_objective", "joint", "image", "map"]) == 0
    settings = json.loads((tmp_path / "off" / "metrics.json").read_text())["settings"]
    rows = {s.get("objective"): s for s in settings if s["eps_255"] == 8}
    assert set(rows) == {None, "joint", "image", "map", "min"}  # None: the earlier run's default (joint) row
    assert rows["map"]["pixel_auroc"] < settings[0]["pixel_auroc"] - 0.02 and settings[0]["attack"] == "none"
    assert rows["map"]["pixel_auroc"] < rows["image"]["pixel_auroc"]
    assert rows["joint"]["pixel_auroc"] == pytest.approx(rows[None]["pixel_auroc"], abs=1e-6)
    for metric in ("image_auroc", "pixel_auroc", "aupro"):
        assert rows["min"][metric] == min(rows[o][metric] for o in ("joint", "image", "map"))
    assert "[map objective]" in (tmp_path / "off" / "log.txt").read_text()


def test_seed_summary_gives_mean_and_std(tmp_path):
    for seed, auroc in ((0, 0.8), (1, 0.9)):
        (tmp_path / f"s{seed}").mkdir()
        (tmp_path / f"s{seed}" / "metrics.json").write_text(json.dumps({"settings": [
            {"attack": "none", "eps_255": 0, "steps": 0, "image_auroc": auroc,
             "subgroups": {"F": {"image_auroc": auroc - 0.1}}}]}))
    assert cli.main(["--mode", "seeds", "--run_dirs", str(tmp_path / "s0"), str(tmp_path / "s1"),
                     "--output_dir", str(tmp_path / "summary")]) == 0
    table = (tmp_path / "summary" / "seeds.md").read_text()
    assert "| clean | all | image_auroc | 0.8500 ± 0.0707 | 2 |" in table
    assert "| clean | F | image_auroc | 0.7500 ± 0.0707 | 2 |" in table


def test_seed_summary_refuses_runs_that_differ_in_more_than_the_seed(tmp_path, capsys):
    from tests.test_cli import one_line_error
    for seed, lr in ((0, 0.1), (1, 0.2)):
        (tmp_path / f"s{seed}").mkdir()
        (tmp_path / f"s{seed}" / "metrics.json").write_text(json.dumps({"settings": []}))
        (tmp_path / f"s{seed}" / "config.json").write_text(json.dumps({"seed": seed, "train": {"lr": lr}}))
    one_line_error(capsys, cli.main(["--mode", "seeds", "--run_dirs", str(tmp_path / "s0"), str(tmp_path / "s1"),
                                     "--output_dir", str(tmp_path / "o")]), r"differ in more than the seed \(train.lr\)")


def test_workers_that_live_across_epochs_see_each_epoch_and_each_saliency_refresh(tmp_path, demo_root):
    """The same training with pseudo-anomalies made in the main process and in 2 persistent workers: bit-equal
    weights, so the workers drew each epoch's anomalies (the epoch travels with the sampler's keys) and used every
    saliency refresh (shared memory), not the state they started with."""
    base = ["--mode", "train", "--method", "casa", "--dataset", "demo", "--class_name", "widget", "--dataset_dir",
            demo_root, *[a for a in TINY if a not in ("--num_workers", "0")], "--epochs", "3",
            "--train_batch_size", "16", "--saliency_warmup", "1", "--saliency_every", "1", "--casa_head_hidden", "16"]
    for workers in ("0", "2"):
        assert cli.main([*base, "--num_workers", workers, "--output_dir", str(tmp_path / workers)]) == 0
    a, b = (torch.load(tmp_path / w / "checkpoints" / "casa_demo_widget.pth", weights_only=True)["model"]
            for w in ("0", "2"))
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=0, rtol=0, msg=k)


def test_the_adapter_sees_the_attacked_images_only_never_the_labels(casa_with_statistics):
    """A labelled attack with TTA: what the adapter scored is a function of the (attacked) images alone; flipping
    the labels changes the attack, and the adapter's outputs follow its images, nothing else."""
    from attacks import PGD
    from engine.scoring import score_loader
    from methods import get_method
    model = casa_with_statistics
    tta = EntropyMomentTTA(model, "layernorm", lr=1e-2, steps=2)
    seen = []

    def spy(images, **kwargs):
        seen.append((images.detach().clone(), kwargs))
        return tta(images, **kwargs)
    spy.reset, spy.attackers = tta.reset, tta.attackers
    x = torch.rand(4, 3, 32, 32)
    batch = {"image": x, "label": torch.tensor([0, 1, 0, 1]), "mask": torch.zeros(4, 32, 32),
             "has_mask": torch.zeros(4, dtype=torch.bool)}
    attack = PGD(model, 8 / 255, 2, loss_fn=casa_attack_loss)
    for labels in (batch["label"], 1 - batch["label"]):
        out = score_loader(get_method("casa"), model, [dict(batch, label=labels)], torch.device("cpu"), False,
                           attack, show=False, keep_images=True, adapter=spy)
        images, kwargs = seen[-1]
        assert kwargs == {} and torch.equal(images, out["images"])  # called with the scored images, nothing more
        with torch.no_grad():
            again = tta(images)
        np.testing.assert_allclose(out["scores"], again[:, 0].numpy(), rtol=0, atol=1e-6)
    assert not torch.equal(seen[0][0], seen[1][0])  # the labels did change the attack
