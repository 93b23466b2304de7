"""The ReID network: backbone + global head + 8-stripe local head (method.md section 1.2).

``forward(x) -> (g, l)``: ``g`` ``[B, global_dim]`` and ``l`` ``[B, num_stripes, local_dim]``, each
vector L2-normalised, in train and eval mode alike (the seed has no separate test neck).

``embed(x) -> [B, embedding_dim]`` is the serving embedding: the seed's combined global+local
feature written as one unit vector, ``e = [sqrt(w) g ; sqrt((1-w)/S) l_1 ; ... ; sqrt((1-w)/S) l_S]``
with ``w = ModelConfig.embed_global_weight`` (0.5 = the seed's lambda_g). Because g and every l_p
are unit vectors, ``||e|| = 1`` and ``||e - e'||^2 = w ||g-g'||^2 + (1-w) mean_p ||l_p-l'_p||^2``:
cosine search on ``e`` ranks exactly like the seed's training distance (section 1.4, without
the camera term), so a plain inner-product index serves it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from selfreid.reid_model.backbones import build_backbone
from selfreid.reid_model.config import ModelConfig

__all__ = ["ReIDModel", "build_model"]


def _embedding_layer(in_dim: int, out_dim: int, kaiming: bool) -> nn.Sequential:
    linear = nn.Linear(in_dim, out_dim)
    if kaiming:  # the global head's init in the seed; the stripes keep PyTorch's default
        nn.init.kaiming_normal_(linear.weight, mode="fan_out")
        nn.init.zeros_(linear.bias)
    bn = nn.BatchNorm1d(out_dim)
    nn.init.ones_(bn.weight)
    nn.init.zeros_(bn.bias)
    return nn.Sequential(linear, bn)


class ReIDModel(nn.Module):
    """Backbone feature map -> ``(g, l)``; see the module docstring."""

    embed_scale: torch.Tensor  # a buffer (set in __init__); declared so that type checkers see a Tensor

    def __init__(self, cfg: ModelConfig, backbone: nn.Module, channels: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.backbone = backbone
        self.global_head = _embedding_layer(channels, cfg.global_dim, kaiming=True)
        self.local_heads = nn.ModuleList(
            _embedding_layer(channels, cfg.local_dim, kaiming=False) for _ in range(cfg.num_stripes)
        )
        # Adaptive pooling to num_stripes rows: for a 16-row map and 8 stripes this is exactly the
        # seed's 2-row stripes; other heights are split as evenly as possible.
        self.stripe_pool = nn.AdaptiveAvgPool2d((cfg.num_stripes, 1))
        w = cfg.embed_global_weight
        scale = [math.sqrt(w)] * cfg.global_dim + [math.sqrt((1 - w) / cfg.num_stripes)] * (
            cfg.num_stripes * cfg.local_dim
        )
        self.register_buffer("embed_scale", torch.tensor(scale), persistent=False)

    @property
    def embedding_dim(self) -> int:
        """Width of :meth:`embed`'s output."""
        return self.cfg.global_dim + self.cfg.num_stripes * self.cfg.local_dim

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        fmap = self.backbone(x)
        g = self.global_head(fmap.mean(dim=(2, 3)))
        stripes = self.stripe_pool(fmap).flatten(2)  # [B, C, S]
        l = torch.stack([head(stripes[:, :, p]) for p, head in enumerate(self.local_heads)], dim=1)
        return F.normalize(g.float(), dim=1), F.normalize(l.float(), dim=2)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The serving embedding ``[B, embedding_dim]``, unit L2 norm (module docstring)."""
        g, l = self(x)
        return F.normalize(torch.cat([g, l.flatten(1)], dim=1) * self.embed_scale, dim=1)


def build_model(cfg: ModelConfig) -> ReIDModel:
    """The configured model with its pretrained backbone weights loaded (raises WeightsError)."""
    backbone, channels = build_backbone(cfg)
    return ReIDModel(cfg, backbone, channels)
