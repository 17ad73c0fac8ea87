"""MobileVLM's lightweight downsample projector (LDP, Chu et al. 2023, mobilevlm/model/vision_projector.py):
a token-wise Linear(D_vis, D_txt) -> GELU -> Linear(D_txt, D_txt), then two MobileNetV3 inverted-residual blocks
on the token grid, the second with stride 2: 4x fewer tokens (24 x 24 -> 12 x 12 in MobileVLM).

Each block: 1x1 conv -> norm -> act, depthwise 3x3 conv (stride 1 or 2) -> norm -> act, squeeze-excite with a
hard-sigmoid gate, 1x1 conv -> norm; a residual where the stride is 1. Norms are LayerNorm over channels at each
place (MobileVLM's LayerNormAct2d). Same structure as MobileVLM's, not a weight-compatible port (no transformers
class exists to check one against).
"""
from __future__ import annotations

import math

import torch.nn.functional as F
from torch import nn

from .base import Projector, grid_side, register, tokens_to_grid


class LayerNorm2d(nn.LayerNorm):
    def forward(self, x):  # (B, C, h, w): LayerNorm over C at every place
        return F.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight, self.bias,
                            self.eps).permute(0, 3, 1, 2)


class InvertedResidual(nn.Module):
    def __init__(self, dim: int, stride: int):
        super().__init__()
        self.stride = stride
        self.conv_pw = nn.Conv2d(dim, dim, 1, bias=False)
        self.norm_1 = LayerNorm2d(dim)
        self.conv_dw = nn.Conv2d(dim, dim, 3, stride=stride, padding=1, groups=dim, bias=False)
        self.norm_2 = LayerNorm2d(dim)
        self.se_reduce = nn.Conv2d(dim, max(1, dim // 4), 1)
        self.se_expand = nn.Conv2d(max(1, dim // 4), dim, 1)
        self.conv_pwl = nn.Conv2d(dim, dim, 1, bias=False)
        self.norm_3 = LayerNorm2d(dim)
        self.act = nn.ReLU()

    def forward(self, x):  # (B, C, h, w)
        y = self.act(self.norm_1(self.conv_pw(x)))
        y = self.act(self.norm_2(self.conv_dw(y)))  # (B, C, h/s, w/s)
        gate = F.hardsigmoid(self.se_expand(self.act(self.se_reduce(y.mean((2, 3), keepdim=True)))))  # (B, C, 1, 1)
        y = self.norm_3(self.conv_pwl(y * gate))
        return x + y if self.stride == 1 else y


@register("ldp")
class LDPProjector(Projector):
    def __init__(self, in_dim: int, out_dim: int):
        super().__init__(in_dim, out_dim)
        self.linear_1 = nn.Linear(in_dim, out_dim)
        self.act = nn.GELU()
        self.linear_2 = nn.Linear(out_dim, out_dim)
        self.block_1 = InvertedResidual(out_dim, stride=1)
        self.block_2 = InvertedResidual(out_dim, stride=2)

    def num_output_tokens(self, num_input_tokens: int) -> int:
        return math.ceil(grid_side(num_input_tokens) / 2) ** 2  # 3x3 conv, padding 1, stride 2

    def forward(self, x):
        x = self.linear_2(self.act(self.linear_1(self.prepare(x))))  # (B, N, D_txt)
        grid, _, _ = tokens_to_grid(x, self.family)  # (B, D_txt, h, w)
        grid = self.block_2(self.block_1(grid))  # (B, D_txt, ceil(h/2), ceil(w/2))
        return grid.flatten(2).transpose(1, 2)  # (B, M, D_txt)
