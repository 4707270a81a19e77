"""Decode, batch, normalise and augment: shapes, dtypes and exact values."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from engine.config import ModelConfig
from engine.data.transforms import (
    CUTOUT_FILL,
    build_strong_augment,
    build_weak_augment,
    match_channels,
    to_model_input,
    to_tensor_batch,
)
from engine.errors import ConfigError, SourceFormatError
from engine.imaging import decode_pixels

GREY: dict[str, Any] = {"input_size": 48, "in_chans": 1, "mean": (0.5,), "std": (0.5,)}


def _png(arr: np.ndarray, mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr, mode=mode).save(buf, format="PNG")
    return buf.getvalue()


def test_decode_grey_and_rgb_round_trip() -> None:
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 256, (48, 40), dtype=np.uint8)
    rgb = rng.integers(0, 256, (30, 20, 3), dtype=np.uint8)
    out_grey = decode_pixels(_png(grey))
    out_rgb = decode_pixels(_png(rgb))
    assert out_grey.dtype == np.uint8 and out_grey.shape == (48, 40)
    assert np.array_equal(out_grey, grey)
    assert np.array_equal(out_rgb, rgb)


def test_decode_drops_alpha_and_scales_16_bit() -> None:
    rgba = np.zeros((4, 4, 4), dtype=np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 7
    assert np.array_equal(decode_pixels(_png(rgba)), np.full((4, 4, 3), (200, 0, 0), dtype=np.uint8))
    sixteen = np.full((4, 4), 65535, dtype=np.uint16)
    sixteen[0, 0] = 257 * 10
    out = decode_pixels(_png(sixteen))
    assert out.shape == (4, 4) and out[0, 0] == 10 and out[1, 1] == 255


def test_decode_garbage_raises_source_format_error() -> None:
    with pytest.raises(SourceFormatError, match="cannot decode image"):
        decode_pixels(b"not an image at all")


def test_to_tensor_batch_exact_values_and_shape() -> None:
    imgs = np.stack([np.zeros((48, 48), np.uint8), np.full((48, 48), 255, np.uint8), np.full((48, 48), 51, np.uint8)])
    x = to_tensor_batch(imgs, **GREY)
    assert x.dtype == torch.float32 and x.shape == (3, 1, 48, 48)
    assert torch.all(x[0] == -1.0) and torch.all(x[1] == 1.0)
    assert torch.allclose(x[2], torch.full((1, 48, 48), (51 / 255 - 0.5) / 0.5))


def test_rgb_to_grey_uses_luma_and_grey_to_rgb_repeats() -> None:
    red = np.zeros((8, 8, 3), np.uint8)
    red[..., 0] = 255
    x = to_tensor_batch([red], input_size=8, in_chans=1, mean=(0.0,), std=(1.0,))
    # rounded to uint8 grey first, as Pillow's RGB -> L (ingest's grayscale) does: round(0.299 * 255) = 76
    assert torch.equal(x, torch.full((1, 1, 8, 8), 76 / 255))
    grey = np.full((8, 8), 102, np.uint8)
    y = to_tensor_batch([grey], input_size=8, in_chans=3, mean=(0.1, 0.2, 0.3), std=(1.0, 2.0, 4.0))
    v = 102 / 255
    assert y.shape == (1, 3, 8, 8)
    assert torch.allclose(y[0, :, 0, 0], torch.tensor([(v - 0.1) / 1, (v - 0.2) / 2, (v - 0.3) / 4]))
    u8 = match_channels(torch.from_numpy(red).permute(2, 0, 1)[None], 1)
    assert u8.dtype == torch.uint8 and int(u8[0, 0, 0, 0]) == 76  # round(0.299 * 255)


def test_resize_and_mixed_shapes_match_per_image_processing() -> None:
    rng = np.random.default_rng(1)
    a = rng.integers(0, 256, (48, 48), dtype=np.uint8)
    b = rng.integers(0, 256, (100, 80, 3), dtype=np.uint8)
    const = np.full((48, 48), 200, np.uint8)
    x = to_tensor_batch([a, b, const], input_size=64, in_chans=1, mean=(0.5,), std=(0.5,))
    assert x.shape == (3, 1, 64, 64)
    kw = {"input_size": 64, "in_chans": 1, "mean": (0.5,), "std": (0.5,)}
    assert torch.equal(x[0], to_tensor_batch([a], **kw)[0])
    assert torch.equal(x[1], to_tensor_batch([b], **kw)[0])
    assert torch.allclose(x[2], torch.full((1, 64, 64), (200 / 255 - 0.5) / 0.5), atol=1e-6)  # upsampling keeps flat
    # the stacked-array fast path equals the list path
    imgs = rng.integers(0, 256, (5, 48, 48), dtype=np.uint8)
    assert torch.equal(to_tensor_batch(imgs, **GREY), to_tensor_batch(list(imgs), **GREY))


def test_to_model_input_reads_the_config() -> None:
    cfg = ModelConfig(input_size=32, in_chans=3, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    x = to_model_input([np.full((48, 48), 255, np.uint8)], cfg)
    assert x.shape == (1, 3, 32, 32) and torch.allclose(x, torch.full_like(x, 2.0))


def test_bad_inputs_raise_config_error() -> None:
    with pytest.raises(ConfigError, match="uint8"):
        to_tensor_batch([np.zeros((48, 48), np.float32)], **GREY)
    with pytest.raises(ConfigError, match=r"model\.mean has 2 values"):
        to_tensor_batch([np.zeros((48, 48), np.uint8)], input_size=48, in_chans=3, mean=(0.5, 0.5), std=(0.5,))
    assert to_tensor_batch([], **GREY).shape == (0, 1, 48, 48)


def test_weak_augment_is_a_reflect_padded_crop_with_optional_flip_per_sample() -> None:
    torch.manual_seed(0)
    x = torch.randint(0, 256, (32, 1, 16, 16), dtype=torch.uint8)
    out = build_weak_augment(pad_frac=0.125)(x)
    assert out.shape == x.shape and out.dtype == torch.uint8
    pad = 2  # round(0.125 * 16)
    padded = F.pad(x.float(), (pad, pad, pad, pad), mode="reflect").to(torch.uint8)
    flips = set()
    for i in range(32):
        found = [
            (dy, dx, fl)
            for dy in range(2 * pad + 1)
            for dx in range(2 * pad + 1)
            for fl in (False, True)
            if torch.equal(out[i], _crop(padded[i], dy, dx, 16, fl))
        ]
        assert found, f"sample {i} is not a crop of its reflect-padded input"
        flips.add(found[0][2])
    assert flips == {False, True}  # samples draw their own flip


def _crop(img: torch.Tensor, dy: int, dx: int, size: int, flip: bool) -> torch.Tensor:
    c = img[:, dy : dy + size, dx : dx + size]
    return c.flip(-1) if flip else c


def test_weak_augment_without_padding_flips_exactly_the_drawn_samples() -> None:
    torch.manual_seed(1)
    x = torch.randint(0, 256, (16, 3, 8, 8), dtype=torch.uint8)
    state = torch.get_rng_state()
    out = build_weak_augment(pad_frac=0.0)(x)
    # Replay the augment's draws from the same RNG state: two zero offsets per sample (no padding), then the flips.
    torch.set_rng_state(state)
    torch.randint(0, 1, (16, 1)), torch.randint(0, 1, (16, 1))
    flipped = (torch.rand(16, 1) < 0.5).view(-1)
    assert 0 < int(flipped.sum()) < 16  # both cases occur in this draw
    expected = torch.where(flipped.view(-1, 1, 1, 1), x.flip(-1), x)
    assert torch.equal(out, expected)


def test_strong_augment_shapes_and_cutout_per_sample() -> None:
    torch.manual_seed(2)
    x = torch.randint(0, 256, (1, 1, 48, 48), dtype=torch.uint8).repeat(8, 1, 1, 1)
    out = build_strong_augment()(x)
    assert out.shape == (8, 1, 48, 48) and out.dtype == torch.uint8
    assert len({o.numpy().tobytes() for o in out}) == 8  # identical inputs, eight different views
    min_cutout = int(0.02 * 48 * 48)
    assert all(int((o == CUTOUT_FILL).sum()) >= min_cutout for o in out)
    assert build_strong_augment()(x[:0]).shape == (0, 1, 48, 48)
