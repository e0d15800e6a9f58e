"""CageViT reconstruction: CAM-guided token selection, minor-token fusion, Gated Linear SRA.

No official code exists (the paper describes the design in prose only), so every free choice
below is ours and documented:

- Guide: a *self-guided* weighted class activation on the stage's own input, no second network
  and no gradients at inference: CAM = 1x1 conv C->G (G guide classes), p = softmax(GAP(CAM)),
  A = ReLU(sum_c p_c CAM_c). It is a matvec plus a 1x1 conv: cheap and exportable.
- Selection: A is min-max normalised per image, with a 1e-3 positional tie-break (ReLU leaves
  exact ties that runtimes would break differently). One argsort of A (ONNX TopK with k=N) gives
  both the K major tokens (highest activation) and the minor rest; K = round(keep_ratio * N) is
  fixed per shape, so the graph is static. While training, major tokens are scaled by a
  straight-through factor (1 + a - a.detach()) so the guide receives gradient; at inference the
  factor is exactly 1 and is not exported.
- Fusion: M learned fusion queries attend (per head, softmax over minor tokens) to the minor
  tokens, giving M fusion tokens, plus a learned fusion (type) embedding.
- Position: a depthwise 3x3 conditional positional encoding on the map before selection (tokens
  are reordered by score, so a fixed table would need gathering; the CPE travels with the token).
- Gated Linear SRA: Q from all K+M tokens; K/V from the major tokens scattered back to the grid,
  masked-average-pooled to a P x P grid (PVTv2-li style: linear -> LN -> GELU), concatenated with
  the M fusion tokens; softmax attention over P^2 + M keys (linear in the token count); output
  gated per channel, out = W_o(sigmoid(W_g x) * attn).
- FFN: a plain MLP (no DW conv: tokens are not in grid order).
- Back to a map: processed major tokens go back to their positions; each minor token receives its
  own features plus a convex mix (softmax over fusion tokens) of the fusion tokens' updates. This
  lets the stage sit anywhere in a hierarchical backbone.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nas.arch import StageSpec
from nas.models.registry import Channels, Inner, PruningRule, register_mixer

GUIDE_CLASSES = 16
POOL_EPS = 1e-6
TIE_BREAK = 1e-3


def largest_divisor_at_most(n: int, limit: int) -> int:
    return max(d for d in range(1, min(n, limit) + 1) if n % d == 0)


class CAMGuide(nn.Module):
    """Weighted class activation: per-token score (B, N), no gradients needed at inference."""

    def __init__(self, dim: int, classes: int = GUIDE_CLASSES) -> None:
        super().__init__()
        self.cam = nn.Conv2d(dim, classes, 1)

    def forward(self, x: Tensor) -> Tensor:
        cam = self.cam(x)  # (B, G, H, W)
        weights = cam.mean((2, 3)).softmax(-1)  # p = softmax(class logits)
        activation = torch.relu((cam * weights[:, :, None, None]).sum(1)).flatten(1)  # (B, N)
        low, high = activation.amin(1, keepdim=True), activation.amax(1, keepdim=True)
        normalised = (activation - low) / (high - low + POOL_EPS)
        # ReLU leaves many exact ties at 0 and runtimes break ties differently; a tiny fixed
        # preference for earlier positions makes the selection identical in torch/ORT/OpenVINO.
        n = normalised.shape[1]
        return normalised + TIE_BREAK * torch.linspace(1.0, 0.0, n, device=x.device)


class TokenFusion(nn.Module):
    """Merge minor tokens into M fusion tokens with learned per-head queries."""

    def __init__(self, dim: int, tokens: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.queries = nn.Parameter(torch.randn(tokens, dim) * 0.02)
        self.embedding = nn.Parameter(torch.zeros(1, 1, dim))

    @property
    def scale(self) -> float:
        return (self.queries.shape[1] // self.heads) ** -0.5  # from the tensor: pruning shrinks head dims

    def logits(self, minor: Tensor) -> Tensor:
        """(B, h, M, Nm) similarity of each fusion query to each minor token."""
        b, n, c = minor.shape
        keys = minor.reshape(b, n, self.heads, -1).transpose(1, 2)  # (B, h, Nm, d)
        queries = self.queries.reshape(-1, self.heads, c // self.heads).transpose(0, 1)  # (h, M, d)
        return (queries @ keys.transpose(-1, -2)) * self.scale

    def forward(self, minor: Tensor, logits: Tensor) -> Tensor:
        b, n, c = minor.shape
        values = minor.reshape(b, n, self.heads, -1).transpose(1, 2)
        fused = logits.softmax(-1) @ values  # (B, h, M, d)
        return fused.transpose(1, 2).reshape(b, -1, c) + self.embedding


class GatedLinearSRA(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.gate = nn.Linear(dim, dim)
        self.reduce = nn.Sequential(nn.Linear(dim, dim), nn.LayerNorm(dim), nn.GELU())
        self.out = nn.Linear(dim, dim)

    @property
    def scale(self) -> float:
        return (self.q.out_features // self.heads) ** -0.5  # from the tensor: pruning shrinks head dims

    def forward(self, x: Tensor, num_major: int, grid: GridContext) -> Tensor:
        b, n, c = x.shape
        pooled = grid.pool(x[:, :num_major])  # (B, P*P, C)
        context = torch.cat([self.reduce(pooled), x[:, num_major:]], dim=1)  # + fusion tokens
        k, v = self.kv(context).reshape(b, -1, 2, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        q = self.q(x).reshape(b, n, self.heads, -1).transpose(1, 2)
        attn = ((q @ k.transpose(-1, -2)) * self.scale).softmax(-1) @ v  # (B, h, n, d)
        attn = attn.transpose(1, 2).reshape(b, n, c)
        return self.out(torch.sigmoid(self.gate(x)) * attn)


class GridContext:
    """Where the major tokens sit on the H x W grid, for masked spatial-reduction pooling."""

    def __init__(self, major_index: Tensor, height: int, width: int, pool_size: int) -> None:
        self.index = major_index  # (B, K)
        self.height, self.width = height, width
        self.kernel = (height // largest_divisor_at_most(height, pool_size),
                       width // largest_divisor_at_most(width, pool_size))
        mask = torch.zeros(major_index.shape[0], height * width, 1, dtype=torch.float32,
                           device=major_index.device)
        mask = mask.scatter(1, major_index.unsqueeze(-1), 1.0)
        self.mask_count = self._sum_pool(mask)  # (B, 1, P, P): major tokens per pooling cell

    def _sum_pool(self, tokens: Tensor) -> Tensor:
        grid = tokens.transpose(1, 2).reshape(tokens.shape[0], -1, self.height, self.width)
        return F.avg_pool2d(grid, self.kernel, self.kernel)

    def pool(self, major: Tensor) -> Tensor:
        b, _, c = major.shape
        index = self.index.unsqueeze(-1).expand(-1, -1, c)
        scattered = major.new_zeros(b, self.height * self.width, c).scatter(1, index, major)
        pooled = self._sum_pool(scattered) / (self.mask_count + POOL_EPS)
        return pooled.flatten(2).transpose(1, 2)


class GLSRABlock(nn.Module):
    """Pre-LN encoder block: x += GLSRA(LN(x)); x += MLP(LN(x))."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        hidden = round(dim * mlp_ratio)
        self.norm1 = nn.LayerNorm(dim)
        self.attn = GatedLinearSRA(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: Tensor, num_major: int, grid: GridContext) -> Tensor:
        x = x + self.attn(self.norm1(x), num_major, grid)
        return x + self.mlp(self.norm2(x))


