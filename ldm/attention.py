"""The spatial transformer of Stable Diffusion's UNet: self-attention, cross-attention to the text, GEGLU MLP.

Module and attribute names equal the released checkpoints' keys (`attn1.to_q`, `ff.net.0.proj`, `proj_in`, ...),
so weights load with no renaming table.
"""

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint


class CrossAttention(nn.Module):
    """Multi-head attention of the image tokens to themselves (context=None) or to the text tokens."""

    def __init__(self, query_dim, context_dim=None, heads=8, dim_head=64, dropout=0.0):
        super().__init__()
        inner_dim = heads * dim_head
        context_dim = query_dim if context_dim is None else context_dim
        self.heads = heads
        self.to_q = nn.Linear(query_dim, inner_dim, bias=False)
        self.to_k = nn.Linear(context_dim, inner_dim, bias=False)
        self.to_v = nn.Linear(context_dim, inner_dim, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner_dim, query_dim), nn.Dropout(dropout))
        # more attention of the same queries to other tokens, added before the output projection: callables
        # q (B, heads, N, dim_head) -> a tensor of q's shape, or None (an IP-Adapter's image tokens)
        self.added_attention = []

    def forward(self, x, context=None):
        context = x if context is None else context
        b, n, _ = x.shape
        # (B, N, heads * dim_head) -> (B, heads, N, dim_head)
        q, k, v = (
            proj(src).unflatten(-1, (self.heads, -1)).transpose(1, 2)
            for proj, src in ((self.to_q, x), (self.to_k, context), (self.to_v, context))
        )
        out = F.scaled_dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(dim_head)) v
        for add in self.added_attention:
            added = add(q)
            out = out if added is None else out + added
        return self.to_out(out.transpose(1, 2).reshape(b, n, -1))


class GEGLU(nn.Module):
    def __init__(self, dim_in, dim_out):
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out * 2)

    def forward(self, x):
        x, gate = self.proj(x).chunk(2, dim=-1)
        return x * F.gelu(gate)


class FeedForward(nn.Module):
    def __init__(self, dim, mult=4, dropout=0.0):
        super().__init__()
        self.net = nn.Sequential(GEGLU(dim, dim * mult), nn.Dropout(dropout), nn.Linear(dim * mult, dim))

    def forward(self, x):
        return self.net(x)


class BasicTransformerBlock(nn.Module):
    def __init__(self, dim, n_heads, d_head, context_dim=None, dropout=0.0, disable_self_attn=False):
        super().__init__()
        # With disable_self_attn, attn1 attends to the text too (SD 2.x variants use it).
        self.disable_self_attn = disable_self_attn
        self.attn1 = CrossAttention(dim, context_dim if disable_self_attn else None, n_heads, d_head, dropout)
        self.ff = FeedForward(dim, dropout=dropout)
        self.attn2 = CrossAttention(dim, context_dim, n_heads, d_head, dropout)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim)

    def forward(self, x, context=None):
        x = self.attn1(self.norm1(x), context=context if self.disable_self_attn else None) + x
        x = self.attn2(self.norm2(x), context=context) + x
        return self.ff(self.norm3(x)) + x


def zero_module(module):
    """Zero a module's parameters: the block then starts as an identity on its residual path."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class SpatialTransformer(nn.Module):
    """Transformer over the H*W positions of a feature map, conditioned on `context` (B, T, context_dim)."""

    def __init__(self, in_channels, n_heads, d_head, depth=1, dropout=0.0, context_dim=None,
                 disable_self_attn=False, use_linear=False, use_checkpoint=False):
        super().__init__()
        inner_dim = n_heads * d_head
        self.use_linear = use_linear
        self.use_checkpoint = use_checkpoint
        self.norm = nn.GroupNorm(32, in_channels, eps=1e-6)
        # SD 1.x projects with 1x1 convs, SD 2.x with linears: the same maths, different weight shapes.
        if use_linear:
            self.proj_in = nn.Linear(in_channels, inner_dim)
            self.proj_out = zero_module(nn.Linear(inner_dim, in_channels))
        else:
            self.proj_in = nn.Conv2d(in_channels, inner_dim, 1)
            self.proj_out = zero_module(nn.Conv2d(inner_dim, in_channels, 1))
        self.transformer_blocks = nn.ModuleList(
            BasicTransformerBlock(inner_dim, n_heads, d_head, context_dim, dropout, disable_self_attn)
            for _ in range(depth)
        )

    def forward(self, x, context=None):
        if self.use_checkpoint and torch.is_grad_enabled():
            return checkpoint(self._forward, x, context, use_reentrant=False)
        return self._forward(x, context)

    def _forward(self, x, context):
        b, c, h, w = x.shape
        x_in = x
        x = self.norm(x)
        if not self.use_linear:
            x = self.proj_in(x)
        x = x.flatten(2).transpose(1, 2)  # (B, H*W, C)
        if self.use_linear:
            x = self.proj_in(x)
        for block in self.transformer_blocks:
            x = block(x, context=context)
        if self.use_linear:
            x = self.proj_out(x)
        # contiguous: a channels-last view would make every following conv reorder its weights
        x = x.transpose(1, 2).reshape(b, -1, h, w).contiguous()
        if not self.use_linear:
            x = self.proj_out(x)
        return x + x_in
