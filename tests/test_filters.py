"""The MSCN high-pass filter, against two independent blurs (numpy, and torch convolutions)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ssl_bench.errors import UserError
from ssl_bench.filters import HighPass, build_filter, gaussian_kernel_size, highpass, normalise_filter


def _np_highpass(x, sigma):
    radius = math.ceil(3 * sigma)
    taps = np.exp(-np.arange(-radius, radius + 1) ** 2 / (2 * sigma ** 2))
    taps /= taps.sum()
    out = np.empty_like(x)
    for c in range(x.shape[0]):
        padded = np.pad(x[c], radius, mode="reflect")  # edge not repeated (torch 'reflect')
        rows = np.array([[padded[i:i + 2 * radius + 1, j] @ taps for j in range(padded.shape[1])]
                         for i in range(x.shape[1])])
        blurred = np.array([[rows[i, j:j + 2 * radius + 1] @ taps for j in range(x.shape[2])]
                            for i in range(x.shape[1])])
        out[c] = x[c] - blurred
    return out


def test_highpass_matches_numpy_gaussian():
    x = np.random.default_rng(0).normal(size=(2, 20, 24))
    got = highpass(torch.tensor(x, dtype=torch.float64), 2.0).numpy()
    assert np.allclose(got, _np_highpass(x, 2.0), atol=1e-10)
    assert gaussian_kernel_size(5, 224, 224) == 31  # +-3 sigma
    batch = torch.tensor(np.stack([x, x]), dtype=torch.float64)
    assert torch.allclose(highpass(batch, 2.0)[1], torch.tensor(got))


def test_highpass_constant_image_is_zero_and_filter_spec():
    x = torch.full((3, 40, 40), 0.7)
    assert highpass(x, 5).abs().max() < 1e-6  # "zero means no information"
    filt = build_filter({"name": "highpass", "sigma": 5})
    assert torch.equal(filt(x), highpass(x, 5.0)) and build_filter(None) is None


def test_highpass_is_input_minus_gaussian_blur():
    x = torch.rand(1, 3, 40, 40)
    sigma = 2.0
    # independent blur: separable Gaussian with reflect padding, radius ceil(3 sigma)
    r = 6
    t = torch.arange(-r, r + 1, dtype=torch.float64)
    g = torch.exp(-t ** 2 / (2 * sigma ** 2))
    g = (g / g.sum()).float()
    padded = torch.nn.functional.pad(x, (r, r, r, r), mode="reflect")
    blur = torch.nn.functional.conv2d(padded, g.view(1, 1, 1, -1).repeat(3, 1, 1, 1), groups=3)
    blur = torch.nn.functional.conv2d(blur, g.view(1, 1, -1, 1).repeat(3, 1, 1, 1), groups=3)
    np.testing.assert_allclose(HighPass(sigma)(x).numpy(), (x - blur).numpy(), atol=1e-5)
    # a constant image carries no information after the filter
    assert HighPass(5)(torch.full((3, 64, 64), 0.7)).abs().max() < 1e-5


def test_filter_specs_are_checked():
    assert normalise_filter("highpass:3") == {"name": "highpass", "sigma": 3.0}
    assert normalise_filter({"name": "none"}) is None and normalise_filter("none") is None
    with pytest.raises(UserError, match="unknown input filter"):
        normalise_filter({"name": "lowpass"})
    with pytest.raises(UserError, match="sigma must be a positive number"):
        build_filter({"name": "highpass", "sigma": -1})
