import pytest
import torch

from attacks import PGD, patch_margin_loss


def test_margin_loss_hand_values():
    logits = torch.tensor([[1.0, 3.0, -2.0, 0.0], [2.0, 4.0, 6.0, 8.0]])
    labels = torch.tensor([[0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0]])
    torch.testing.assert_close(patch_margin_loss(logits, labels), torch.tensor([2.0 - (-1.0), 5.0]))


@pytest.mark.parametrize("random_start,restarts", [(False, 1), (True, 1), (True, 2)])
def test_pgd_stays_in_ball_and_range_and_raises_loss(tiny_model, random_start, restarts):
    torch.manual_seed(0)
    x = torch.rand(3, 3, 32, 32)
    x[0, :, :4] = 0.0
    x[0, :, 4:8] = 1.0  # pixels on the box edges
    labels = torch.zeros(3, 16)
    labels[1, :5] = 1
    eps = 4 / 255
    attack = PGD(tiny_model, eps=eps, steps=5, random_start=random_start, restarts=restarts, seed=0)
    adv = attack(x, labels)
    assert (adv - x).abs().max() <= eps + 1e-6
    assert adv.min() >= 0 and adv.max() <= 1
    with torch.no_grad():
        before = patch_margin_loss(tiny_model(x), labels)
        after = patch_margin_loss(tiny_model(adv), labels)
    assert (after > before).all()
    report = attack.last_report
    assert report.ok and report.images == 3 and report.nan_count == 0
    assert report.max_delta == pytest.approx(float((adv - x).abs().max()))


def test_pgd_touches_no_parameter_gradients_and_restores_mode(tiny_model):
    tiny_model.train()
    PGD(tiny_model, eps=8 / 255, steps=2, model_mode="eval")(torch.rand(2, 3, 32, 32), torch.zeros(2, 16))
    assert tiny_model.training
    assert all(p.grad is None for p in tiny_model.parameters())
    tiny_model.eval()
    seen = []
    hook = tiny_model.discriminator.register_forward_pre_hook(lambda m, a: seen.append(m.training))
    PGD(tiny_model, eps=8 / 255, steps=2, model_mode="train")(torch.rand(2, 3, 32, 32), torch.zeros(2, 16))
    hook.remove()
    assert seen == [True, True] and not tiny_model.training


def test_official_step_size_and_repr(tiny_model):
    attack = PGD(tiny_model, eps=8 / 255, steps=10)
    assert attack.alpha == pytest.approx(2.5 * (8 / 255) / 10)
    assert "eps=8/255" in repr(attack) and "steps=10" in repr(attack)


def test_zero_eps_returns_input(tiny_model):
    x = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(PGD(tiny_model, eps=0.0, steps=3)(x, torch.zeros(2, 16)), x)


class Bowl(torch.nn.Module):
    """One 'patch' whose logit peaks at `target`, inside the eps-ball: fixed sign steps of 2 eps overshoot it."""

    def __init__(self, target):
        super().__init__()
        self.register_buffer("target", target)

    def forward(self, x):
        return -((x - self.target) ** 2).flatten(1).sum(1, keepdim=True)


def test_apgd_halves_its_step_where_fixed_step_pgd_oscillates():
    from attacks import APGD
    eps = 8 / 255
    x0 = torch.full((2, 3, 4, 4), 0.5)
    model = Bowl(x0 + 0.3 * eps)
    labels = torch.zeros(2, 1)
    start = float(patch_margin_loss(model(x0), labels)[0])            # -(0.3 eps)^2 * 48
    pgd = PGD(model, eps, steps=100, alpha=2 * eps)                   # APGD's first step size, never reduced
    apgd = APGD(model, eps, steps=100)
    pgd_adv, apgd_adv = pgd(x0, labels), apgd(x0, labels)
    with torch.no_grad():
        pgd_loss, apgd_loss = patch_margin_loss(model(pgd_adv), labels), patch_margin_loss(model(apgd_adv), labels)
    assert (pgd_loss <= start + 1e-9).all()                           # bounces between the ball's faces
    # halving homes in on the peak (1.5e-7 of the start's loss here); without it momentum alone gets 5e-3
    assert (apgd_loss > 1e-4 * start).all()


