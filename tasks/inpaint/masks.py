"""Irregular inpainting masks, drawn deterministically: one mask per ``(seed, split, index)``.

    from tasks.inpaint import masks
    rng = masks.mask_rng(seed=0, split="test", index=7)
    hole, draws = masks.draw_in(512, "r20-30", border=False, rng=rng)   # (512, 512) bool, True = hole
    masks.stats(hole, masks.margin_for(512))   # {"hole_ratio": 0.27…, "bucket": "r20-30", "border": False}
    png = masks.encode_png(hole)               # 1-bit PNG, pixel 1 = hole

Conventions (the PConv paper's test set, research note inpainting §1.3):

- True / 1 = hole everywhere in this module. (The paper's M is the opposite, 1 = valid; NVIDIA's
  mask PNGs are white = hole, which ``from_image`` reads.)
- Hole-ratio buckets are left-open, right-closed: (0.01, 0.1], (0.1, 0.2], …, (0.5, 0.6].
- A mask is "border" when at least one hole pixel lies in the outer frame of width ``margin``
  (50 px at 512², scaled with the size), "no-border" when none does. The flag is always measured
  from the pixels, never assumed from how the mask was drawn.

How a mask is drawn (``draw``), after NVIDIA's recipe and DeepFill v2's / LaMa's free-form
strokes (research note §3): a target hole ratio (the "intensity") is drawn first and sets the
scale of everything else; random-walk polylines (``cv2.line`` segments with round joints) of
varying width, step length, curvature and count, and filled ellipses, go on a canvas 1.5× the
output; the canvas is rotated, translated and cropped to the output (``warpAffine``), and the
holes are dilated by a random disc (radius 4–24 px at 512, the recipe's 9–49 px kernels; small
targets draw from the low end). Strokes are added in rounds until the measured ratio reaches
the target, each round sized from the shortfall (an area budget under a Boolean-model overlap
correction), so a target in a bucket usually lands in it; ``draw_in`` rejection-samples until it
does (70–95 % of draws are kept). One draw costs ~1–5 ms at 256², ~4–15 ms at 512².
"""

from __future__ import annotations

import io
import math
import zlib
from bisect import bisect_left

import cv2
import numpy as np

from tasks.errors import BadInput

BUCKETS = ("r01-10", "r10-20", "r20-30", "r30-40", "r40-50", "r50-60")
EDGES = (0.01, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6)  # bucket i is (EDGES[i], EDGES[i + 1]]
BORDER_FLAGS = ("border", "no-border")
GENERATOR = "visionflow.irregular/1"  # bump whenever draw() makes other pixels for the same rng

MARGIN_AT_512 = 50  # paper §4.1: no-border masks keep every hole 50 px from the border at 512²
CANVAS = 1.5  # canvas side / output side: any rotation of the output square fits inside (√2)
DILATION = (4, 24)  # disc radius at 512: kernels of 9–49 px, NVIDIA's training-mask recipe
ROUNDS = 12  # stroke rounds per draw before giving up on the target (the result is measured anyway)
OVERLAP = 0.85  # first-round guess of covered area / drawn area (strokes overlap themselves)
SAFETY = 1  # px between an inner element's rim and the frame: rounding of points and the chamfer disc
FIRST, STEP = 0.6, 0.75  # share of the missing area budget drawn in the first / a later round


class MaskError(BadInput):
    """No mask could be drawn as asked; the message names the bucket, flag and size."""


# --- buckets, margins, statistics -------------------------------------------------------------


def bucket_of(ratio: float) -> str | None:
    """The bucket of a hole ratio, None outside (0.01, 0.6]."""
    i = bisect_left(EDGES, ratio)  # ratio in (EDGES[i-1], EDGES[i]]
    return BUCKETS[i - 1] if 1 <= i < len(EDGES) else None


def bucket_range(bucket: str) -> tuple[float, float]:
    if bucket not in BUCKETS:
        raise MaskError(f"unknown bucket {bucket!r}; expected one of {', '.join(BUCKETS)}")
    i = BUCKETS.index(bucket)
    return EDGES[i], EDGES[i + 1]


def margin_for(size: int) -> int:
    return round(MARGIN_AT_512 * size / 512)


def frame(shape: tuple[int, int], margin: int) -> np.ndarray:
    """True on the outer frame of width ``margin``: the pixels that make a mask "border"."""
    inner = np.zeros(shape, bool)
    h, w = shape
    if margin < min(h, w) / 2:
        inner[margin:h - margin, margin:w - margin] = True
    return ~inner if margin > 0 else inner


