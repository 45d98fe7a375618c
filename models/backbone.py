"""ViT backbone wrapper: patch features from chosen blocks and, on request, their attention maps.

Images enter in [0, 1]; ImageNet normalisation happens here so attacks work in pixel space.
Attention maps come from forward hooks on `attn_drop`, with timm's fused kernel switched off only on the
hooked blocks and only while recording, so attacks and evaluation keep the fast path.
"""
import contextlib
import logging
import os
import socket
from typing import Iterator, List, Optional, Sequence

import timm
import torch
import torch.nn as nn

from utils.errors import UserError

log = logging.getLogger("patchguard")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def create_vit(name: str, image_size: int, patch_size: Optional[int] = None, weights: Optional[str] = None) -> nn.Module:
    """Build a timm ViT at `image_size`, randomly initialised (official) unless `weights` is given.

    `weights`: None (random init), a local .pth/.pt/.safetensors file, or "hub" for timm's pretrained download.
    """
    kwargs = dict(num_classes=0, img_size=image_size)
    if patch_size:
        kwargs["patch_size"] = patch_size
    if not timm.is_model(name.split(".")[0]):
        raise UserError(f"unknown backbone '{name}': expected a timm model name such as vit_small_patch14_dinov2")
    if weights == "hub":
        _require_network(name)
        return timm.create_model(name, pretrained=True, **kwargs)
    try:
        model = timm.create_model(name, pretrained=False, **kwargs)
    except (TypeError, AssertionError, ValueError) as e:
        raise UserError(f"cannot build backbone '{name}' at image size {image_size}: {e}") from None
    if not hasattr(model, "blocks") or not hasattr(model, "forward_intermediates"):
        raise UserError(f"backbone '{name}' is not a ViT with blocks; expected a timm VisionTransformer")
    if weights:
        load_backbone_weights(model, weights)
    return model


def _require_network(name: str, host: str = "huggingface.co", timeout: float = 3.0) -> None:
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
    except OSError:
        raise UserError(
            f"cannot reach {host} to download pretrained '{name}'; download its weights elsewhere and pass "
            f"--backbone_weights /path/to/model.safetensors (or .pth)"
        ) from None


DEFAULT_BACKBONE = "vit_small_patch14_dinov2"  # the official architecture
WIDTHS = {384: "small", 768: "base", 1024: "large", 1536: "giant"}


def read_weights(path: str) -> dict:
    """A local timm / DINO / DINOv2 state dict, wrappers ("state_dict", "model", "module.") removed."""
    if not os.path.isfile(path):
        raise UserError(f"backbone weights file not found: {path}")
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file
            state = load_file(path)
        else:
            try:  # memory-mapped: reading the keys to infer the architecture costs no full read
                state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError:  # a legacy (non-zip) file cannot be mapped
                state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt or foreign file
        raise UserError(f"cannot read backbone weights {path}: {e}") from None
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    if not isinstance(state, dict):
        raise UserError(f"backbone weights {path} hold no state dict")
    return {k.removeprefix("module.").removeprefix("feature_extractor.pretrained_model."): v for k, v in state.items()}


def architecture_of(state: dict) -> Optional[str]:
    """The timm ViT a DINO (v1) or DINOv2 state dict fits, from its patch size, width, LayerScale and register
    keys (None when it is not one of those)."""
    proj = state.get("patch_embed.proj.weight")
    if proj is None or proj.dim() != 4 or int(proj.shape[0]) not in WIDTHS:
        return None
    size, patch = WIDTHS[int(proj.shape[0])], int(proj.shape[-1])
    if any(".ls1." in k for k in state):  # LayerScale: DINOv2
        registers = "register_tokens" in state or "reg_token" in state
        name = f"vit_{size}_patch{patch}_{'reg4_' if registers else ''}dinov2"
    else:
        name = f"vit_{size}_patch{patch}_224"
    return name if timm.is_model(name) else None


