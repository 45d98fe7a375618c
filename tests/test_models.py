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
