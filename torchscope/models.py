"""Small models bundled with torchscope for the demo and the tests."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["DecoderConfig", "DecoderOnly", "LeNet"]


class LeNet(nn.Module):
    """LeNet-5 for ``(N, in_channels, 28, 28)`` images (61,706 parameters with the defaults)."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 6, kernel_size=5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(6, 16, kernel_size=5),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(16 * 5 * 5, 120),
            nn.ReLU(),
            nn.Linear(120, 84),
            nn.ReLU(),
            nn.Linear(84, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


@dataclass(frozen=True)
class DecoderConfig:
    """Shape of a decoder-only language model. The defaults are a 6.7 B-parameter, Llama-7B-like model."""

    vocab_size: int = 32_000
    dim: int = 4096
    layers: int = 32
    heads: int = 32
    hidden: int = 11_008  # SwiGLU feed-forward width
    eps: float = 1e-5

    def parameter_count(self) -> int:
        """Analytic parameter count (embedding and output head untied)."""
        per_layer = 4 * self.dim * self.dim + 3 * self.dim * self.hidden + 2 * self.dim
        return 2 * self.vocab_size * self.dim + self.layers * per_layer + self.dim

    def forward_macs(self, tokens: int) -> int:
        """Analytic multiply-accumulates of one forward pass over ``tokens`` tokens (batch 1)."""
        projections = 4 * self.dim * self.dim + 3 * self.dim * self.hidden
        attention = 2 * tokens * tokens * self.dim  # scores and weighted sum over all heads
        return (
            self.layers * (tokens * projections + attention) + tokens * self.dim * self.vocab_size
        )


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class DecoderBlock(nn.Module):
    def __init__(self, config: DecoderConfig) -> None:
        super().__init__()
        self.heads = config.heads
        self.attention_norm = RMSNorm(config.dim, config.eps)
        self.qkv = nn.Linear(config.dim, 3 * config.dim, bias=False)
        self.out = nn.Linear(config.dim, config.dim, bias=False)
        self.ffn_norm = RMSNorm(config.dim, config.eps)
        self.gate = nn.Linear(config.dim, config.hidden, bias=False)
        self.up = nn.Linear(config.dim, config.hidden, bias=False)
        self.down = nn.Linear(config.hidden, config.dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, dim = x.shape
        q, k, v = self.qkv(self.attention_norm(x)).split(dim, dim=-1)
        q, k, v = (
            t.view(batch, length, self.heads, dim // self.heads).transpose(1, 2) for t in (q, k, v)
        )
        attended = nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.out(attended.transpose(1, 2).reshape(batch, length, dim))
        h = self.ffn_norm(x)
        return x + self.down(nn.functional.silu(self.gate(h)) * self.up(h))


class DecoderOnly(nn.Module):
    """A decoder-only transformer language model (pre-norm, SwiGLU, causal attention; no rotary
    embeddings: the shapes and costs are what matter here). Build it on ``meta`` to size
    large configurations without memory: ``with torch.device("meta"): DecoderOnly()``."""

    def __init__(self, config: DecoderConfig | None = None) -> None:
        super().__init__()
        config = config or DecoderConfig()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.dim)
        self.blocks = nn.ModuleList(DecoderBlock(config) for _ in range(config.layers))
        self.norm = RMSNorm(config.dim, config.eps)
        self.head = nn.Linear(config.dim, config.vocab_size, bias=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens)
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x))
