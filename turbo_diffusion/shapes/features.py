"""A distribution metric for the ``shapes`` world: KID in the feature space of a small classifier trained on renders.

FID and KID compare two sets of images through the features of a network that knows the domain (Inception for
photos). No Inception weights can be downloaded here, and they would know nothing of these scenes anyway, so we
train our own: :class:`SceneFeatures`, a 4-layer CNN that reads a 64 px render and predicts, for each of the 9
cells, which colour and which shape sits there (or none). Its 128-d penultimate layer is the feature space.

KID (Binkowski et al., 2018) is the unbiased squared MMD with the cubic polynomial kernel
``k(x, y) = (x . y / d + 1) ** 3``; unlike FID it has no bias that depends on the number of images, so small sets
(hundreds of images) compare fairly. :func:`kid` averages it over random subsets and reports the spread.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .scenes import COLOURS, POSITIONS, SHAPES, render, sample_scene

FEATURE_SIZE = 64  # the classifier reads images downscaled to this
WEIGHTS = Path(__file__).with_name("scene_features.safetensors")  # written by benchmarks/train_scene_features.py
_COLOURS, _SHAPES = tuple(COLOURS), SHAPES
_CELLS = len(POSITIONS)


class SceneFeatures(nn.Module):
    """CNN over ``(B, 3, 64, 64)`` images in [-1, 1]: ``features`` ``(B, 128)`` and per-cell logits."""

    def __init__(self) -> None:
        super().__init__()

        def block(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.GroupNorm(8, cout), nn.SiLU(),
                                 nn.Conv2d(cout, cout, 3, padding=1, stride=2), nn.GroupNorm(8, cout), nn.SiLU())

        self.body = nn.Sequential(block(3, 32), block(32, 64), block(64, 96), block(96, 128))  # 64 -> 4
        self.pool = nn.AdaptiveAvgPool2d(3)  # one 128-d vector per grid cell
        self.project = nn.Linear(128 * _CELLS, 128)
        self.colour_head = nn.Linear(128, _CELLS * (len(_COLOURS) + 1))
        self.shape_head = nn.Linear(128, _CELLS * (len(_SHAPES) + 1))

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.silu(self.project(self.pool(self.body(images)).flatten(1)))

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.features(images)
        return (self.colour_head(f).view(-1, _CELLS, len(_COLOURS) + 1),
                self.shape_head(f).view(-1, _CELLS, len(_SHAPES) + 1))


def to_input(images) -> torch.Tensor:
    """PIL images (any size) -> ``(B, 3, 64, 64)`` in [-1, 1]."""
    from PIL import Image

    arrays = [np.asarray(im.convert("RGB").resize((FEATURE_SIZE, FEATURE_SIZE), Image.BILINEAR), dtype=np.float32)
              for im in images]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2) / 127.5 - 1.0


def _targets(scene) -> tuple[torch.Tensor, torch.Tensor]:
    colour = torch.zeros(_CELLS, dtype=torch.long)  # 0: empty cell
    shape = torch.zeros(_CELLS, dtype=torch.long)
    for obj in scene.objects:
        cell = POSITIONS.index(obj.position)
        colour[cell] = _COLOURS.index(obj.colour) + 1
        shape[cell] = _SHAPES.index(obj.shape) + 1
    return colour, shape


def train_features(steps: int = 1500, batch: int = 64, seed: int = 0, progress: bool = True) -> SceneFeatures:
    """Train the feature network on fresh renders (mildly blurred half of the time, as decoded images are)."""
    from PIL import ImageFilter
    from tqdm.auto import tqdm

    torch.manual_seed(seed)
    rng = random.Random(seed + 12345)
    model = SceneFeatures()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    loss_fn = nn.CrossEntropyLoss()
    for _ in tqdm(range(steps), desc="scene features", disable=not progress, dynamic_ncols=True):
        scenes = [sample_scene(rng) for _ in range(batch)]
        images = [render(s) for s in scenes]
        images = [im.filter(ImageFilter.GaussianBlur(rng.uniform(0.5, 1.5))) if rng.random() < 0.5 else im
                  for im in images]
        colour_t, shape_t = zip(*(_targets(s) for s in scenes), strict=True)
        colour_logits, shape_logits = model(to_input(images))
        loss = (loss_fn(colour_logits.flatten(0, 1), torch.stack(colour_t).flatten())
                + loss_fn(shape_logits.flatten(0, 1), torch.stack(shape_t).flatten()))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return model.eval()


@torch.no_grad()
def cell_accuracy(model: SceneFeatures, scenes: int = 512, seed: int = 999_000) -> dict[str, float]:
    """Per-cell accuracy (empty cells included) of colour and shape on ``scenes`` fresh renders, and the share of
    scenes whose 9 cells are all right on both: how well the feature space knows the scenes."""
    rng = random.Random(seed)
    drawn = [sample_scene(rng) for _ in range(scenes)]
    colour_t, shape_t = (torch.stack(t) for t in zip(*(_targets(s) for s in drawn), strict=True))
    colour_logits, shape_logits = model(to_input([render(s) for s in drawn]))
    colour_ok, shape_ok = colour_logits.argmax(-1) == colour_t, shape_logits.argmax(-1) == shape_t
    return {"colour": colour_ok.float().mean().item(), "shape": shape_ok.float().mean().item(),
            "whole_scene": (colour_ok & shape_ok).all(-1).float().mean().item()}


def save_features(model: SceneFeatures, path: str | Path = WEIGHTS) -> None:
    """Write the weights as fp16 safetensors (about 1 MB)."""
    from safetensors.torch import save_file

    save_file({k: v.detach().half().contiguous() for k, v in model.state_dict().items()}, str(path))


def load_features(path: str | Path = WEIGHTS) -> SceneFeatures:
    """The trained feature network (fp16 on disk, float32 here)."""
    from safetensors.torch import load_file

    if not Path(path).is_file():
        raise FileNotFoundError(f"no scene-feature weights at {path}: train them with "
                                "python benchmarks/train_scene_features.py")
    model = SceneFeatures()
    model.load_state_dict({k: v.float() for k, v in load_file(str(path)).items()})
    return model.eval()


@torch.no_grad()
def extract(model: SceneFeatures, images, batch: int = 128) -> np.ndarray:
    """``(N, 128)`` float64 features of PIL images, each scaled to norm ``sqrt(128)``: the network's own scale is
    arbitrary, and on this sphere the cubic kernel's ``x . y / d`` lies in ``[-1, 1]``, so KID values are
    comparable from one trained network to the next."""
    chunks = [model.features(to_input(images[i:i + batch])) for i in range(0, len(images), batch)]
    features = torch.cat(chunks).double()
    return (features / features.norm(dim=1, keepdim=True).clamp_min(1e-12) * features.shape[1] ** 0.5).numpy()


def kid(x: np.ndarray, y: np.ndarray, subsets: int = 50, subset_size: int = 100, seed: int = 0) -> tuple[float, float]:
    """Kernel Inception Distance between feature sets ``x`` ``(N, d)`` and ``y`` ``(M, d)``: mean and standard
    deviation over ``subsets`` random subsets of ``min(subset_size, N, M)`` rows each. 0 for identical
    distributions (can dip slightly below 0: the estimate is unbiased)."""
    d = x.shape[1]
    m = min(subset_size, len(x), len(y))
    if m < 2:
        raise ValueError(f"KID needs at least 2 images per set, got {len(x)} and {len(y)}")
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(subsets):
        a = x[rng.choice(len(x), m, replace=False)]
        b = y[rng.choice(len(y), m, replace=False)]
        kxx, kyy, kxy = ((a @ a.T / d + 1) ** 3, (b @ b.T / d + 1) ** 3, (a @ b.T / d + 1) ** 3)
        mmd = ((kxx.sum() - np.trace(kxx)) + (kyy.sum() - np.trace(kyy))) / (m * (m - 1)) - 2 * kxy.mean()
        values.append(mmd)
    return float(np.mean(values)), float(np.std(values))
