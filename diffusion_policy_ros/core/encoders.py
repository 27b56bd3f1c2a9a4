"""Observation encoders: a ResNet-18 with GroupNorm and spatial-softmax keypoints per camera, and a
state encoder, turning an observation history into the denoiser's conditioning.

Written here because torchvision has no CPU build in this environment; GroupNorm instead of
BatchNorm follows Chi et al. (BatchNorm interacts badly with the EMA of weights and small batches).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import EncoderConfig, ObservationSpec


def _group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with ~16 channels per group (Chi et al.), at least one group."""
    groups = max(1, channels // 16)
    while channels % groups:
        groups -= 1
    return nn.GroupNorm(groups, channels)


class _BasicBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.norm1 = _group_norm(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.norm2 = _group_norm(out_channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                                          _group_norm(out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.norm1(self.conv1(x)))
        out = self.norm2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet18GN(nn.Module):
    """ResNet-18 trunk (no pooling/fc) with GroupNorm; `width` 64 is the standard network.

    (N, in_channels, H, W) -> (N, 2**(stages-1) * width, ~H/2**(stages+1), ~W/2**(stages+1)).
    `stages` < 4 stops early: a finer feature map (4x4 instead of 2x2 for a 64 px image) lets the
    spatial softmax place keypoints more precisely, for less compute.
    """

    def __init__(self, width: int = 64, in_channels: int = 3, stages: int = 4) -> None:
        super().__init__()
        if width < 1:
            raise ValueError(f'ResNet18GN width must be >= 1, got {width}')
        if stages not in (1, 2, 3, 4):
            raise ValueError(f'ResNet18GN stages must be 1..4, got {stages}')
        self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 7, 2, 3, bias=False), _group_norm(width),
                                  nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1))
        blocks, channels = [], width
        for i, out_channels in enumerate((width, 2 * width, 4 * width, 8 * width)[:stages]):
            stride = 1 if i == 0 else 2
            blocks.append(nn.Sequential(_BasicBlock(channels, out_channels, stride),
                                        _BasicBlock(out_channels, out_channels, 1)))
            channels = out_channels
        self.stages = nn.Sequential(*blocks)
        self.out_channels = channels

    @staticmethod
    def feature_size(size: int, stages: int = 4) -> int:
        """Output length of one spatial side: stem conv, max-pool and one per stage after the first
        ((k3/k7, stride 2, 'same' padding) halvings)."""
        for _ in range(stages + 1):
            size = (size - 1) // 2 + 1
        return size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(x))