def stats(hole: np.ndarray, margin: int) -> dict:
    hole = np.asarray(hole, bool)
    ratio = float(np.count_nonzero(hole)) / hole.size
    border = bool(np.any(hole & frame(hole.shape, margin)))
    return {"hole_ratio": ratio, "bucket": bucket_of(ratio), "border": border}


# --- determinism ------------------------------------------------------------------------------


def split_code(split: str) -> int:
    """A stable number for a split name (``hash`` is salted per process; crc32 is not)."""
    return zlib.crc32(split.encode())


def mask_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The generator of one mask: any mask can be redrawn alone, in any process, identically."""
    return np.random.default_rng([seed, split_code(split), index])


# --- drawing ----------------------------------------------------------------------------------


def draw(size: int, rng: np.random.Generator, *, target: float | None = None,
         inner: bool = False) -> np.ndarray:
    """One free-form mask, (size, size) bool, True = hole.

    ``target`` is the hole ratio to aim at (drawn uniformly from (0.01, 0.6] when None): strokes
    are added until the measured ratio reaches it, so the result lands at or a little above it.
    ``inner`` lays the strokes out inside the inner region, ``margin_for(size)`` from every
    edge, with room for their width and dilation, so the mask comes out "no-border"; rotating
    and cropping such a layout would only cut strokes off at the frame, so it is not done.
    """
    t = float(rng.uniform(EDGES[0], EDGES[-1])) if target is None else float(target)
    style = _Style(size, t, rng)
    layout = _InnerLayout(size, style) if inner else _CanvasLayout(size, style, rng)
    t_region = min(t * layout.coverage_scale, 0.97)  # the target as a share of the drawing region
    need = -math.log1p(-t_region)  # Boolean model: coverage = 1 - exp(-drawn area / region area)
    efficiency, drawn = OVERLAP, 0.0
    hole = np.zeros((size, size), bool)
    for _ in range(ROUNDS):
        have = min(np.count_nonzero(hole) / hole.size * layout.coverage_scale, 0.999)
        if have >= t_region:
            break
        if have > 0 and drawn > 0:
            efficiency = -math.log1p(-have) / drawn  # what this mask's strokes really cover
        # Short of the target by design: the output sees only part of what is drawn, so one
        # round's coverage is partly luck; closing 3/4 of the remaining gap a round lands close.
        budget = (need + math.log1p(-have)) / efficiency * (STEP if drawn else FIRST)
        added = 0.0
        while added < budget:
            added += style.add(layout, rng) / layout.region_area
        drawn += added
        hole = layout.render()
    return hole


class _Style:
    """The element parameters of one mask, scaled with the image and with √target: dilation
    radius, stroke widths, step lengths, vertex counts, curvature, blob share and blob axes."""

    def __init__(self, size: int, target: float, rng: np.random.Generator):
        s = size / 512
        g = math.sqrt(min(max(target, EDGES[0]), EDGES[-1]) / EDGES[-1])
        lo, hi = DILATION
        self.radius = int(round(s * rng.uniform(lo, lo + (hi - lo) * g)))
        self.width = (max(1.0, 2 * s), max(1.5, s * (4 + 36 * g)))
        self.step = (s * 8, max(2.0, s * (15 + 85 * g)))
        self.vertices = (2, int(rng.integers(4, 13)))
        self.curvature = float(rng.uniform(0.1, 1.6))  # sd of the heading change per step, radians
        self.blobs = float(rng.uniform(0.0, 0.4))  # share of elements that are filled ellipses
        self.axis = (max(1.0, s * 4), max(1.5, s * (6 + 54 * g)))
        # How far outside the output an element may start and still reach into it.
        self.extent = self.step[1] + max(self.width[1] / 2, self.axis[1]) + self.radius

    def add(self, layout, rng: np.random.Generator) -> float:
        """Draw one element; returns its estimated area after dilation, in pixels."""
        r = self.radius
        if rng.random() < self.blobs:
            a, b = (layout.fit(v) for v in rng.uniform(*self.axis, size=2))
            x, y = layout.point(rng, max(a, b) + r + SAFETY)
            axes = (max(1, int(round(a))), max(1, int(round(b))))
            cv2.ellipse(layout.canvas, (int(round(x)), int(round(y))), axes, float(rng.uniform(0, 180)),
                        0, 360, 255, -1)
            return math.pi * (a + r) * (b + r)
        thickness = max(1, int(round(2 * layout.fit(rng.uniform(*self.width) / 2))))
        reach = thickness / 2 + r + SAFETY
        n = int(rng.integers(self.vertices[0], self.vertices[1] + 1))
        steps = rng.uniform(*self.step, size=n).tolist()
        # The heading random-walks: a mean turn per stroke (curl) plus per-step noise.
        turns = rng.normal(rng.uniform(-0.5, 0.5), self.curvature, size=n).tolist()
        heading = float(rng.uniform(0, 2 * math.pi))
        x, y = layout.point(rng, reach)
        lo, hi = layout.bounds(reach)
        points, length = [(x, y)], 0.0
        for step, turn in zip(steps, turns):  # plain floats: numpy costs more on 2–12 vertices
            heading += turn
            nx = min(max(x + step * math.cos(heading), lo), hi)
            ny = min(max(y + step * math.sin(heading), lo), hi)
            length += math.hypot(nx - x, ny - y)
            x, y = nx, ny
            points.append((x, y))
        # cv2.polylines is cv2.line per segment, with round caps and so round joints.
        cv2.polylines(layout.canvas, [np.rint(points).astype(np.int32)], False, 255, thickness)
        return length * (thickness + 2 * r) + math.pi * (thickness / 2 + r) ** 2


class _CanvasLayout:
    """Elements on a canvas 1.5× the (padded, extended) output, which is then rotated about its
    centre, translated and cropped to the output. Elements start anywhere they can still reach
    into the output, uniformly in output coordinates. Dilation follows the crop (a disc commutes
    with a rotation) on a crop padded by the radius, so holes just outside still grow in."""

    def __init__(self, size: int, style: _Style, rng: np.random.Generator):
        self.size, self.radius = size, style.radius
        self.pad = style.radius + 1
        self.side = side = size + 2 * self.pad
        self.extent = style.extent
        reach = side + 2 * self.extent
        c = int(math.ceil(CANVAS * reach))
        self.canvas = np.zeros((c, c), np.uint8)
        self.region_area = float(reach * reach)
        self.coverage_scale = 1.0  # the output is a stationary window onto the region
        angle = float(rng.uniform(0, 360))
        spread = reach * (abs(math.cos(math.radians(angle))) + abs(math.sin(math.radians(angle))))
        room = max(0.0, (c - spread) / 2)  # translations that keep the region on the canvas
        dx, dy = rng.uniform(-room, room, size=2)
        self.matrix = cv2.getRotationMatrix2D((c / 2, c / 2), angle, 1.0)  # canvas → output
        self.matrix[:, 2] += (side / 2 - c / 2 - dx, side / 2 - c / 2 - dy)
        self.inverse = cv2.invertAffineTransform(self.matrix)

    def fit(self, half: float) -> float:
        return half

    def point(self, rng: np.random.Generator, reach: float) -> tuple[float, float]:
        u, v = rng.uniform(-self.extent, self.side + self.extent, size=2).tolist()
        (a, b, c), (d, e, f) = self.inverse.tolist()
        return a * u + b * v + c, d * u + e * v + f

    def bounds(self, reach: float) -> tuple[float, float]:
        return 0.0, float(self.canvas.shape[0] - 1)

    def render(self) -> np.ndarray:
        out = cv2.warpAffine(self.canvas, self.matrix, (self.side, self.side), flags=cv2.INTER_NEAREST,
                             borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        p = self.pad
        return dilate(out, self.radius)[p:p + self.size, p:p + self.size]


class _InnerLayout:
    """Elements inside the inner region only, each kept its reach (half its width or axis plus
    the dilation radius) away from the frame; no warp."""

    def __init__(self, size: int, style: _Style):
        self.size, self.radius = size, style.radius
        margin = margin_for(size)
        self.lo, self.hi = margin, size - 1 - margin
        self.canvas = np.zeros((size, size), np.uint8)
        inner = max(1, self.hi - self.lo + 1)
        self.region_area = float(inner * inner)
        self.coverage_scale = size * size / self.region_area  # hole pixels / inner pixels

    def fit(self, half: float) -> float:
        """Shrink an element's half-extent so that it fits the inner region with its dilation."""
        return max(0.5, min(half, (self.hi - self.lo) / 2 - self.radius - SAFETY))

    def point(self, rng: np.random.Generator, reach: float) -> tuple[float, float]:
        lo, hi = self.bounds(reach)
        x, y = rng.uniform(lo, hi, size=2).tolist()
        return x, y

    def bounds(self, reach: float) -> tuple[float, float]:
        lo, hi = self.lo + math.ceil(reach), self.hi - math.ceil(reach)
        return (lo, hi) if lo <= hi else ((self.lo + self.hi) / 2,) * 2

    def render(self) -> np.ndarray:
        return dilate(self.canvas, self.radius)