def test_restarts_keep_each_images_best_point():
    """Three scripted restarts; image 0 is best in the second, image 1 in the third, image 2 in the first."""
    from attacks.base import Attack
    eps = 8 / 255
    shifts = torch.tensor([[0.1, 0.2, 1.0], [1.0, -0.5, 0.3], [0.0, 0.9, -1.0]]) * eps  # restart x image

    class Scripted(Attack):
        runs = 0

        def _run(self, x0, start, labels):
            x = x0 + shifts[self.runs].view(-1, 1, 1, 1)
            self.runs += 1
            return x, torch.zeros(len(x0), dtype=torch.bool)

    class Mean(torch.nn.Module):
        def forward(self, x):
            return x.flatten(1).mean(1, keepdim=True)
    x0 = torch.full((3, 3, 2, 2), 0.5)
    adv = Scripted(Mean(), eps, steps=1, restarts=3, random_start=True, seed=0)(x0, torch.zeros(3, 1))
    torch.testing.assert_close(adv[:, 0, 0, 0] - 0.5, torch.tensor([1.0, 0.9, 1.0]) * eps)


@pytest.mark.parametrize("name", ["fgsm_rs", "nfgsm"])
def test_single_step_attacks_stay_in_their_ball_and_raise_the_loss(tiny_model, name):
    from attacks import FGSMRS, NFGSM
    torch.manual_seed(0)
    x = torch.rand(4, 3, 32, 32)
    x[0] = 0.0
    x[1] = 1.0                                    # images on the box faces
    labels = torch.zeros(4, 16)
    labels[2, :6] = 1
    eps = 8 / 255
    attack = FGSMRS(tiny_model, eps, seed=0) if name == "fgsm_rs" else NFGSM(tiny_model, eps, seed=0)
    adv = attack(x, labels)
    bound = eps if name == "fgsm_rs" else 3 * eps   # N-FGSM: noise 2 eps + step eps, no projection (by design)
    assert (adv - x).abs().max() <= bound + 1e-6 and adv.min() >= 0 and adv.max() <= 1
    assert attack.last_report.ok and attack.last_report.eps == pytest.approx(bound)
    if name == "nfgsm":
        assert (adv - x).abs().max() > eps          # it does leave the eps-ball: no hidden projection
    with torch.no_grad():
        assert patch_margin_loss(tiny_model(adv), labels).mean() > patch_margin_loss(tiny_model(x), labels).mean()


def test_bf16_autocast_on_cpu_stays_close_to_fp32(tiny_model):
    from utils.precision import NATIVE_CPU_FLAGS, autocast, cpu_flags
    if not set(NATIVE_CPU_FLAGS) & cpu_flags():
        pytest.skip("this CPU has no native bf16 (no amx_bf16 / avx512_bf16 flag): --bf16 runs fp32 here")
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        fp32 = tiny_model(x)
        with autocast(torch.device("cpu"), True):
            bf16 = tiny_model(x).float()
    # bf16 keeps 8 mantissa bits: logits of order 1 agree to about 2^-8 relative per product, 0.05 after the network
    assert (bf16 - fp32).abs().max() < 0.05 * max(1.0, float(fp32.abs().max()))


def test_compiled_attack_matches_eager_and_leaves_the_model_as_it_was():
    from torch._dynamo.utils import counters

    from attacks.base import compiled
    from models.casa import CaSA, CaSAConfig
    from models.patchguard import PatchGuardConfig, PatchGuard
    torch.manual_seed(0)
    # two blocks only (forward_intermediates stops at the feature layer): a small graph, a short compile
    model = PatchGuard(PatchGuardConfig(backbone="test_vit", image_size=32, patch_size=8, feature_layers=(2,),
                                   reg_layers=(2,), hidden_dim=32)).eval()
    keys = list(model.state_dict())
    x, labels = torch.rand(4, 3, 32, 32), torch.zeros(4, 16)
    labels[1, :5] = 1
    eager = PGD(model, eps=8 / 255, steps=3)(x, labels)
    counters.clear()
    attack = PGD(model, eps=8 / 255, steps=3, compile=True)
    adv = attack(x, labels)
    assert counters["stats"]["unique_graphs"] >= 1  # the compiled forward really ran
    assert attack.forward is compiled(model) and attack.forward is not model  # made once, kept
    # sign steps: a pixel differs only where a gradient entry is ~0 and its sign flips with rounding
    assert (adv != eager).float().mean() < 1e-3 and (adv - x).abs().max() <= 8 / 255 + 1e-6
    assert list(model.state_dict()) == keys and all(p.requires_grad for p in model.parameters())
    assert not model.training
    from config import parse_config
    from engine.scoring import make_attack
    from methods import get_method
    casa = CaSA(CaSAConfig(backbone="test_vit", image_size=32, patch_size=8))
    cfg = parse_config(["--method", "casa", "--compile", "--dataset", "demo", "--class_name", "w", "--dataset_dir", "d"])
    assert make_attack("pgd", get_method("casa"), casa, 8 / 255, 2, cfg).forward is casa  # its method says eager