def gather_tokens(tokens: Tensor, index: Tensor) -> Tensor:
    return torch.gather(tokens, 1, index.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))


class CageStage(nn.Module):
    """Select major tokens, fuse the minor ones, run `depth` GLSRA blocks, write back to the map."""

    def __init__(self, dim: int, depth: int, head_dim: int, keep_ratio: float, fusion_tokens: int,
                 pool_size: int, mlp_ratio: float) -> None:
        super().__init__()
        if dim % head_dim:
            raise ValueError(f"width {dim} is not divisible by head_dim {head_dim}")
        heads = dim // head_dim
        self.keep_ratio, self.fusion_tokens, self.pool_size = keep_ratio, fusion_tokens, pool_size
        self.pos = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.guide = CAMGuide(dim)
        self.fusion = TokenFusion(dim, fusion_tokens, heads)
        self.blocks = nn.ModuleList(GLSRABlock(dim, heads, mlp_ratio) for _ in range(depth))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.pos(x)
        b, c, h, w = (int(size) for size in x.shape)  # static shapes: K is fixed per resolution
        n = h * w
        num_major = min(n - 1, max(1, round(self.keep_ratio * n)))
        tokens = x.flatten(2).transpose(1, 2)  # (B, N, C)

        scores = self.guide(x)
        order = torch.argsort(scores, dim=1, descending=True)
        major_index, minor_index = order[:, :num_major], order[:, num_major:]
        major, minor = gather_tokens(tokens, major_index), gather_tokens(tokens, minor_index)
        if self.training:  # straight-through: value x1, gradient reaches the guide
            weight = torch.gather(scores, 1, major_index)
            major = major * (1 + weight - weight.detach()).unsqueeze(-1)

        fusion_logits = self.fusion.logits(minor)  # (B, h, M, Nm)
        fused = self.fusion(minor, fusion_logits)
        grid = GridContext(major_index, h, w, self.pool_size)
        sequence = torch.cat([major, fused], dim=1)
        for block in self.blocks:
            sequence = block(sequence, num_major, grid)

        major_out, fused_out = sequence[:, :num_major], sequence[:, num_major:]
        minor_out = minor + self._broadcast_back(fused_out - fused, fusion_logits)
        out = tokens.new_zeros(b, n, c).scatter(
            1, order.unsqueeze(-1).expand(-1, -1, c), torch.cat([major_out, minor_out], dim=1)
        )
        return out.transpose(1, 2).reshape(b, c, h, w)

    def _broadcast_back(self, update: Tensor, logits: Tensor) -> Tensor:
        """Each minor token gets a convex mix (softmax over fusion tokens) of the fusion updates."""
        b, m, c = update.shape
        heads = logits.shape[1]
        update = update.reshape(b, m, heads, -1).transpose(1, 2)  # (B, h, M, d)
        mixed = logits.transpose(-1, -2).softmax(-1) @ update  # (B, h, Nm, d)
        return mixed.transpose(1, 2).reshape(b, -1, c)


