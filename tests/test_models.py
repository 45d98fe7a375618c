import pytest
import torch

from models.patchguard import PatchGuard
from tests.conftest import tiny_model_config
from utils.errors import UserError


def explicit_attention(block, x):
    """softmax(q k^T * scale) computed by hand from the block's weights."""
    attn = block.attn
    y = block.norm1(x)
    b, n, c = y.shape
    qkv = attn.qkv(y).reshape(b, n, 3, attn.num_heads, c // attn.num_heads).permute(2, 0, 3, 1, 4)
    q, k, _ = qkv.unbind(0)
    return ((q * attn.scale) @ k.transpose(-2, -1)).softmax(-1)


def test_hooked_attention_equals_explicit_softmax(tiny_model):
    torch.manual_seed(1)
    images = torch.rand(2, 3, 32, 32)
    vit = tiny_model.feature_extractor.pretrained_model
    # explicit pass through the trunk, keeping each block's input
    x = (images - tiny_model.feature_extractor.mean) / tiny_model.feature_extractor.std
    x = vit.norm_pre(vit._pos_embed(vit.patch_embed(x)))
    expected = []
    for i, block in enumerate(vit.blocks):
        if i in tiny_model.feature_extractor.reg_indices:
            expected.append(explicit_attention(block, x)[:, :, 1:, 1:])
        x = block(x)
    with torch.no_grad():
        _, maps = tiny_model.forward_with_attention(images)
    assert len(maps) == 3
    for got, want in zip(maps, expected):
        assert got.shape == (2, 3, 16, 16)
        torch.testing.assert_close(got, want.detach(), atol=1e-5, rtol=1e-5)
    full_rows = explicit_attention(vit.blocks[5], x).sum(-1)
    torch.testing.assert_close(full_rows, torch.ones_like(full_rows), atol=1e-5, rtol=0)


def test_recording_leaves_fused_path_and_outputs_unchanged(tiny_model):
    images = torch.rand(2, 3, 32, 32)
    fused_before = [b.attn.fused_attn for b in tiny_model.feature_extractor.pretrained_model.blocks]
    with torch.no_grad():
        plain = tiny_model(images)
        recorded, _ = tiny_model.forward_with_attention(images)
    torch.testing.assert_close(plain, recorded, atol=1e-5, rtol=1e-5)
    fused_after = [b.attn.fused_attn for b in tiny_model.feature_extractor.pretrained_model.blocks]
    assert fused_before == fused_after
    assert not any(b.attn.attn_drop._forward_hooks for b in tiny_model.feature_extractor.pretrained_model.blocks)


def test_attention_maps_keep_gradients(tiny_model):
    images = torch.rand(1, 3, 32, 32, requires_grad=True)
    _, maps = tiny_model.forward_with_attention(images)
    (grad,) = torch.autograd.grad(maps[0].sum() * 0 + maps[0][0, 0, 0, 1], images)
    assert grad.abs().sum() > 0


def test_state_dict_keys_follow_official_names(tiny_model):
    keys = set(tiny_model.state_dict())
    assert "discriminator.positional_encodings" in keys
    assert "discriminator.transformer_encoder.0.attn.in_proj_weight" in keys
    assert "feature_extractor.pretrained_model.blocks.0.attn.qkv.weight" in keys
    assert not any("mean" in k or "std" in k for k in keys)  # normalisation buffers are not saved


def test_image_size_must_be_multiple_of_patch():
    with pytest.raises(UserError, match="not a multiple"):
        PatchGuard(tiny_model_config(image_size=36))


def test_layers_out_of_range():
    with pytest.raises(UserError, match="out of range"):
        PatchGuard(tiny_model_config(reg_layers=(6, 9, 13)))


def test_image_score_is_mean_of_top3():
    logits = torch.tensor([[0.0, 5.0, 1.0, 3.0, 4.0]])
    model = PatchGuard.__new__(PatchGuard)
    model.cfg = tiny_model_config()
    assert PatchGuard.image_scores(model, logits).item() == pytest.approx(4.0)


@pytest.mark.parametrize("layout,arch", [("dino", "vit_small_patch16_224"), ("dinov2", "vit_small_patch14_dinov2")])
def test_backbone_architecture_comes_from_dino_and_dinov2_weight_files(tmp_path, layout, arch):
    """Files in the original releases' key layouts (random values): DINO v1 (timm's names, no LayerScale) and
    DINOv2 (LayerScale `ls1.gamma`, a `mask_token`, 518 px position embeddings)."""
    import timm

    from config import parse_config
    from methods import get_method
    from utils.errors import UserError
    source = timm.create_model(arch, pretrained=False, num_classes=0)
    state = {k: torch.randn_like(v) for k, v in source.state_dict().items()}
    if layout == "dinov2":
        state["mask_token"] = torch.zeros(1, source.embed_dim)
    path = str(tmp_path / f"{layout}.pth")
    torch.save({"model": state} if layout == "dino" else state, path)
    base = ["--dataset", "demo", "--class_name", "w", "--dataset_dir", "d", "--image_size", "112",
            "--backbone_weights", path, "--feature_layers", "12"]
    for method in ("patchguard", "casa"):
        cfg = parse_config(["--method", method, *base])
        assert cfg.method_options.model.backbone == arch
        model = get_method(method).build_model(cfg.method_options.model, path)
        loaded = model.feature_extractor.pretrained_model.state_dict()
        assert torch.equal(loaded["blocks.3.attn.qkv.weight"], state["blocks.3.attn.qkv.weight"])
    other = "vit_small_patch14_dinov2" if layout == "dino" else "vit_small_patch16_224"
    cfg = parse_config(["--backbone", other, *base])
    with pytest.raises(UserError, match=f"looks like {arch}: pass --backbone {arch}"):
        get_method("patchguard").build_model(cfg.method_options.model, path)
