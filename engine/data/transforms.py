"""Image preprocessing shared by score, train and evaluate: decode, batch, resize, normalise, augment."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from engine.errors import ConfigError

if TYPE_CHECKING:
    import torch

    from engine.config import ModelConfig

# ITU-R 601-2 luma, the weights Pillow uses for RGB -> L.
_LUMA = (0.299, 0.587, 0.114)
# Cutout fill: mid grey, as in FixMatch's Cutout.
CUTOUT_FILL = 127

Augment = Callable[["torch.Tensor"], "torch.Tensor"]


def to_tensor_batch(
    images: Sequence[npt.NDArray[np.uint8]] | npt.NDArray[np.uint8],
    *,
    input_size: int,
    in_chans: int,
    mean: Sequence[float],
    std: Sequence[float],
    device: str | torch.device | None = None,
) -> torch.Tensor:
    """Turn uint8 images into the normalised model input.

    Args:
        images: a list of (H, W) / (H, W, C) uint8 arrays (C in 1, 3, 4; alpha dropped), or one stacked
            (B, H, W) / (B, H, W, C) uint8 array. Images may differ in size; a batch of one shape is handled in
            one vectorised pass.
        input_size: square output side S in pixels; images of another size are resized (bilinear, antialiased;
            a non-square image is stretched, so crop faces square at ingest).
        in_chans: 1 (grey: RGB goes through the ITU-R 601-2 luma weights, rounded to uint8 like Pillow's
            ``convert("L")``) or 3 (grey is repeated).
        mean: per-channel mean on pixels scaled to [0, 1]; length 1 or in_chans.
        std: per-channel std on pixels scaled to [0, 1]; length 1 or in_chans.
        device: where the work happens and the result lives (default CPU).

    Returns:
        float32 tensor (B, in_chans, S, S) holding ``(x / 255 - mean) / std``.
    """
    import torch

    if isinstance(images, np.ndarray) and images.ndim in (3, 4) and images.dtype == np.uint8:
        groups: list[npt.NDArray[np.uint8]] = [images]
    else:
        images = list(images)
        if not images:
            return torch.empty((0, in_chans, input_size, input_size), dtype=torch.float32, device=device)
        shapes = {np.shape(im) for im in images}
        groups = [np.stack(images)] if len(shapes) == 1 else [np.asarray(im)[None] for im in images]
    outs = []
    for arr in groups:
        if arr.dtype != np.uint8:
            raise ConfigError(
                f"to_tensor_batch expects uint8 images, got {arr.dtype}; decode with engine.imaging.decode_pixelse"
            )
        x = torch.from_numpy(np.ascontiguousarray(arr))
        if device is not None:
            x = x.to(device)
        x = x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2)
        outs.append(normalize_batch(x, input_size=input_size, in_chans=in_chans, mean=mean, std=std))
    return outs[0] if len(outs) == 1 else torch.cat(outs)


def to_model_input(
    images: Sequence[npt.NDArray[np.uint8]] | npt.NDArray[np.uint8],
    model_cfg: ModelConfig,
    *,
    device: str | torch.device | None = None,
) -> torch.Tensor:
    """``to_tensor_batch`` with size, channels and normalisation taken from ``model_cfg``."""
    return to_tensor_batch(
        images,
        input_size=model_cfg.input_size,
        in_chans=model_cfg.in_chans,
        mean=model_cfg.mean,
        std=model_cfg.std,
        device=device,
    )


def normalize_batch(
    x: torch.Tensor, *, input_size: int, in_chans: int, mean: Sequence[float], std: Sequence[float]
) -> torch.Tensor:
    """Channel-convert, resize and normalise a uint8 batch (the trainer's path after augmentation).

    Args:
        x: uint8 tensor (B, C, H, W), C in 1, 3, 4.

    Returns:
        float32 tensor (B, in_chans, input_size, input_size) on x's device.
    """
    import torch
    import torch.nn.functional as F

    x = match_channels(x, in_chans).float().div_(255.0)
    if x.shape[-2:] != (input_size, input_size):
        x = F.interpolate(x, size=(input_size, input_size), mode="bilinear", align_corners=False, antialias=True)
    m = _per_channel(mean, in_chans, "mean")
    s = _per_channel(std, in_chans, "std")
    if any(v <= 0 for v in s):
        raise ConfigError(f"model.std must be positive, got {tuple(std)}")
    m_t = torch.tensor(m, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
    s_t = torch.tensor(s, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
    return (x - m_t) / s_t


def match_channels(x: torch.Tensor, in_chans: int) -> torch.Tensor:
    """Convert (B, C, H, W) to ``in_chans`` channels: grey -> RGB repeats, RGB -> grey uses the luma weights.

    A 4th (alpha) channel is dropped. uint8 input stays uint8 (luma rounded to nearest).
    """
    import torch

    if x.ndim != 4:
        raise ConfigError(f"expected a (B, C, H, W) batch, got shape {tuple(x.shape)}")
    c = x.shape[1]
    if c == 4:
        x, c = x[:, :3], 3
    if c not in (1, 3):
        raise ConfigError(f"images must have 1, 3 or 4 channels, got {c} (shape {tuple(x.shape)})")
    if in_chans not in (1, 3):
        raise ConfigError(f"model.in_chans must be 1 or 3, got {in_chans}")
    if c == in_chans:
        return x
    if in_chans == 3:
        return x.expand(-1, 3, -1, -1)
    w = torch.tensor(_LUMA, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
    grey = (x.float() * w).sum(dim=1, keepdim=True)
    return grey.round_().clamp_(0, 255).to(torch.uint8) if x.dtype == torch.uint8 else grey.to(x.dtype)


def hflip_batch(x: torch.Tensor) -> torch.Tensor:
    """Mirror a (B, C, H, W) batch left-right."""
    return x.flip(-1)


# ---------------------------------------------------------------- augmentation (uint8 in, uint8 out)


def build_weak_augment(*, pad_frac: float = 0.125, flip: bool = True) -> Augment:
    """Weak augmentation: random crop with reflect padding of ``pad_frac`` of the side, then a horizontal flip.

    Each sample gets its own crop offset and flip (torchvision v2 transforms called on a batch would share
    one draw for the whole batch), in one vectorised gather; randomness comes from torch's global RNG.

    Returns:
        A callable mapping uint8 (B, C, H, W) to uint8 (B, C, H, W) on the same device.
    """
    if not 0 <= pad_frac < 0.5:
        raise ConfigError(f"pad_frac must be in [0, 0.5), got {pad_frac}")

    def weak(x: torch.Tensor) -> torch.Tensor:
        return _random_crop_flip(x, pad_frac=pad_frac, flip=flip)

    return weak


def build_strong_augment(
    *,
    pad_frac: float = 0.125,
    num_ops: int = 3,
    magnitude: int = 5,
    erase_p: float = 1.0,
    erase_scale: tuple[float, float] = (0.02, 0.25),
) -> Augment:
    """Strong augmentation: weak, then torchvision v2 RandAugment and random erasing (Cutout, grey fill).

    RandAugment and erasing draw their parameters per sample (each sample goes through the v2 pipeline on its
    own); about 0.7 ms per 48x48 sample on one CPU core.

    Returns:
        A callable mapping uint8 (B, C, H, W) to uint8 (B, C, H, W) on the same device.
    """
    from torchvision.transforms import v2

    weak = build_weak_augment(pad_frac=pad_frac)
    per_sample = v2.Compose(
        [
            v2.RandAugment(num_ops=num_ops, magnitude=magnitude),
            v2.RandomErasing(p=erase_p, scale=erase_scale, value=CUTOUT_FILL),
        ]
    )

    def strong(x: torch.Tensor) -> torch.Tensor:
        import torch

        x = weak(x)
        if x.shape[0] == 0:
            return x
        return torch.stack([per_sample(img) for img in x])

    return strong


def build_view_augment(*, crop_min_scale: float = 0.3, jitter: float = 0.4, jitter_p: float = 0.8) -> Augment:
    """A self-supervised view (SimCLR / SimSiam style, for small grey faces): a random crop of ``crop_min_scale`` to
    all of the area (aspect 3/4 to 4/3) resized back to the input size (bilinear), a mirror with probability 0.5, and
    with probability ``jitter_p`` brightness and contrast scaled by factors in ``[1 - jitter, 1 + jitter]``.

    Every sample draws its own crop, mirror and factors, in one vectorised ``grid_sample`` for the batch; randomness
    comes from torch's global RNG (seed it per epoch for reproducible views).

    Returns:
        A callable mapping uint8 (B, C, H, W) to uint8 (B, C, H, W) on the same device.
    """
    if not 0 < crop_min_scale <= 1:
        raise ConfigError(f"crop_min_scale must be in (0, 1], got {crop_min_scale}")
    if not 0 <= jitter < 1:
        raise ConfigError(f"jitter must be in [0, 1), got {jitter}")

    def view(x: torch.Tensor) -> torch.Tensor:
        import math

        import torch
        import torch.nn.functional as F

        if x.ndim != 4:
            raise ConfigError(f"augmentation expects a (B, C, H, W) batch, got shape {tuple(x.shape)}")
        b, dev = x.shape[0], x.device
        if b == 0:
            return x
        area = torch.empty(b, device=dev).uniform_(crop_min_scale, 1.0)
        ratio = torch.empty(b, device=dev).uniform_(math.log(3 / 4), math.log(4 / 3)).exp()
        w = (area * ratio).sqrt().clamp(max=1.0)  # crop sides as fractions of the image's
        h = (area / ratio).sqrt().clamp(max=1.0)
        cx = (torch.rand(b, device=dev) * 2 - 1) * (1 - w)  # centre, in [-1, 1] grid units, inside the image
        cy = (torch.rand(b, device=dev) * 2 - 1) * (1 - h)
        mirror = torch.where(torch.rand(b, device=dev) < 0.5, -1.0, 1.0)
        theta = torch.zeros(b, 2, 3, device=dev)
        theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = w * mirror, cx, h, cy
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        out = F.grid_sample(x.float(), grid, mode="bilinear", padding_mode="border", align_corners=False)
        if jitter > 0:
            on = (torch.rand(b, 1, 1, 1, device=dev) < jitter_p).float()
            bright = 1 + on * (torch.rand(b, 1, 1, 1, device=dev) * 2 - 1) * jitter
            contrast = 1 + on * (torch.rand(b, 1, 1, 1, device=dev) * 2 - 1) * jitter
            mean = out.mean(dim=(1, 2, 3), keepdim=True)
            out = ((out - mean) * contrast + mean) * bright
        return out.round_().clamp_(0, 255).to(torch.uint8)

    return view


def _random_crop_flip(x: torch.Tensor, *, pad_frac: float, flip: bool) -> torch.Tensor:
    import torch

    if x.ndim != 4:
        raise ConfigError(f"augmentation expects a (B, C, H, W) batch, got shape {tuple(x.shape)}")
    b, _, h, w = x.shape
    pad_h, pad_w = round(pad_frac * h), round(pad_frac * w)
    dev = x.device
    oy = torch.randint(0, 2 * pad_h + 1, (b, 1), device=dev) - pad_h
    ox = torch.randint(0, 2 * pad_w + 1, (b, 1), device=dev) - pad_w
    rows = _reflect(oy + torch.arange(h, device=dev), h)  # (B, H) source row per output row
    cols = _reflect(ox + torch.arange(w, device=dev), w)  # (B, W)
    if flip:
        flipped = torch.rand(b, 1, device=dev) < 0.5
        cols = torch.where(flipped, cols.flip(-1), cols)
    bi = torch.arange(b, device=dev).view(b, 1, 1)
    out = x.permute(0, 2, 3, 1)[bi, rows[:, :, None], cols[:, None, :]]  # (B, H, W, C)
    return out.permute(0, 3, 1, 2).contiguous()


def _reflect(idx: torch.Tensor, n: int) -> torch.Tensor:
    """Map indices in [-(n-1), 2n-2] into [0, n) as reflect padding does (edge pixel not repeated)."""
    if n == 1:
        return idx.clamp(0, 0)
    idx = idx.abs()
    return (n - 1) - (idx - (n - 1)).abs()


def _per_channel(values: Sequence[float], in_chans: int, what: str) -> list[float]:
    vals = [float(v) for v in values]
    if len(vals) == 1:
        return vals * in_chans
    if len(vals) != in_chans:
        raise ConfigError(f"model.{what} has {len(vals)} values for in_chans={in_chans}; give 1 or {in_chans} values")
    return vals