# Pruning: tokens are reshaped into heads in the fusion, attention and broadcast-back, and the
# selection/gathers/scatters move whole tokens, which torch-pruning's graph cannot follow; so the stage
# is one unit whose output is its input plus updates (coupled) and whose width is every layer below,
# pruned by the same amount in each head (channel groups = heads: heads stay, head dims shrink; the
# attention scales are read from the tensors). The MLP hidden channels of each block go too.
PRUNING = PruningRule(
    CageStage, coupled=True, channel_groups="fusion.heads",
    unit_out=(Channels("pos"), Channels("guide.cam", "in"), Channels("fusion.queries", 1),
              Channels("fusion.embedding", 2), Channels("blocks.*.norm?"),
              *(Channels(f"blocks.*.attn.{name}", side) for name in ("q", "gate", "reduce.0", "out")
                for side in ("out", "in")),
              Channels("blocks.*.attn.kv", "in"), Channels("blocks.*.attn.kv", "out", span=2),
              Channels("blocks.*.attn.reduce.1"), Channels("blocks.*.mlp.0", "in"), Channels("blocks.*.mlp.2")),
    inner=(Inner((Channels("0"), Channels("2", "in")), scope="blocks.*.mlp"),),
)
# Quantization: rules in nas/quant_rules.yaml (glsra: selection, softmaxes, divisions, the guide stay float).


@register_mixer("glsra", pruning=(PRUNING,))
def glsra_stage(spec: StageSpec) -> nn.Module:
    if spec.depth == 0:
        return nn.Identity()
    return CageStage(spec.width, spec.depth, spec.head_dim, spec.keep_ratio, spec.fusion_tokens, spec.pool_size,
                     spec.expand)