class SpatialSoftmax(nn.Module):
    """Keypoints as the expected (x, y) in [-1, 1] of a softmax over each feature map (Levine et al.).

    (N, C, H, W) -> (N, 2 * num_kp). Keeps *where* things are, which pooling would throw away.
    """

    def __init__(self, in_channels: int, num_kp: int = 32) -> None:
        super().__init__()
        self.num_kp = num_kp
        self.keypoint_conv = nn.Conv2d(in_channels, num_kp, 1)
        self._grids: dict[tuple[int, int, torch.device, torch.dtype], torch.Tensor] = {}

    def _grid(self, h: int, w: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        key = (h, w, device, dtype)
        if key not in self._grids:
            with torch.inference_mode(False):  # a cache made during inference must still work in training
                ys, xs = torch.meshgrid(torch.linspace(-1, 1, h, device=device, dtype=dtype),
                                        torch.linspace(-1, 1, w, device=device, dtype=dtype), indexing='ij')
                self._grids[key] = torch.stack([xs.reshape(-1), ys.reshape(-1)], dim=1)  # (H*W, 2)
        return self._grids[key]

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        n, _, h, w = features.shape
        logits = self.keypoint_conv(features).reshape(n, self.num_kp, h * w)
        attention = torch.softmax(logits, dim=-1)
        keypoints = attention @ self._grid(h, w, features.device, features.dtype)  # (N, K, 2)
        return keypoints.reshape(n, 2 * self.num_kp)


def random_crop(images: torch.Tensor, crop_shape: tuple[int, int],
                generator: torch.Generator | None = None) -> torch.Tensor:
    """An independent random (ch, cw) window of every image of (N, C, H, W), by one gather."""
    n, _, h, w = images.shape
    ch, cw = crop_shape
    draw_device = generator.device if generator is not None else images.device
    top = torch.randint(0, h - ch + 1, (n,), generator=generator, device=draw_device).to(images.device)
    left = torch.randint(0, w - cw + 1, (n,), generator=generator, device=draw_device).to(images.device)
    rows = (top[:, None] + torch.arange(ch, device=images.device))[:, None, :, None]   # (N, 1, ch, 1)
    cols = (left[:, None] + torch.arange(cw, device=images.device))[:, None, None, :]  # (N, 1, 1, cw)
    batch = torch.arange(n, device=images.device)[:, None, None, None]
    channels = torch.arange(images.shape[1], device=images.device)[None, :, None, None]
    return images[batch, channels, rows, cols]


def center_crop(images: torch.Tensor, crop_shape: tuple[int, int]) -> torch.Tensor:
    h, w = images.shape[-2:]
    top, left = (h - crop_shape[0]) // 2, (w - crop_shape[1]) // 2
    return images[..., top:top + crop_shape[0], left:left + crop_shape[1]]


class ImageEncoder(nn.Module):
    """Crop (random in train(), centre in eval()) -> ResNet18GN -> spatial softmax -> linear.

    (N, 3, H, W) normalised image -> (N, feature_dim).
    """

    def __init__(self, image_shape: tuple[int, int], crop_shape: tuple[int, int] | None = None,
                 width: int = 64, num_kp: int = 32, feature_dim: int = 64, stages: int = 4) -> None:
        super().__init__()
        self.image_shape = tuple(image_shape)
        if crop_shape is not None:
            crop_shape = tuple(crop_shape)  # type: ignore[assignment]
            fits = len(crop_shape) == 2 and all(0 < c <= s for c, s in zip(crop_shape, image_shape))
            if not fits:
                raise ValueError(f'crop_shape {crop_shape} does not fit in image_shape {tuple(image_shape)}')
        self.crop_shape = crop_shape
        feature_shape = tuple(ResNet18GN.feature_size(n, stages) for n in (crop_shape or image_shape))
        if min(feature_shape) < 2:
            # A 1-pixel map makes every keypoint (0, 0): the camera would be silently ignored.
            raise ValueError(f'input {tuple(crop_shape or image_shape)} (crop or image) gives a {feature_shape} '
                             f'feature map with {stages} ResNet stages; spatial softmax needs >= 2x2, i.e. '
                             f'images/crops of >= {2 ** (stages + 1) + 1} px per side')
        self.backbone = ResNet18GN(width, stages=stages)
        self.keypoints = SpatialSoftmax(self.backbone.out_channels, num_kp)
        self.project = nn.Linear(2 * num_kp, feature_dim)
        self.output_dim = feature_dim

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.dim() != 4 or tuple(images.shape[1:]) != (3, *self.image_shape):
            raise ValueError(f'image batch must be (N, 3, {self.image_shape[0]}, {self.image_shape[1]}), '
                             f'got {tuple(images.shape)}')
        if self.crop_shape is not None:
            images = random_crop(images, self.crop_shape) if self.training else center_crop(images, self.crop_shape)
        return self.project(self.keypoints(self.backbone(images)))


class StateEncoder(nn.Module):
    """Identity (mlp_dims empty) or a Mish MLP over the joint state; (..., D) -> (..., output_dim)."""

    def __init__(self, state_dim: int, mlp_dims: tuple[int, ...] = ()) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        dims = [state_dim, *mlp_dims]
        for i, (d_in, d_out) in enumerate(zip(dims[:-1], dims[1:])):
            layers.append(nn.Linear(d_in, d_out))
            if i < len(dims) - 2:
                layers.append(nn.Mish())
        self.net = nn.Sequential(*layers) if layers else nn.Identity()
        self.output_dim = dims[-1]

    def forward(self, state: torch.Tensor) -> torch.Tensor:
        return self.net(state)


class ObservationEncoder(nn.Module):
    """Maps a normalised observation history to per-step features.

    Input: {camera_key: (B, T, 3, H, W) float, 'state': (B, T, D)}; output (B, T, output_dim) with
    the camera features (in `obs_spec.camera_keys` order) then the state features concatenated.
    """

    def __init__(self, obs_spec: ObservationSpec, cfg: EncoderConfig) -> None:
        super().__init__()
        self.camera_keys = list(obs_spec.camera_keys)
        self.state_dim = obs_spec.state_dim

        def make() -> ImageEncoder:
            return ImageEncoder(obs_spec.image_shape, cfg.crop_shape, cfg.resnet_width, cfg.num_keypoints,
                                cfg.image_feature_dim, cfg.resnet_stages)

        self.share_encoder = cfg.share_encoder
        if not self.camera_keys:
            self.image_encoders = nn.ModuleDict()
        elif cfg.share_encoder:
            self.image_encoders = nn.ModuleDict({'shared': make()})
        else:
            self.image_encoders = nn.ModuleDict({_module_key(k): make() for k in self.camera_keys})
        self.state_encoder = StateEncoder(obs_spec.state_dim, cfg.state_mlp_dims) if self.state_dim else None
        self.output_dim = (len(self.camera_keys) * cfg.image_feature_dim
                           + (self.state_encoder.output_dim if self.state_encoder else 0))

    def _encoder_for(self, camera_key: str) -> ImageEncoder:
        return self.image_encoders['shared' if self.share_encoder else _module_key(camera_key)]

    def forward(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        batch_shape = None
        features = []
        for key in self.camera_keys:
            if key not in obs:
                raise KeyError(f'observation is missing camera {key!r} (has {sorted(obs)})')
            images = obs[key]
            if images.dim() != 5:
                raise ValueError(f'camera {key!r} must be (B, T, 3, H, W), got shape {tuple(images.shape)}')
            batch_shape = _same_batch(batch_shape, images.shape[:2], key)
            b, t = images.shape[:2]
            features.append(self._encoder_for(key)(images.reshape(b * t, *images.shape[2:])).reshape(b, t, -1))
        if self.state_encoder is not None:
            if 'state' not in obs:
                raise KeyError(f"observation is missing 'state' (has {sorted(obs)})")
            state = obs['state']
            if state.dim() != 3 or state.shape[-1] != self.state_dim:
                raise ValueError(f"'state' must be (B, T, {self.state_dim}), got shape {tuple(state.shape)}")
            _same_batch(batch_shape, state.shape[:2], 'state')
            features.append(self.state_encoder(state))
        return torch.cat(features, dim=-1)

    def encode_flat(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, T * output_dim): the global conditioning of the 1D U-Net."""
        features = self(obs)
        return features.reshape(features.shape[0], -1)


def _module_key(camera_key: str) -> str:
    """ModuleDict keys may not contain '.', camera keys (topic-like names) might."""
    return camera_key.replace('.', '__dot__')


def _same_batch(expected: torch.Size | None, found: torch.Size, key: str) -> torch.Size:
    if expected is not None and tuple(expected) != tuple(found):
        raise ValueError(f'{key!r} has (batch, time) {tuple(found)} but other observations have {tuple(expected)}')
    return found