def backbone_for(given: Optional[str], weights: Optional[str]) -> str:
    """--backbone as given; else the architecture of --backbone_weights (DINO or DINOv2 layout); else the default."""
    if given:
        return given
    if weights and weights != "hub":
        return architecture_of(read_weights(weights)) or DEFAULT_BACKBONE
    return DEFAULT_BACKBONE


def load_backbone_weights(model: nn.Module, path: str) -> None:
    """Load a local timm/DINO/DINOv2 state dict into `model`, resampling position embeddings when sizes differ."""
    state = read_weights(path)
    inferred = architecture_of(state)
    from timm.models.vision_transformer import checkpoint_filter_fn
    state = checkpoint_filter_fn(state, model)
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith(("head", "fc_norm"))]
    if missing or unexpected:
        hint = f"; the file looks like {inferred}: pass --backbone {inferred}" if inferred else ""
        raise UserError(
            f"backbone weights {path} do not fit this architecture: {len(missing)} missing keys "
            f"(e.g. {missing[:2]}), {len(unexpected)} unexpected (e.g. {unexpected[:2]}){hint}"
        )
    log.info("backbone weights %s loaded%s", path, f" (a {inferred} state dict)" if inferred else "")


class FeatureExtractor(nn.Module):
    """Patch features (B, N, D * len(feature_layers)) from a timm ViT; layer ids are 1-based as in the paper."""

    def __init__(self, backbone: str, image_size: int, feature_layers: Sequence[int], reg_layers: Sequence[int],
                 patch_size: Optional[int] = None, weights: Optional[str] = None):
        super().__init__()
        self.pretrained_model = create_vit(backbone, image_size, patch_size, weights)
        vit = self.pretrained_model
        depth = len(vit.blocks)
        for layer in list(feature_layers) + list(reg_layers):
            if not 1 <= layer <= depth:
                raise UserError(f"layer {layer} is out of range for {backbone}: expected 1..{depth}")
        self.feature_indices = [layer - 1 for layer in feature_layers]
        self.reg_indices = [layer - 1 for layer in reg_layers]
        self.num_prefix_tokens = vit.num_prefix_tokens
        self.patch_size = vit.patch_embed.patch_size[0]
        if image_size % self.patch_size:
            raise UserError(f"image size {image_size} is not a multiple of {backbone}'s patch size {self.patch_size}; "
                            f"use e.g. --image_size {image_size // self.patch_size * self.patch_size}")
        self.grid_size = tuple(vit.patch_embed.grid_size)
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.embed_dim = len(self.feature_indices) * vit.embed_dim
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.normalize(images)
        feats = self.pretrained_model.forward_intermediates(
            x, indices=self.feature_indices, norm=True, output_fmt="NLC", intermediates_only=True, stop_early=True
        )  # list of (B, N, D), prefix tokens dropped
        return feats[0] if len(feats) == 1 else torch.cat(feats, dim=-1)

    @contextlib.contextmanager
    def record_attention(self, indices: Optional[Sequence[int]] = None, patches_only: bool = True
                         ) -> Iterator[List[torch.Tensor]]:
        """While active, each forward appends the attention maps (B, heads, T, T) of the blocks `indices`
        (0-based; default the reg layers) to the list; `patches_only` keeps the patch-to-patch part (B, heads, N, N)."""
        maps: List[torch.Tensor] = []
        p = self.num_prefix_tokens if patches_only else 0
        handles, saved = [], []
        for i in self.reg_indices if indices is None else indices:
            attn = self.pretrained_model.blocks[i].attn
            saved.append((attn, attn.fused_attn))
            attn.fused_attn = False
            handles.append(attn.attn_drop.register_forward_hook(lambda m, inp, out: maps.append(out[:, :, p:, p:])))
        try:
            yield maps
        finally:
            for h in handles:
                h.remove()
            for attn, fused in saved:
                attn.fused_attn = fused

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        return (images - self.mean) / self.std

    @property
    def depth(self) -> int:
        return len(self.pretrained_model.blocks)
