"""A judge that needs no weights: does an image show the scene its prompt asked for?

Segment by the palette, find each requested object, score its attributes:

1. **Segment.** Backgrounds are achromatic and objects saturated (see :mod:`.scenes`), so a pixel whose
   chroma (max - min of RGB) is below ``MIN_CHROMA`` is background; any other pixel takes the nearest palette
   colour in RGB, or none when it is further than ``MAX_COLOUR_DISTANCE`` from all of them.
2. **Blobs.** 4-connected components per colour; components smaller than ``MIN_AREA_FRACTION`` of the image,
   or thin ones (fringes of blended colour along another object's edge), are ignored.
3. **Match.** Each requested object takes the largest blob of its colour (colour correct). When its colour is
   missing, the unclaimed blob nearest its cell stands in, so shape and position are still scored on whatever
   the model drew there (colour wrong).
4. **Attributes.** Shape: the ideal square, circle or upright triangle in the blob's bounding box that overlaps
   it best; position from the centroid's 3x3 cell; size from the bounding
   box side against the midpoint of the two rendered sizes. Count: the number of blobs equals the number of
   objects. The prompt is correct when the count is right and every object has every attribute right.

Pure numpy; deterministic. Validated on renders (``tests/test_shapes.py``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from .scenes import COLOURS, POSITIONS, SIDE_FRACTION, Scene

MIN_CHROMA = 60
MAX_COLOUR_DISTANCE = 110.0
MIN_AREA_FRACTION = 0.0025  # 41 pixels at 128 px: a quarter of the smallest rendered triangle
_PALETTE_NAMES = tuple(COLOURS)
_PALETTE = np.array([COLOURS[n] for n in _PALETTE_NAMES], dtype=np.float32)
ATTRIBUTES = ("colour", "shape", "position", "size")


@dataclass(frozen=True)
class Blob:
    """A connected region of one palette colour."""

    colour: str
    area: int
    centroid: tuple[float, float]  # (x, y)
    bbox: tuple[int, int, int, int]  # x0, y0, x1, y1 (inclusive)
    shape: str
    cell: int  # index into POSITIONS

    @property
    def side(self) -> float:
        return float(max(self.bbox[2] - self.bbox[0], self.bbox[3] - self.bbox[1]) + 1)


@dataclass(frozen=True)
class ObjectVerdict:
    """How one requested object came out."""

    colour: bool
    shape: bool
    position: bool
    size: bool
    found: bool  # a blob (of any colour) was matched to it

    @property
    def correct(self) -> bool:
        return self.colour and self.shape and self.position and self.size


@dataclass(frozen=True)
class SceneVerdict:
    """The judge's verdict on one image: per-object verdicts, the blob count and the whole-prompt result."""

    objects: tuple[ObjectVerdict, ...]
    num_blobs: int
    count: bool

    @property
    def prompt_correct(self) -> bool:
        return self.count and all(o.correct for o in self.objects)

    def scores(self) -> dict[str, float]:
        """Shares of objects with each attribute right, plus ``count`` and ``prompt`` (0 or 1)."""
        n = len(self.objects)
        out = {a: sum(getattr(o, a) for o in self.objects) / n for a in ATTRIBUTES}
        out["count"] = float(self.count)
        out["prompt"] = float(self.prompt_correct)
        return out

    def to_dict(self) -> dict:
        return {"objects": [asdict(o) for o in self.objects], "num_blobs": self.num_blobs, "count": self.count,
                "prompt_correct": self.prompt_correct}


def segment(image: np.ndarray) -> np.ndarray:
    """``(H, W)`` int: palette index of each pixel (see ``COLOURS``' order), -1 for background/unknown."""
    rgb = np.asarray(image, dtype=np.float32)[..., :3]
    chroma = rgb.max(axis=-1) - rgb.min(axis=-1)
    distance = np.linalg.norm(rgb[:, :, None, :] - _PALETTE[None, None], axis=-1)  # (H, W, P)
    label = distance.argmin(axis=-1)
    label[(chroma < MIN_CHROMA) | (distance.min(axis=-1) > MAX_COLOUR_DISTANCE)] = -1
    return label


def find_blobs(image: np.ndarray) -> list[Blob]:
    """Every blob of at least ``MIN_AREA_FRACTION`` of the image, largest first."""
    labels = segment(image)
    size = labels.shape[0]
    min_area = max(4, round(MIN_AREA_FRACTION * labels.size))
    blobs = []
    for index, name in enumerate(_PALETTE_NAMES):
        mask = labels == index
        if mask.sum() < min_area:
            continue
        components = connected_components(mask)
        core = _erode(mask)
        for k in range(1, components.max() + 1):
            member = components == k
            # Fringes (a thin ring of blended colour around another object's edge) vanish under erosion.
            if (member & core).sum() >= min_area // 2 and member.sum() >= min_area:
                ys, xs = np.nonzero(member)
                blobs.append(_describe(name, xs, ys, size))
    return sorted(blobs, key=lambda b: -b.area)


