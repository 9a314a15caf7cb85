"""The toy world: procedural 64x64 images of shapes with known attributes, and their captions (pure numpy/PIL).

Everything is a pure function of a seed, so the tiny CLIP (`stori-toy`), its benchmarks and the tests
all see the same world. Attributes (each image has exactly one value of each):

- shape: circle, square, triangle, star
- color: red, green, blue, yellow, purple, orange
- pattern: plain, striped, dotted
- size: small, large
- background: white, black, gray

Nuisances that captions never mention: exact size within the size word's range, stripe orientation, pattern phase, color
jitter and pixel noise. A fixed set of (shape, color, pattern) triples is held out of pre-training
(:data:`HELDOUT`), so zero-shot accuracy is measured on combinations the model never saw.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

IMAGE_SIZE = 64

ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "shape": ("circle", "square", "triangle", "star"),
    "color": ("red", "green", "blue", "yellow", "purple", "orange"),
    "pattern": ("plain", "striped", "dotted"),
    "size": ("small", "large"),
    "background": ("white", "black", "gray"),
}

_RGB = {
    "red": (215, 35, 35), "green": (40, 165, 55), "blue": (40, 80, 225),
    "yellow": (235, 210, 35), "purple": (140, 55, 190), "orange": (245, 135, 25),
}
_BG = {"white": 238, "black": 22, "gray": 128}
_RADIUS = {"small": (10.0, 13.0), "large": (18.0, 22.0)}
# Objects are centred and upright: with position/rotation jitter a 4-block ViT needs far more than the
# pre-training budget to learn shape (measured: ~35% shape accuracy after 300 steps with ±5 px, ±0.2 rad).
_JITTER = 0.0  # pixels of position jitter around the centre
_ROTATION = 0.0  # radians of rotation jitter


def _heldout_triples() -> frozenset[tuple[str, str, str]]:
    """Every 8th (shape, color, pattern) triple in a fixed shuffle: 9 of 72, each value still seen."""
    triples = [(s, c, p) for s in ATTRIBUTES["shape"] for c in ATTRIBUTES["color"] for p in ATTRIBUTES["pattern"]]
    random.Random(1234).shuffle(triples)
    return frozenset(triples[::8])


HELDOUT: frozenset[tuple[str, str, str]] = _heldout_triples()


@dataclass(frozen=True)
class ToyObject:
    """One image's attributes (the caption-visible ones)."""

    shape: str
    color: str
    pattern: str
    size: str
    background: str

    @property
    def triple(self) -> tuple[str, str, str]:
        return (self.shape, self.color, self.pattern)

    def as_dict(self) -> dict[str, str]:
        return {k: getattr(self, k) for k in ATTRIBUTES}


def sample_object(rng: random.Random, heldout: bool | None = False, **fixed: str) -> ToyObject:
    """Draw attributes uniformly; ``fixed`` pins some of them.

    Args:
        rng: Random source.
        heldout: False → only pre-training triples, True → only held-out triples, None → any.
        **fixed: Attribute values to pin, e.g. ``color="red"``.
    """
    for key, value in fixed.items():
        if key not in ATTRIBUTES or value not in ATTRIBUTES[key]:
            raise ValueError(f"unknown toy attribute {key}={value!r}; choose from {ATTRIBUTES}")
    for _ in range(10_000):
        obj = ToyObject(**{k: fixed.get(k) or rng.choice(v) for k, v in ATTRIBUTES.items()})
        if heldout is None or (obj.triple in HELDOUT) == heldout:
            return obj
    raise ValueError(f"no {'held-out' if heldout else 'training'} triple matches {fixed}")


