"""How far an image is from a reference, pixel by pixel: PSNR and SSIM in plain torch, for `compare` (against the
baseline image of the same prompt and seed) and the demo (Turbo's image against the baseline's) alike.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image


def to_tensor(image: Image.Image | np.ndarray | torch.Tensor) -> torch.Tensor:
    """An image as a float64 ``(C, H, W)`` tensor in ``[0, 1]``: PIL images and uint8 arrays are divided by 255,
    float arrays and tensors are taken as already in ``[0, 1]`` (an ``(H, W, C)`` array is transposed)."""
    if isinstance(image, Image.Image):
        image = np.asarray(image.convert("RGB"))
    if isinstance(image, np.ndarray):
        scale = 255.0 if image.dtype == np.uint8 else 1.0
        array = image.astype(np.float64) / scale
        if array.ndim == 2:
            array = array[None]
        elif array.ndim == 3:
            array = array.transpose(2, 0, 1)
        return torch.from_numpy(np.ascontiguousarray(array))
    return image.to(torch.float64)


def psnr(image: Any, reference: Any, data_range: float = 1.0) -> float:
    """Peak signal-to-noise ratio in dB: ``10 * log10(data_range**2 / MSE)``.

    Measures pixel-wise closeness to ``reference``. Range ``[0, inf)`` for images in ``[0, data_range]``: higher
    is closer, ``inf`` means identical. 20 dB is an RMS error of a tenth of the range, 40 dB of a hundredth.
    Inputs as for `to_tensor` (same shape).
    """
    x, y = to_tensor(image), to_tensor(reference)
    _check_same_shape(x, y)
    mse = torch.mean((x - y) ** 2).item()
    if mse == 0:
        return math.inf
    return 10.0 * math.log10(data_range**2 / mse)


def gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """A normalised ``size x size`` Gaussian window (float64), the outer product of two 1-D Gaussians."""
    coords = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    g = g / g.sum()
    return torch.outer(g, g)


def ssim(image: Any, reference: Any, data_range: float = 1.0, window_size: int = 11, sigma: float = 1.5) -> float:
    """Structural similarity (Wang, Bovik, Sheikh, Simoncelli 2004), mean over channels and positions.

    Compares local means (luminance), variances (contrast) and covariance (structure) in an 11 x 11 Gaussian
    window of standard deviation 1.5, with ``C1 = (0.01 L)^2``, ``C2 = (0.03 L)^2`` and ``L = data_range``:

        SSIM = (2 mu_x mu_y + C1) (2 sigma_xy + C2) / ((mu_x^2 + mu_y^2 + C1) (sigma_x^2 + sigma_y^2 + C2))

    Windows lie wholly inside the image (no padding), as in the authors' reference code. Range ``[-1, 1]``:
    1 means identical; unrelated images score near 0. Inputs as for `to_tensor`, each side at least
    ``window_size`` pixels.
    """
    x, y = to_tensor(image), to_tensor(reference)
    _check_same_shape(x, y)
    if x.shape[-1] < window_size or x.shape[-2] < window_size:
        raise ValueError(f"ssim needs images of at least {window_size}x{window_size} pixels, got {tuple(x.shape)}")
    x, y = x.reshape(-1, 1, *x.shape[-2:]), y.reshape(-1, 1, *y.shape[-2:])  # each channel on its own
    window = gaussian_window(window_size, sigma)[None, None]

    def local_mean(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, window)

    mu_x, mu_y = local_mean(x), local_mean(y)
    var_x = local_mean(x * x) - mu_x**2
    var_y = local_mean(y * y) - mu_y**2
    cov_xy = local_mean(x * y) - mu_x * mu_y
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov_xy + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return ssim_map.mean().item()


def _check_same_shape(x: torch.Tensor, y: torch.Tensor) -> None:
    if x.shape != y.shape:
        raise ValueError(f"images differ in shape: {tuple(x.shape)} vs {tuple(y.shape)}")