def dilate(image: np.ndarray, radius: int) -> np.ndarray:
    """Nonzero pixels grown by a disc of ``radius`` → bool. A distance-transform threshold (5×5
    chamfer L2): the disc of a (2r+1)² elliptical kernel to within a pixel on its rim, at a cost
    that does not grow with the radius (cv2.dilate with a 49 px ellipse costs 7× more at 512²)."""
    if radius <= 0:
        return image > 0
    _, background = cv2.threshold(image, 0, 1, cv2.THRESH_BINARY_INV)  # 1 where no hole
    return cv2.distanceTransform(background, cv2.DIST_L2, cv2.DIST_MASK_5) <= radius


def draw_in(size: int, bucket: str, border: bool | None, rng: np.random.Generator,
            max_draws: int = 200) -> tuple[np.ndarray, int]:
    """A mask in ``bucket`` (and with the border flag ``border`` unless None), by rejection:
    each draw aims at a ratio uniform in the bucket, and is kept only if its measured bucket and
    flag match. No-border draws lay their strokes out in the inner region; with ``border=None``
    half the draws do, so the masks span both test conditions. Returns (mask, draws taken)."""
    lo, hi = bucket_range(bucket)
    for draws in range(1, max_draws + 1):
        target = float(rng.uniform(lo, hi))
        inner = (not border) if border is not None else bool(rng.random() < 0.5)
        hole = draw(size, rng, target=target, inner=inner)
        s = stats(hole, margin_for(size))
        if s["bucket"] == bucket and (border is None or s["border"] == border):
            return hole, draws
    flag = "any border flag" if border is None else BORDER_FLAGS[0 if border else 1]
    raise MaskError(f"no {size}² mask in bucket {bucket} ({flag}) after {max_draws} draws; "
                    "raise max_draws or use a larger size")


