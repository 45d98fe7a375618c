"""The PatchGuard discriminator: one logit per patch token.

Module and parameter names follow the official code so released checkpoints load with strict=True.
"""
import torch
import torch.nn as nn


class AttentionBlock(nn.Module):
    """Post-norm self-attention block followed by a pre-residual MLP (official layout)."""

    def __init__(self, embed_dim: int, hidden_dim: int, num_heads: int, dropout: float = 0.0):
        super().__init__()
        self.layer_norm_1 = nn.LayerNorm(embed_dim)
        self.attn = nn.MultiheadAttention(embed_dim, num_heads, dropout=dropout, batch_first=True)
        self.linear = nn.Sequential(
            nn.Linear(embed_dim, hidden_dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden_dim, embed_dim)
        )
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        attn_output, _ = self.attn(x, x, x, need_weights=False)
        x = self.layer_norm_1(x + self.dropout1(attn_output))
        return x + self.dropout2(self.linear(x))


class Discriminator(nn.Module):
    """Learnable positional encodings + transformer blocks + a linear head: (B, N, D) -> (B, N) logits."""

    def __init__(self, embed_dim: int, hidden_dim: int, num_patches: int, num_layers: int = 1,
                 num_heads: int = 4, dropout: float = 0.2):
        super().__init__()
        self.transformer_encoder = nn.Sequential(
            *[AttentionBlock(embed_dim, hidden_dim, num_heads, dropout) for _ in range(num_layers)]
        )
        self.output_layer = nn.Sequential(nn.Linear(embed_dim, 1))
        self.positional_encodings = nn.Parameter(torch.randn(num_patches, embed_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.positional_encodings.unsqueeze(0)
        x = self.transformer_encoder(x)
        return self.output_layer(x).squeeze(-1)
