"""Networks of the flow-matching policy.

- :class:`ImageEncoder`: a small conv net with a spatial-softmax head (keypoint coordinates,
  as in Levine et al. 2016 and Diffusion Policy) applied to every observation frame.
- :class:`ObservationEncoder`: frames + normalised EE xy -> one conditioning vector.
- :class:`VelocityUNet1D`: a 1-D temporal conv UNet over the action chunk whose residual blocks
  are FiLM-modulated by the observation and flow-time embeddings (Chi et al., Diffusion Policy);
  it predicts the rectified-flow velocity.
- :class:`FlowPolicyNet`: both together.

Inference path of the sampler (:meth:`VelocityUNet1D.film_table` +
:meth:`VelocityUNet1D.forward_film`): the same function as :meth:`VelocityUNet1D.forward`
(equal to float rounding) for a batch of chunks that share one observation and one flow time,
which is what every Euler step of :func:`~genpolicy_ros.policy.flow.sample_chunks` evaluates.
"""

import math
from typing import List

import torch
from torch import nn
import torch.nn.functional as F

from genpolicy_ros.policy.config import PolicyConfig


class SpatialSoftmax(nn.Module):
    """Expected (x, y) image coordinates of ``n_keypoints`` learned feature maps."""

    def __init__(self, in_channels: int, height: int, width: int, n_keypoints: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels, n_keypoints, kernel_size=1)
        ys, xs = torch.meshgrid(torch.linspace(-1.0, 1.0, height),
                                torch.linspace(-1.0, 1.0, width), indexing='ij')
        self.register_buffer('pos', torch.stack([xs.reshape(-1), ys.reshape(-1)], dim=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map features (B, C, H, W) to keypoints (B, 2 * n_keypoints)."""
        att = torch.softmax(self.proj(x).flatten(2), dim=-1)  # (B, K, H*W)
        return (att @ self.pos).flatten(1)


class ImageEncoder(nn.Module):
    """Conv stack (GroupNorm + ReLU) -> spatial softmax -> linear feature."""

    def __init__(self, cfg: PolicyConfig) -> None:
        super().__init__()
        layers: List[nn.Module] = []
        in_ch, size = 3, cfg.image_size_px
        for i, (ch, stride) in enumerate(zip(cfg.encoder_channels, cfg.encoder_strides)):
            k = 5 if i == 0 else 3
            # ReLU, not Mish: on CPU Mish over 48x48 maps tripled the encoder's training time.
            layers += [nn.Conv2d(in_ch, ch, k, stride=stride, padding=k // 2),
                       nn.GroupNorm(min(8, ch), ch), nn.ReLU(inplace=True)]
            in_ch = ch
            size = (size + 2 * (k // 2) - k) // stride + 1
        self.conv = nn.Sequential(*layers)
        self.keypoints = SpatialSoftmax(in_ch, size, size, cfg.spatial_keypoints)
        self.out = nn.Linear(2 * cfg.spatial_keypoints, cfg.image_feature_dim)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Map float images (B, 3, H, W) in [-1, 1] to features (B, image_feature_dim)."""
        return self.out(self.keypoints(self.conv(images)))


class ObservationEncoder(nn.Module):
    """Encode ``n_obs_steps`` frames (shared encoder) and the normalised low-dim input.

    The low-dim input is the EE xy, followed by the goal xy relative to it when the config
    has ``goal_dim`` 2 (:attr:`PolicyConfig.low_dim` numbers in all).
    """

    def __init__(self, cfg: PolicyConfig) -> None:
        super().__init__()
        self.n_obs = cfg.n_obs_steps
        self.image = ImageEncoder(cfg)
        width = cfg.n_obs_steps * cfg.image_feature_dim + cfg.low_dim
        self.mlp = nn.Sequential(nn.Linear(width, cfg.obs_cond_dim), nn.Mish(),
                                 nn.Linear(cfg.obs_cond_dim, cfg.obs_cond_dim))

    def forward(self, images: torch.Tensor, proprio: torch.Tensor) -> torch.Tensor:
        """Images (B, n_obs, 3, H, W) float in [-1, 1], proprio (B, low_dim) normalised."""
        b = images.shape[0]
        feats = self.image(images.flatten(0, 1)).reshape(b, -1)
        return self.mlp(torch.cat([feats, proprio], dim=-1))


class SinusoidalEmbedding(nn.Module):
    """Sinusoidal embedding of the flow time t in [0, 1]."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        half = dim // 2
        # t is scaled by 1000 so that [0, 1] spans the frequencies as diffusion timesteps do.
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half) / max(half - 1, 1))
        self.register_buffer('freqs', 1000.0 * freqs)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        """Map (B,) times to (B, dim)."""
        arg = t[:, None] * self.freqs[None]
        return torch.cat([arg.sin(), arg.cos()], dim=-1)


class Conv1dBlock(nn.Module):
    """Conv1d -> GroupNorm -> Mish."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, groups: int) -> None:
        super().__init__()
        self.block = nn.Sequential(nn.Conv1d(in_ch, out_ch, kernel, padding=kernel // 2),
                                   nn.GroupNorm(groups, out_ch), nn.Mish())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the block to (B, C, T)."""
        return self.block(x)


class FiLMResBlock1D(nn.Module):
    """Two conv blocks; the first is FiLM-modulated (per-channel scale and bias)."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, groups: int) -> None:
        super().__init__()
        self.out_ch = out_ch
        self.block1 = Conv1dBlock(in_ch, out_ch, kernel, groups)
        self.block2 = Conv1dBlock(out_ch, out_ch, kernel, groups)
        self.skip = nn.Conv1d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor, film: torch.Tensor) -> torch.Tensor:
        """Apply to x (B, C, T) with FiLM parameters (B, 2 * out_ch): scale then bias."""
        film = film.unsqueeze(-1)
        h = self.block1(x) * (1.0 + film[:, :self.out_ch]) + film[:, self.out_ch:]
        return self.block2(h) + self.skip(x)


class VelocityUNet1D(nn.Module):
    """Temporal UNet: predicts the velocity (B, H, A) of the flow at (x_t, t, obs).

    One linear layer computes the FiLM parameters of every residual block at once (the
    conditioning is shared): at a batch of one the per-op overhead dominates on CPU, and this
    removes two ops per block.
    """

    def __init__(self, cfg: PolicyConfig) -> None:
        super().__init__()
        k, g = cfg.unet_kernel_size, cfg.unet_groups
        self.time_embed = nn.Sequential(
            SinusoidalEmbedding(cfg.time_embed_dim),
            nn.Linear(cfg.time_embed_dim, 4 * cfg.time_embed_dim), nn.Mish(),
            nn.Linear(4 * cfg.time_embed_dim, cfg.time_embed_dim))
        cond = cfg.time_embed_dim + cfg.obs_cond_dim
        dims = [cfg.action_dim] + list(cfg.unet_channels)
        pairs = list(zip(dims[:-1], dims[1:]))
        self.down = nn.ModuleList()
        for i, (cin, cout) in enumerate(pairs):
            last = i == len(pairs) - 1
            self.down.append(nn.ModuleList([
                FiLMResBlock1D(cin, cout, k, g), FiLMResBlock1D(cout, cout, k, g),
                nn.Conv1d(cout, cout, 3, stride=2, padding=1) if not last else nn.Identity()]))
        mid = dims[-1]
        self.mid = nn.ModuleList([FiLMResBlock1D(mid, mid, k, g),
                                  FiLMResBlock1D(mid, mid, k, g)])
        self.up = nn.ModuleList()
        for cin, cout in reversed(pairs[1:]):
            self.up.append(nn.ModuleList([
                FiLMResBlock1D(2 * cout, cin, k, g), FiLMResBlock1D(cin, cin, k, g),
                nn.ConvTranspose1d(cin, cin, 4, stride=2, padding=1)]))
        start = dims[1]
        self.final = nn.Sequential(Conv1dBlock(start, start, k, g),
                                   nn.Conv1d(start, cfg.action_dim, 1))
        self.blocks = [m for m in self.modules() if isinstance(m, FiLMResBlock1D)]
        self.film_sizes = [2 * b.out_ch for b in self.blocks]
        self.film = nn.Sequential(nn.Mish(), nn.Linear(cond, sum(self.film_sizes)))
        # film_table adds 1 to the scale entries (the forward's "1 + scale") in one op; not
        # persistent, so checkpoints are unchanged.
        self.film_halves = [b.out_ch for b in self.blocks for _ in range(2)]
        offset = [v for b in self.blocks for v in (1.0,) * b.out_ch + (0.0,) * b.out_ch]
        self.register_buffer('film_offset', torch.tensor(offset), persistent=False)

    def forward(self, x: torch.Tensor, t: torch.Tensor, obs_cond: torch.Tensor) -> torch.Tensor:
        """Return v(x, t | obs) for x (B, H, A), t (B,), obs_cond (B, obs_cond_dim)."""
        films = iter(self.film(torch.cat([self.time_embed(t), obs_cond], dim=-1))
                     .split(self.film_sizes, dim=1))
        # self.modules() order (used for film_sizes) is down, mid, up: the order of use.
        h = x.transpose(1, 2)
        skips = []
        for res1, res2, down in self.down:
            h = res2(res1(h, next(films)), next(films))
            skips.append(h)
            h = down(h)
        for res in self.mid:
            h = res(h, next(films))
        for res1, res2, up in self.up:
            h = torch.cat([h, skips.pop()], dim=1)
            h = up(res2(res1(h, next(films)), next(films)))
        return self.final(h).transpose(1, 2)

    def film_table(self, t: torch.Tensor, obs_cond: torch.Tensor) -> torch.Tensor:
        """Return the FiLM rows (K, F) of flow times t (K,) for one ``obs_cond`` (1, C).

        Row k holds every residual block's (1 + scale, bias) at t[k]; it depends on neither
        the chunk nor the sample, so the sampler computes it once per call for all steps.
        """
        cond = torch.cat([self.time_embed(t), obs_cond.expand(t.shape[0], -1)], dim=-1)
        return self.film(cond) + self.film_offset

    def forward_film(self, x: torch.Tensor, film: torch.Tensor) -> torch.Tensor:
        """Return v (B, H, A) for chunks x (B, H, A) sharing one row (F,) of :meth:`film_table`.

        Equal to :meth:`forward` to float rounding, but activations stay time-major
        (B, T, C): each Conv1d is then one GEMM over im2col columns (at T <= 16 the mkldnn
        conv1d costs several times its arithmetic, mostly in per-call weight reorders) and
        the output needs no transpose. Inference only (not meant for autograd).
        """
        films = film.split(self.film_halves)
        i = 0
        h, skips = x, []
        for res1, res2, down in self.down:
            h = _res_block_btc(res1, h, films[i], films[i + 1])
            h = _res_block_btc(res2, h, films[i + 2], films[i + 3])
            i += 4
            skips.append(h)
            if not isinstance(down, nn.Identity):
                h = _conv1d_btc(h, down)
        for res in self.mid:
            h = _res_block_btc(res, h, films[i], films[i + 1])
            i += 2
        for res1, res2, up in self.up:
            h = torch.cat([h, skips.pop()], dim=2)
            h = _res_block_btc(res1, h, films[i], films[i + 1])
            h = _res_block_btc(res2, h, films[i + 2], films[i + 3])
            i += 4
            h = _conv_transpose1d_btc(h, up)
        block, out = self.final
        return _conv1d_btc(_conv_block_btc(block, h), out)


# Time-major (B, T, C) building blocks of VelocityUNet1D.forward_film. They read the weights
# from the modules on every call, so load_state_dict (RL fine-tuning) and .to() are always seen.
def _conv1d_btc(x: torch.Tensor, conv: nn.Conv1d) -> torch.Tensor:
    """Apply ``conv`` (dilation 1, one group, zero padding) to (B, T, C) -> (B, T', O)."""
    b, t, c = x.shape
    weight = conv.weight
    k, stride, pad = weight.shape[2], conv.stride[0], conv.padding[0]
    if k == 1 and stride == 1 and pad == 0:
        cols = x.reshape(b * t, c)
    else:
        cols = F.pad(x, (0, 0, pad, pad)).unfold(1, k, stride)  # (B, T', C, k)
        t = cols.shape[1]
        cols = cols.reshape(b * t, c * k)  # (C, k) order: that of weight.flatten(1)
    return F.linear(cols, weight.flatten(1), conv.bias).view(b, t, -1)


def _conv_transpose1d_btc(x: torch.Tensor, conv: nn.ConvTranspose1d) -> torch.Tensor:
    """Apply ``conv`` (no output padding, dilation 1, one group) to (B, T, C) -> (B, T', O).

    One GEMM gives every input step's contribution to its k output steps; an overlap-add at
    the stride places them (the col2im of a transposed convolution).
    """
    b, t, c = x.shape
    weight = conv.weight  # (C, O, k)
    o, k = weight.shape[1], weight.shape[2]
    stride, pad = conv.stride[0], conv.padding[0]
    y = (x.reshape(b * t, c) @ weight.reshape(c, o * k)).view(b, t, o, k)
    full = x.new_zeros((b, (t - 1) * stride + k, o))
    for j in range(k):
        full[:, j:j + (t - 1) * stride + 1:stride] += y[..., j]
    out = full[:, pad:full.shape[1] - pad]
    return out + conv.bias if conv.bias is not None else out


def _conv_block_btc(block: 'Conv1dBlock', x: torch.Tensor) -> torch.Tensor:
    """Conv1dBlock on (B, T, C); GroupNorm runs natively on the channels-last view."""
    conv, norm, _ = block.block
    h = _conv1d_btc(x, conv).transpose(1, 2).unsqueeze(2)  # (B, O, 1, T), channels-last
    h = torch.group_norm(h, norm.num_groups, norm.weight, norm.bias, norm.eps)
    return F.mish(h.squeeze(2).transpose(1, 2), inplace=True)


def _res_block_btc(block: 'FiLMResBlock1D', x: torch.Tensor, scale: torch.Tensor,
                   bias: torch.Tensor) -> torch.Tensor:
    """FiLMResBlock1D on (B, T, C) with FiLM ``scale`` (already 1 + scale) and ``bias`` (O,)."""
    h = _conv_block_btc(block.block2, torch.addcmul(bias, _conv_block_btc(block.block1, x),
                                                    scale))
    skip = block.skip
    return h.add_(x if isinstance(skip, nn.Identity) else _conv1d_btc(x, skip))


class FlowPolicyNet(nn.Module):
    """Observation encoder + velocity field; the whole trainable policy."""

    def __init__(self, cfg: PolicyConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.obs_encoder = ObservationEncoder(cfg)
        self.velocity = VelocityUNet1D(cfg)

    def encode(self, images: torch.Tensor, proprio: torch.Tensor) -> torch.Tensor:
        """Return the observation conditioning (B, obs_cond_dim)."""
        return self.obs_encoder(images, proprio)

    def forward(self, x: torch.Tensor, t: torch.Tensor, obs_cond: torch.Tensor) -> torch.Tensor:
        """Return the predicted velocity for (B, H, A) chunks."""
        return self.velocity(x, t, obs_cond)


def images_to_tensor(images: torch.Tensor) -> torch.Tensor:
    """Convert uint8 (..., H, W, 3) frames to float (..., 3, H, W) in [-1, 1]."""
    x = images.to(torch.float32).mul_(2.0 / 255.0).sub_(1.0)
    return x.movedim(-1, -3).contiguous()


def random_shift(images: torch.Tensor, pad: int, generator: torch.Generator) -> torch.Tensor:
    """Random-shift augmentation (DrQ): replicate-pad by ``pad`` and crop back, per sample.

    ``images`` is float (B, n_obs, 3, H, W); all frames of one sample share the shift so the
    motion between frames is kept.
    """
    if pad <= 0:
        return images
    b, n, c, h, w = images.shape
    padded = F.pad(images.reshape(b, n * c, h, w), (pad, pad, pad, pad), mode='replicate')
    offsets = torch.randint(0, 2 * pad + 1, (b, 2), generator=generator)
    out = torch.empty_like(images.reshape(b, n * c, h, w))
    for i in range(b):
        dy, dx = int(offsets[i, 0]), int(offsets[i, 1])
        out[i] = padded[i, :, dy:dy + h, dx:dx + w]
    return out.reshape(b, n, c, h, w)


def count_parameters(module: nn.Module) -> int:
    """Return the number of trainable parameters."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