# --- encoding ---------------------------------------------------------------------------------


def encode_png(hole: np.ndarray) -> bytes:
    """A 1-bit PNG (Pillow mode "1"), pixel 1 (white) = hole."""
    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(hole, dtype=bool)).save(out, format="PNG")
    return out.getvalue()


def decode_png(data: bytes) -> np.ndarray:
    """PNG bytes → bool array, True = hole (white, or any gray level above 127). Bytes that are
    no readable image raise ``MaskError``."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.mode == "1":
                return np.array(im, dtype=bool)
            return np.asarray(im.convert("L")) > 127
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:  # PIL's ways of saying "damaged"
        raise MaskError(f"mask image unreadable ({type(exc).__name__}: {exc})") from None


def from_image(array: np.ndarray, threshold: float = 127, size: int | None = None,
               invert: bool = False) -> np.ndarray:
    """A mask image → bool (True = hole): gray levels above ``threshold`` are holes (NVIDIA's
    masks: white 255 = hole; ``invert`` for sets where black is the hole). RGB(A) is read as its
    luma (alpha ignored). With ``size``, resized to size × size by nearest neighbour (a
    non-square mask is stretched, not cropped)."""
    array = np.asarray(array)
    if array.dtype == bool:
        hole = array.copy()
    else:
        if array.ndim == 3:
            rgb = array[..., :3].astype(np.float64)
            gray = rgb @ np.array([0.299, 0.587, 0.114]) if rgb.shape[-1] == 3 else rgb[..., 0]
        elif array.ndim == 2:
            gray = array
        else:
            raise MaskError(f"a mask image must be (H, W) or (H, W, C), got shape {array.shape}")
        hole = gray > threshold
    if invert:
        hole = ~hole
    if size is not None and hole.shape != (size, size):
        resized = cv2.resize(hole.astype(np.uint8), (size, size), interpolation=cv2.INTER_NEAREST_EXACT)
        hole = resized > 0
    return hole