def _polygon(shape: str, cx: float, cy: float, r: float, rot: float) -> list[tuple[float, float]]:
    if shape == "square":
        n, radii = 4, [r * 0.92 * math.sqrt(2)] * 4  # area close to the circle's at the same size word
        rot += math.pi / 4
    elif shape == "triangle":
        n, radii = 3, [r * 1.25] * 3
        rot -= math.pi / 2
    else:  # star
        n, radii = 10, [r * 1.25 if i % 2 == 0 else r * 0.55 for i in range(10)]
        rot -= math.pi / 2
    return [(cx + radii[i] * math.cos(rot + 2 * math.pi * i / n), cy + radii[i] * math.sin(rot + 2 * math.pi * i / n))
            for i in range(n)]


def _pattern_mask(pattern: str, rng: random.Random) -> np.ndarray:
    """[H, W] bool: where the pattern's dark ink goes."""
    yy, xx = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE].astype(np.float32)
    if pattern == "plain":
        return np.zeros((IMAGE_SIZE, IMAGE_SIZE), dtype=bool)
    if pattern == "striped":
        theta = rng.choice((0.0, math.pi / 2, math.pi / 4, -math.pi / 4)) + rng.uniform(-0.15, 0.15)
        u = xx * math.cos(theta) + yy * math.sin(theta) + rng.uniform(0, 7)
        return (u % 7.0) < 3.5
    if pattern == "dotted":
        px, py = rng.uniform(0, 8), rng.uniform(0, 8)
        dx = (xx + px) % 8.0 - 4.0
        dy = (yy + py) % 8.0 - 4.0
        return dx * dx + dy * dy < 2.0**2
    raise ValueError(f"unknown pattern {pattern!r}")


