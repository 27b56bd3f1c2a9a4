"""Noise-prediction networks over an action chunk (B, T, A), conditioned on the diffusion step and
the observation features.

- `ConditionalUnet1D`: Chi et al.'s temporal U-Net; FiLM (per-channel scale and bias) from the step
  embedding plus the flattened observation features in every residual block; Mish, GroupNorm.
- `TransformerDenoiser`: Chi et al.'s time-series transformer; action tokens (causal self-attention)
  cross-attend to [step token, one token per observation step].
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from .config import PolicyConfig


class SinusoidalPosEmb(nn.Module):
    """Transformer-style sinusoidal embedding of the (integer) diffusion step."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        if dim < 4 or dim % 2:
            raise ValueError(f'step embedding dim must be even and >= 4, got {dim}')
        half = dim // 2
        self.register_buffer('frequencies', torch.exp(torch.arange(half) * -(math.log(10000) / (half - 1))),
                             persistent=False)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        angles = t.float()[:, None] * self.frequencies[None, :]
        return torch.cat((angles.sin(), angles.cos()), dim=-1)


def _timestep_batch(timestep: torch.Tensor | int, batch: int, device: torch.device) -> torch.Tensor:
    """Accept an int, a 0-d tensor or a (B,) tensor."""
    t = torch.as_tensor(timestep, device=device)
    if t.dim() == 0:
        return t.expand(batch)
    if t.shape != (batch,):
        raise ValueError(f'timestep must be an int or shape ({batch},), got shape {tuple(t.shape)}')
    return t