def judge(image, scene: Scene) -> SceneVerdict:
    """Score ``image`` (PIL image or ``(H, W, 3)`` array, any size) against the scene it was asked for."""
    array = np.asarray(image)
    if array.shape[0] != scene.size:  # judge in the scene's own pixel units
        from PIL import Image

        array = np.asarray(Image.fromarray(array).resize((scene.size, scene.size), Image.BILINEAR))
    blobs = find_blobs(array)
    free = list(blobs)
    by_colour: dict[int, Blob] = {}
    for i, obj in enumerate(scene.objects):  # colours are distinct within a scene
        match = next((b for b in free if b.colour == obj.colour), None)
        if match is not None:
            by_colour[i] = match
            free.remove(match)
    verdicts = []
    large_threshold = (SIDE_FRACTION["small"] + SIDE_FRACTION["large"]) / 2 * scene.size
    for i, obj in enumerate(scene.objects):
        blob = by_colour.get(i)
        if blob is None and free:  # colour missing: judge whatever stands nearest its cell
            blob = min(free, key=lambda b: _cell_distance(b.cell, POSITIONS.index(obj.position)))
            free.remove(blob)
        if blob is None:
            verdicts.append(ObjectVerdict(False, False, False, False, False))
            continue
        size = "large" if blob.side >= large_threshold else "small"
        verdicts.append(ObjectVerdict(
            colour=blob.colour == obj.colour,
            shape=blob.shape == obj.shape,
            position=POSITIONS[blob.cell] == obj.position,
            size=size == obj.size,
            found=True,
        ))
    return SceneVerdict(tuple(verdicts), len(blobs), len(blobs) == len(scene.objects))


def connected_components(mask: np.ndarray) -> np.ndarray:
    """4-connected components of a bool mask: ``(H, W)`` int labels 1..K, 0 outside (two-pass union-find)."""
    h, w = mask.shape
    labels = np.zeros((h, w), dtype=np.int64)
    parent = [0]

    def find(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    for y, x in zip(*np.nonzero(mask), strict=True):
        up = labels[y - 1, x] if y > 0 else 0
        left = labels[y, x - 1] if x > 0 else 0
        if up and left:
            a, b = find(up), find(left)
            labels[y, x] = min(a, b)
            parent[max(a, b)] = min(a, b)
        elif up or left:
            labels[y, x] = up or left
        else:
            parent.append(len(parent))
            labels[y, x] = len(parent) - 1
    roots = np.array([find(i) for i in range(len(parent))])
    _, dense = np.unique(roots, return_inverse=True)
    return dense[labels]


def _erode(mask: np.ndarray) -> np.ndarray:
    """3x3 binary erosion (pixels whose 8 neighbours are all in the mask; the border counts as outside)."""
    padded = np.pad(mask, 1)
    h, w = mask.shape
    out = np.ones_like(mask)
    for dy in range(3):
        for dx in range(3):
            out &= padded[dy:dy + h, dx:dx + w]
    return out


def _describe(colour: str, xs: np.ndarray, ys: np.ndarray, size: int) -> Blob:
    x0, x1, y0, y1 = int(xs.min()), int(xs.max()), int(ys.min()), int(ys.max())
    cx, cy = float(xs.mean()), float(ys.mean())
    col, row = min(2, int(cx * 3 // size)), min(2, int(cy * 3 // size))
    return Blob(colour, len(xs), (cx, cy), (x0, y0, x1, y1), classify_shape(xs, ys), row * 3 + col)


def classify_shape(xs: np.ndarray, ys: np.ndarray) -> str:
    """``"square"``, ``"circle"`` or ``"triangle"`` from a blob's pixel coordinates: the ideal shape, drawn in the
    blob's bounding box, that overlaps the blob best (intersection over union). Blurred edges erode every shape
    alike, so this holds for soft, generated shapes where fixed fill-ratio thresholds do not."""
    x0, y0 = xs.min(), ys.min()
    w, h = xs.max() - x0 + 1, ys.max() - y0 + 1
    blob = np.zeros((h, w), dtype=bool)
    blob[ys - y0, xs - x0] = True
    u = (np.arange(w) + 0.5) / w - 0.5  # -0.5 .. 0.5 across the box
    v = (np.arange(h) + 0.5) / h  # 0 at the top, 1 at the bottom
    templates = {
        "square": np.ones((h, w), dtype=bool),
        "circle": (u[None, :] ** 2 + (v[:, None] - 0.5) ** 2) <= 0.25,
        "triangle": np.abs(u)[None, :] <= v[:, None] / 2,
    }
    iou = {name: (blob & t).sum() / max(1, (blob | t).sum()) for name, t in templates.items()}
    return max(iou, key=iou.get)


def _cell_distance(a: int, b: int) -> int:
    (ra, ca), (rb, cb) = divmod(a, 3), divmod(b, 3)
    return abs(ra - rb) + abs(ca - cb)
