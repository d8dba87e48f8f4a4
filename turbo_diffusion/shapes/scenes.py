"""Scenes that code draws and code can check: the data of the offline ``shapes`` model.

A scene is 1-3 objects on a background. Each object has a shape (circle, square, triangle), a colour (eight
saturated, well-separated colours), a size (small or large) and a cell of a 3x3 grid (top left ... bottom right);
objects sit in different cells and have different colours. The background is plain (white, gray or black) or a
texture in shades of that colour (stripes, checker, gradient, noise), so images hold both flat, redundant regions
and detailed ones. Backgrounds are never saturated, which keeps every object separable by colour alone (that is
what :mod:`turbo_diffusion.shapes.judge` relies on).

Everything is deterministic: ``sample_scene(random.Random(seed))`` and ``render(scene)`` give the same scene and
the same pixels on every machine. No torch, no diffusers: numpy and Pillow only.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

IMAGE_SIZE = 128

SHAPES = ("circle", "square", "triangle")
SIZES = ("small", "large")
# Saturated object colours, at least 60 apart in RGB from each other and far from every gray.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "orange": (245, 140, 20),
    "yellow": (235, 215, 20),
    "green": (30, 170, 50),
    "cyan": (20, 200, 210),
    "blue": (30, 60, 220),
    "purple": (140, 40, 200),
    "pink": (240, 90, 190),
}
# Backgrounds are achromatic: a base gray level and a second shade for textures.
BACKGROUND_COLOURS: dict[str, tuple[int, int]] = {"white": (235, 200), "gray": (128, 90), "black": (25, 60)}
TEXTURES = ("plain", "striped", "checkered", "gradient", "noisy")
# Row-major cells of the 3x3 grid and how prompts name them.
POSITIONS = ("top left", "top", "top right", "left", "center", "right", "bottom left", "bottom", "bottom right")
_POSITION_PHRASE = {
    "top left": "at the top left", "top": "at the top", "top right": "at the top right",
    "left": "on the left", "center": "in the center", "right": "on the right",
    "bottom left": "at the bottom left", "bottom": "at the bottom", "bottom right": "at the bottom right",
}
_TEXTURE_WORD = {"striped": "striped", "checkered": "checkered", "gradient": "gradient", "noisy": "noisy"}
# Object side as a share of the image: a cell is a third; large objects fill most of it, small ones under half.
SIDE_FRACTION = {"small": 0.14, "large": 0.27}


@dataclass(frozen=True)
class SceneObject:
    """One object of a scene: what the prompt says about it, and where it was drawn."""

    shape: str
    colour: str
    size: str
    position: str
    center: tuple[float, float]  # (x, y) in pixels
    side: float  # bounding-box side in pixels

    @property
    def cell(self) -> tuple[int, int]:
        """(row, column) of the 3x3 grid."""
        return divmod(POSITIONS.index(self.position), 3)

    def phrase(self) -> str:
        return f"a {self.size} {self.colour} {self.shape} {_POSITION_PHRASE[self.position]}"


@dataclass(frozen=True)
class Scene:
    """A scene: its objects, its background, and the prompt that describes it exactly."""

    objects: tuple[SceneObject, ...]
    background: str  # a key of BACKGROUND_COLOURS
    texture: str  # one of TEXTURES
    seed: int = 0  # seed of the texture noise
    size: int = IMAGE_SIZE
    extra: dict = field(default_factory=dict, compare=False)

    @property
    def prompt(self) -> str:
        phrases = [o.phrase() for o in self.objects]
        objects = phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]
        if self.texture == "plain":
            ground = f"on a {self.background} background"
        else:
            ground = f"on a {_TEXTURE_WORD[self.texture]} {self.background} background"
        return f"{objects}, {ground}"


def sample_scene(rng: random.Random, size: int = IMAGE_SIZE, max_objects: int = 3) -> Scene:
    """Draw a random scene: 1 to ``max_objects`` objects in distinct cells with distinct colours."""
    if not 1 <= max_objects <= 3:
        raise ValueError(f"max_objects must be 1, 2 or 3, got {max_objects}")
    count = rng.randint(1, max_objects)
    cells = rng.sample(range(9), count)
    colours = rng.sample(sorted(COLOURS), count)
    cell = size / 3
    objects = []
    for index, colour in zip(cells, colours, strict=True):
        kind, scale = rng.choice(SHAPES), rng.choice(SIZES)
        side = SIDE_FRACTION[scale] * size
        slack = (cell - side) / 2 * 0.6  # jitter inside the cell, never crossing into the next one
        row, col = divmod(index, 3)
        cx = (col + 0.5) * cell + rng.uniform(-slack, slack)
        cy = (row + 0.5) * cell + rng.uniform(-slack, slack)
        objects.append(SceneObject(kind, colour, scale, POSITIONS[index], (cx, cy), side))
    return Scene(tuple(objects), rng.choice(sorted(BACKGROUND_COLOURS)), rng.choice(TEXTURES),
                 seed=rng.randrange(2**31), size=size)


def scene_for_seed(seed: int, size: int = IMAGE_SIZE) -> Scene:
    """The scene of a seed: ``sample_scene(random.Random(seed))``."""
    return sample_scene(random.Random(seed), size=size)


def render(scene: Scene) -> Image.Image:
    """Draw the scene as an RGB image of ``scene.size`` pixels square."""
    image = Image.fromarray(_background(scene), "RGB")
    draw = ImageDraw.Draw(image)
    for obj in scene.objects:
        _draw_object(draw, obj, COLOURS[obj.colour])
    return image


def object_masks(scene: Scene) -> np.ndarray:
    """``(K, S, S)`` bool: the pixels of each object, in scene order (ground truth for "where merges fall")."""
    masks = np.zeros((len(scene.objects), scene.size, scene.size), dtype=bool)
    for k, obj in enumerate(scene.objects):
        canvas = Image.new("L", (scene.size, scene.size), 0)
        _draw_object(ImageDraw.Draw(canvas), obj, 255)
        masks[k] = np.asarray(canvas) > 0
    return masks


def object_tokens(scene: Scene, grid: tuple[int, int]) -> np.ndarray:
    """``(h, w)`` bool for a ``grid = (h, w)`` of tokens over the image: True where any pixel of the token's cell
    lies on an object (which tokens of a latent level are objects, for "where merges fall")."""
    h, w = grid
    if scene.size % h or scene.size % w:
        raise ValueError(f"grid {grid} does not divide the {scene.size} px image into whole cells")
    return object_masks(scene).any(0).reshape(h, scene.size // h, w, scene.size // w).any((1, 3))


def _draw_object(draw: ImageDraw.ImageDraw, obj: SceneObject, fill) -> None:
    cx, cy = obj.center
    h = obj.side / 2
    box = (cx - h, cy - h, cx + h, cy + h)
    if obj.shape == "circle":
        draw.ellipse(box, fill=fill)
    elif obj.shape == "square":
        draw.rectangle(box, fill=fill)
    else:  # an upright isosceles triangle filling the box
        draw.polygon([(cx, cy - h), (cx + h, cy + h), (cx - h, cy + h)], fill=fill)


def _background(scene: Scene) -> np.ndarray:
    base, shade = BACKGROUND_COLOURS[scene.background]
    s = scene.size
    ys, xs = np.mgrid[0:s, 0:s]
    period = max(4, s // 16)
    if scene.texture == "plain":
        level = np.full((s, s), base, dtype=np.float32)
    elif scene.texture == "striped":
        level = np.where((xs // period) % 2 == 0, base, shade).astype(np.float32)
    elif scene.texture == "checkered":
        level = np.where(((xs // period) + (ys // period)) % 2 == 0, base, shade).astype(np.float32)
    elif scene.texture == "gradient":
        level = base + (shade - base) * (ys / max(1, s - 1))
    else:  # noisy
        noise = np.random.default_rng(scene.seed).normal(0.0, 1.0, (s, s))
        level = base + 0.5 * abs(shade - base) * noise
    level = np.clip(level, 0, 255).astype(np.uint8)
    return np.repeat(level[:, :, None], 3, axis=2)