class Conv1dBlock(nn.Module):
    """Conv1d -> GroupNorm -> Mish."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, n_groups: int) -> None:
        super().__init__()
        if out_channels % n_groups:
            raise ValueError(f'channels {out_channels} are not divisible by n_groups {n_groups}')
        self.block = nn.Sequential(nn.Conv1d(in_channels, out_channels, kernel_size, padding=kernel_size // 2),
                                   nn.GroupNorm(n_groups, out_channels), nn.Mish())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


class ConditionalResidualBlock1D(nn.Module):
    """Two conv blocks with FiLM (scale, bias from the condition) in between, plus a residual."""

    def __init__(self, in_channels: int, out_channels: int, cond_dim: int, kernel_size: int, n_groups: int) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([Conv1dBlock(in_channels, out_channels, kernel_size, n_groups),
                                     Conv1dBlock(out_channels, out_channels, kernel_size, n_groups)])
        self.out_channels = out_channels
        self.cond_encoder = nn.Sequential(nn.Mish(), nn.Linear(cond_dim, 2 * out_channels))
        self.residual_conv = (nn.Conv1d(in_channels, out_channels, 1) if in_channels != out_channels
                              else nn.Identity())

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        out = self.blocks[0](x)
        scale, bias = self.cond_encoder(cond).unsqueeze(-1).chunk(2, dim=1)
        out = self.blocks[1](scale * out + bias)
        return out + self.residual_conv(x)


class ConditionalUnet1D(nn.Module):
    """1D temporal U-Net over (B, T, A) with a global condition (B, G).

    T must be divisible by 2 ** (len(down_dims) - 1) (each level but the last halves it).
    """

    cond_layout = 'flat'

    def __init__(self, action_dim: int, global_cond_dim: int, down_dims: tuple[int, ...] = (256, 512, 1024),
                 kernel_size: int = 5, n_groups: int = 8, diffusion_step_embed_dim: int = 128) -> None:
        super().__init__()
        if not down_dims:
            raise ValueError('down_dims must have at least one level')
        self.action_dim = action_dim
        self.global_cond_dim = global_cond_dim
        self.time_divisor = 2 ** (len(down_dims) - 1)
        step_dim = diffusion_step_embed_dim
        self.diffusion_step_encoder = nn.Sequential(SinusoidalPosEmb(step_dim), nn.Linear(step_dim, 4 * step_dim),
                                                    nn.Mish(), nn.Linear(4 * step_dim, step_dim))
        cond_dim = step_dim + global_cond_dim
        dims = [action_dim, *down_dims]
        in_out = list(zip(dims[:-1], dims[1:]))

        def block(c_in: int, c_out: int) -> ConditionalResidualBlock1D:
            return ConditionalResidualBlock1D(c_in, c_out, cond_dim, kernel_size, n_groups)

        self.down_modules = nn.ModuleList()
        for i, (c_in, c_out) in enumerate(in_out):
            last = i == len(in_out) - 1
            self.down_modules.append(nn.ModuleList([
                block(c_in, c_out), block(c_out, c_out),
                nn.Conv1d(c_out, c_out, 3, 2, 1) if not last else nn.Identity()]))
        mid = dims[-1]
        self.mid_modules = nn.ModuleList([block(mid, mid), block(mid, mid)])
        self.up_modules = nn.ModuleList()
        for c_in, c_out in reversed(in_out[1:]):
            self.up_modules.append(nn.ModuleList([
                block(2 * c_out, c_in), block(c_in, c_in), nn.ConvTranspose1d(c_in, c_in, 4, 2, 1)]))
        self.final_conv = nn.Sequential(Conv1dBlock(down_dims[0], down_dims[0], kernel_size, n_groups),
                                        nn.Conv1d(down_dims[0], action_dim, 1))

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor | int,
                global_cond: torch.Tensor | None = None) -> torch.Tensor:
        if sample.dim() != 3 or sample.shape[-1] != self.action_dim:
            raise ValueError(f'sample must be (B, T, {self.action_dim}), got {tuple(sample.shape)}')
        if sample.shape[1] % self.time_divisor:
            raise ValueError(f'horizon {sample.shape[1]} must be divisible by {self.time_divisor} '
                             f'(2 ** (len(down_dims) - 1)) for this U-Net')
        batch = sample.shape[0]
        cond = self.diffusion_step_encoder(_timestep_batch(timestep, batch, sample.device))
        if self.global_cond_dim:
            if global_cond is None or tuple(global_cond.shape) != (batch, self.global_cond_dim):
                found = None if global_cond is None else tuple(global_cond.shape)
                raise ValueError(f'global_cond must be ({batch}, {self.global_cond_dim}), got {found}')
            cond = torch.cat([cond, global_cond], dim=-1)
        x = sample.transpose(1, 2)  # (B, A, T): convolve over time
        skips = []
        for block1, block2, downsample in self.down_modules:
            x = block2(block1(x, cond), cond)
            skips.append(x)
            x = downsample(x)
        for block in self.mid_modules:
            x = block(x, cond)
        for block1, block2, upsample in self.up_modules:
            x = torch.cat((x, skips.pop()), dim=1)
            x = upsample(block2(block1(x, cond), cond))
        return self.final_conv(x).transpose(1, 2)


class TransformerDenoiser(nn.Module):
    """Decoder-only-style transformer: action tokens attend (causally) to themselves and to the
    condition tokens [diffusion step, obs_1 ... obs_To]; action token i sees observations up to i + 1
    (Chi et al.'s memory mask), so early actions cannot peek at later frames.
    """

    cond_layout = 'sequence'

    def __init__(self, action_dim: int, cond_dim: int, horizon: int, n_obs_steps: int, n_layer: int = 8,
                 n_head: int = 4, n_emb: int = 256, p_drop: float = 0.3, p_drop_emb: float = 0.0,
                 causal_attn: bool = True, n_cond_layers: int = 0) -> None:
        super().__init__()
        if n_emb % n_head:
            raise ValueError(f'n_emb {n_emb} must be divisible by n_head {n_head}')
        self.action_dim, self.cond_dim = action_dim, cond_dim
        self.horizon, self.n_obs_steps = horizon, n_obs_steps
        self.input_emb = nn.Linear(action_dim, n_emb)
        self.pos_emb = nn.Parameter(torch.zeros(1, horizon, n_emb))
        self.time_emb = SinusoidalPosEmb(n_emb)
        self.cond_obs_emb = nn.Linear(cond_dim, n_emb)
        self.cond_pos_emb = nn.Parameter(torch.zeros(1, 1 + n_obs_steps, n_emb))
        self.drop = nn.Dropout(p_drop_emb)
        layer_args = dict(d_model=n_emb, nhead=n_head, dim_feedforward=4 * n_emb, dropout=p_drop,
                          activation='gelu', batch_first=True, norm_first=True)
        if n_cond_layers > 0:
            self.cond_encoder: nn.Module = nn.TransformerEncoder(
                nn.TransformerEncoderLayer(**layer_args), n_cond_layers, enable_nested_tensor=False)
        else:
            self.cond_encoder = nn.Sequential(nn.Linear(n_emb, 4 * n_emb), nn.Mish(), nn.Linear(4 * n_emb, n_emb))
        self.decoder = nn.TransformerDecoder(nn.TransformerDecoderLayer(**layer_args), n_layer)
        if causal_attn:
            steps = torch.arange(horizon)
            self.register_buffer('tgt_mask', _additive_mask(steps[:, None] >= steps[None, :]), persistent=False)
            cond_index = torch.arange(1 + n_obs_steps)
            self.register_buffer('memory_mask', _additive_mask(steps[:, None] >= cond_index[None, :] - 1),
                                 persistent=False)
        else:
            self.tgt_mask = self.memory_mask = None
        self.ln_f = nn.LayerNorm(n_emb)
        self.head = nn.Linear(n_emb, action_dim)
        self.apply(_init_weights)
        nn.init.normal_(self.pos_emb, std=0.02)
        nn.init.normal_(self.cond_pos_emb, std=0.02)

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor | int, cond: torch.Tensor) -> torch.Tensor:
        batch = sample.shape[0]
        if tuple(sample.shape[1:]) != (self.horizon, self.action_dim):
            raise ValueError(f'sample must be (B, {self.horizon}, {self.action_dim}), got {tuple(sample.shape)}')
        if tuple(cond.shape) != (batch, self.n_obs_steps, self.cond_dim):
            raise ValueError(f'cond must be ({batch}, {self.n_obs_steps}, {self.cond_dim}), got {tuple(cond.shape)}')
        step = self.time_emb(_timestep_batch(timestep, batch, sample.device)).unsqueeze(1)
        memory = self.cond_encoder(self.drop(torch.cat([step, self.cond_obs_emb(cond)], dim=1) + self.cond_pos_emb))
        x = self.drop(self.input_emb(sample) + self.pos_emb)
        x = self.decoder(tgt=x, memory=memory, tgt_mask=self.tgt_mask, memory_mask=self.memory_mask)
        return self.head(self.ln_f(x))


def _additive_mask(allowed: torch.Tensor) -> torch.Tensor:
    return torch.zeros(allowed.shape).masked_fill(~allowed, float('-inf'))


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def build_denoiser(cfg: PolicyConfig, action_dim: int, obs_feature_dim: int) -> ConditionalUnet1D | TransformerDenoiser:
    """The denoiser named by `cfg.denoiser`, sized for `obs_feature_dim` features per observation step."""
    if cfg.denoiser == 'unet':
        unet = cfg.unet
        divisor = 2 ** (len(unet.down_dims) - 1)
        if cfg.horizon % divisor:
            raise ValueError(f'horizon {cfg.horizon} must be divisible by {divisor} for a U-Net with '
                             f'down_dims {tuple(unet.down_dims)}')
        return ConditionalUnet1D(action_dim, obs_feature_dim * cfg.n_obs_steps, tuple(unet.down_dims),
                                 unet.kernel_size, unet.n_groups, unet.diffusion_step_embed_dim)
    if cfg.denoiser == 'transformer':
        tf = cfg.transformer
        return TransformerDenoiser(action_dim, obs_feature_dim, cfg.horizon, cfg.n_obs_steps, tf.n_layer, tf.n_head,
                                   tf.n_emb, tf.p_drop_attn, tf.p_drop_emb, tf.causal_attn, tf.n_cond_layers)
    raise ValueError(f"denoiser must be 'unet' or 'transformer', got {cfg.denoiser!r}")