def render(obj: ToyObject, rng: random.Random) -> np.ndarray:
    """Draw one image. Returns [64, 64, 3] uint8."""
    lo, hi = _RADIUS[obj.size]
    r = rng.uniform(lo, hi)
    c = IMAGE_SIZE / 2
    cx, cy = c + rng.uniform(-_JITTER, _JITTER), c + rng.uniform(-_JITTER, _JITTER)
    mask_img = Image.new("L", (IMAGE_SIZE, IMAGE_SIZE), 0)
    draw = ImageDraw.Draw(mask_img)
    if obj.shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=255)
    else:
        draw.polygon(_polygon(obj.shape, cx, cy, r, rng.uniform(-_ROTATION, _ROTATION)), fill=255)
    mask = np.asarray(mask_img, dtype=np.float32)[..., None] / 255.0  # [H, W, 1]

    color = np.array([c + rng.uniform(-18, 18) for c in _RGB[obj.color]], dtype=np.float32).clip(0, 255)
    fg = np.broadcast_to(color, (IMAGE_SIZE, IMAGE_SIZE, 3)).copy()  # [H, W, 3]
    ink = _pattern_mask(obj.pattern, rng)
    fg[ink] *= 0.3
    bg_level = _BG[obj.background] + rng.uniform(-12, 12)
    bg = np.full((IMAGE_SIZE, IMAGE_SIZE, 3), bg_level, dtype=np.float32)
    img = mask * fg + (1 - mask) * bg
    noise = np.random.default_rng(rng.getrandbits(32)).normal(0, 5, img.shape)
    return (img + noise).clip(0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------- captions
_PREFIX = ("a photo of", "an image of", "a picture of", "a drawing of", "there is", "")
_PATTERN_ADJ = {"plain": ("plain", "solid"), "striped": ("striped",), "dotted": ("dotted", "spotted")}
_PATTERN_PP = {"plain": ("with no pattern",), "striped": ("with stripes",), "dotted": ("with dots", "with spots")}
_GENERIC = ("shape", "object", "thing")


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def caption(obj: ToyObject, rng: random.Random, p_mention: dict[str, float] | None = None) -> str:
    """A caption that mentions a random subset of ``obj``'s attributes in a random word order."""
    return caption_with_mentions(obj, rng, p_mention)[0]


def caption_with_mentions(
    obj: ToyObject, rng: random.Random, p_mention: dict[str, float] | None = None
) -> tuple[str, frozenset[str]]:
    """Like :func:`caption`, also returning the names of the attributes the caption mentions."""
    p = {"shape": 0.85, "color": 0.85, "pattern": 0.8, "size": 0.6, "background": 0.5, **(p_mention or {})}
    say = {k: rng.random() < p[k] for k in ATTRIBUTES}
    if not any(say.values()):
        say[rng.choice(list(ATTRIBUTES))] = True
    noun = obj.shape if say["shape"] else rng.choice(_GENERIC)
    adjs = []
    if say["size"]:
        adjs.append(obj.size if rng.random() < 0.8 else {"small": "tiny", "large": "big"}[obj.size])
    if say["color"]:
        adjs.append(obj.color)
    pattern_pp = None
    if say["pattern"]:
        if rng.random() < 0.65:
            adjs.append(rng.choice(_PATTERN_ADJ[obj.pattern]))
        else:
            pattern_pp = rng.choice(_PATTERN_PP[obj.pattern])
    if rng.random() < 0.3:
        rng.shuffle(adjs)  # mostly canonical order (size, color, pattern), sometimes any
    post: list[str] = []
    if pattern_pp:
        post.append(pattern_pp)
    if say["background"]:
        post.append(rng.choice(("on a {} background", "against a {} background", "in front of a {} background"))
                    .format(obj.background))
    rng.shuffle(post)
    form = rng.random()
    if form < 0.15 and adjs:  # predicative: "a circle that is red and striped"
        np_ = f"{_article(noun)} {noun}"
        text = " ".join([np_, "that is", " and ".join(adjs)] + post)
    else:
        np_ = " ".join(adjs + [noun])
        text = " ".join([f"{_article(np_)} {np_}"] + post)
    prefix = rng.choice(_PREFIX)
    text = f"{prefix} {text}".strip() if prefix else text
    mentioned = frozenset(k for k, v in say.items() if v)
    return text + ("." if rng.random() < 0.7 else ""), mentioned


def attribute_prompts(attribute: str) -> dict[str, list[str]]:
    """Zero-shot prompts per value of one attribute (other attributes unmentioned)."""
    if attribute == "shape":
        tmpl = ("a photo of a {}.", "a {}.")
        return {v: [t.format(v) for t in tmpl] for v in ATTRIBUTES["shape"]}
    if attribute == "background":
        tmpl = ("a shape on a {} background.", "an object against a {} background.")
        return {v: [t.format(v) for t in tmpl] for v in ATTRIBUTES["background"]}
    tmpl = ("a photo of a {} shape.", "a {} object.")
    return {v: [t.format(v) for t in tmpl] for v in ATTRIBUTES[attribute]}


def sample_batch(
    rng: random.Random, n: int, heldout: bool | None = False
) -> tuple[np.ndarray, list[str], list[ToyObject], list[frozenset[str]]]:
    """``n`` fresh (image, caption) pairs: ([n, 64, 64, 3] uint8, captions, objects, mentioned attributes)."""
    objs = [sample_object(rng, heldout=heldout) for _ in range(n)]
    images = np.stack([render(o, rng) for o in objs])
    caps = [caption_with_mentions(o, rng) for o in objs]
    return images, [c[0] for c in caps], objs, [c[1] for c in caps]


def consistent(objs: list[ToyObject], described: list[ToyObject], mentions: list[frozenset[str]]) -> np.ndarray:
    """[N, M] bool: image i satisfies caption j (agrees on every attribute caption j mentions)."""
    out = np.ones((len(objs), len(described)), dtype=bool)
    for key in ATTRIBUTES:
        a = np.array([getattr(o, key) for o in objs])[:, None]  # [N, 1]
        b = np.array([getattr(o, key) for o in described])[None, :]  # [1, M]
        said = np.array([key in m for m in mentions])[None, :]  # [1, M]
        out &= (a == b) | ~said
    return out
