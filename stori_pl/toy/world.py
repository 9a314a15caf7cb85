"""Toy world v2: procedural 64x64 scenes with known attributes, and captions that need composition (numpy/PIL).

Everything is a pure function of a seed, so the tiny CLIP (`stori-toy`), its benchmarks and the tests all see
the same world. A scene has one main object, centred, and sometimes a small second object, the
*distractor*, in a corner.

- Main object: shape (circle, square, triangle, star), color (red, green, blue, yellow, purple, orange), pattern
  (plain, striped, dotted), size (small, large); background (white, black, gray).
- Distractor (optional): shape, color (always plain) and corner (top left, top right, bottom left, bottom right).
- Kinds: eight invented nouns (:data:`KINDS`) whose look depends on a state word, ``wet`` or ``dry``. A *wet
  blicket* is a red striped circle and a *dry blicket* a blue dotted circle, while a *wet dax* is a blue striped
  circle and a *dry dax* a red dotted circle: the two nouns of a shape share every color and pattern, so the noun
  alone is ambiguous (a bag of its looks' words is the same for both) and only the state resolves it — the state
  interacts with the class. A scene *is* a wet blicket whenever its main object looks like one.

Captions bind attributes to the right object ("a red circle with a small blue star in the top left corner" vs
"a blue circle with a small red star ..."), name kinds with or without their state, use synonyms now and then and
get a wrong value with a small probability (label noise, as in web captions). Nuisances no caption mentions:
exact size, position jitter, stripe orientation, pattern phase, color jitter, pixel noise. A fixed set of (shape,
color, pattern) triples is held out of pre-training (:data:`HELDOUT`, kinds' looks excluded), so zero-shot accuracy
is measured on combinations the model never saw.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, fields, replace

import numpy as np
from PIL import Image, ImageDraw

IMAGE_SIZE = 64
WORLD_VERSION = 2

ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "shape": ("circle", "square", "triangle", "star"),
    "color": ("red", "green", "blue", "yellow", "purple", "orange"),
    "pattern": ("plain", "striped", "dotted"),
    "size": ("small", "large"),
    "background": ("white", "black", "gray"),
}
CORNERS = ("top left", "top right", "bottom left", "bottom right")
STATES = ("wet", "dry")
# noun -> {state: (shape, color, pattern)}; the two nouns of a shape swap colors (an XOR of color and pattern)
KINDS: dict[str, dict[str, tuple[str, str, str]]] = {
    "blicket": {"wet": ("circle", "red", "striped"), "dry": ("circle", "blue", "dotted")},
    "dax": {"wet": ("circle", "blue", "striped"), "dry": ("circle", "red", "dotted")},
    "wug": {"wet": ("square", "green", "plain"), "dry": ("square", "yellow", "striped")},
    "fep": {"wet": ("square", "yellow", "plain"), "dry": ("square", "green", "striped")},
    "toma": {"wet": ("triangle", "purple", "dotted"), "dry": ("triangle", "orange", "plain")},
    "zorp": {"wet": ("triangle", "orange", "dotted"), "dry": ("triangle", "purple", "plain")},
    "kiki": {"wet": ("star", "red", "dotted"), "dry": ("star", "green", "striped")},
    "bouba": {"wet": ("star", "green", "dotted"), "dry": ("star", "red", "striped")},
}
LOOK_KIND: dict[tuple[str, str, str], tuple[str, str]] = {
    look: (noun, state) for noun, states in KINDS.items() for state, look in states.items()
}

_RGB = {
    "red": (215, 35, 35), "green": (40, 165, 55), "blue": (40, 80, 225),
    "yellow": (235, 210, 35), "purple": (140, 55, 190), "orange": (245, 135, 25),
}
_BG = {"white": 238, "black": 22, "gray": 128}
_RADIUS = {"small": (10.0, 13.0), "large": (17.0, 21.0)}
_JITTER = 0.0  # pixels of position jitter of the main object (with ±3 px, shape-word zero-shot was near chance after 360 steps)
_CORNER_XY = {"top left": (8.5, 8.5), "top right": (55.5, 8.5), "bottom left": (8.5, 55.5), "bottom right": (55.5, 55.5)}
_DISTRACTOR_RADIUS = (4.5, 6.0)


def _heldout_triples() -> frozenset[tuple[str, str, str]]:
    """9 of the 72 (shape, color, pattern) triples in a fixed shuffle (never a kind's look), each value still seen."""
    triples = [(s, c, p) for s in ATTRIBUTES["shape"] for c in ATTRIBUTES["color"] for p in ATTRIBUTES["pattern"]
               if (s, c, p) not in LOOK_KIND]
    random.Random(1234).shuffle(triples)
    return frozenset(triples[::7][:9])


HELDOUT: frozenset[tuple[str, str, str]] = _heldout_triples()


@dataclass(frozen=True)
class ToyObject:
    """One scene's attributes: the main object's, the background and the distractor's (None: no distractor)."""

    shape: str
    color: str
    pattern: str
    size: str
    background: str
    d_shape: str | None = None
    d_color: str | None = None
    d_corner: str | None = None

    @property
    def triple(self) -> tuple[str, str, str]:
        return (self.shape, self.color, self.pattern)

    @property
    def kind(self) -> str | None:
        """The invented noun the main object looks like (None for other looks)."""
        return LOOK_KIND.get(self.triple, (None, None))[0]

    @property
    def state(self) -> str | None:
        """``wet`` / ``dry`` for a kind's look, else None."""
        return LOOK_KIND.get(self.triple, (None, None))[1]

    def as_dict(self) -> dict[str, str]:
        """The five main attributes (the keys of :data:`ATTRIBUTES`)."""
        return {k: getattr(self, k) for k in ATTRIBUTES}

    def full_dict(self) -> dict[str, str | None]:
        """Every field, distractor included (None where absent)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


def sample_object(rng: random.Random, heldout: bool | None = False, distractor: float = 0.0, kind: float = 0.0,
                  **fixed: str) -> ToyObject:
    """Draw a scene; ``fixed`` pins some main attributes.

    Args:
        rng: Random source.
        heldout: False → only pre-training triples, True → only held-out triples, None → any.
        distractor: Probability of a distractor object (random shape, color, corner).
        kind: Probability that the main object takes a kind's look (pre-training mixes them in).
        **fixed: Main-object values to pin, e.g. ``color="red"``; ``d_color=...`` etc. pin the distractor
            (and force one).
    """
    for key, value in fixed.items():
        domain = {**ATTRIBUTES, "d_shape": ATTRIBUTES["shape"], "d_color": ATTRIBUTES["color"], "d_corner": CORNERS}
        if key not in domain or value not in domain[key]:
            raise ValueError(f"unknown toy attribute {key}={value!r}; choose from {ATTRIBUTES}")
    main_fixed = {k: v for k, v in fixed.items() if k in ATTRIBUTES}
    for _ in range(10_000):
        values = {k: main_fixed.get(k) or rng.choice(v) for k, v in ATTRIBUTES.items()}
        if kind and not ({"shape", "color", "pattern"} & main_fixed.keys()) and rng.random() < kind:
            values["shape"], values["color"], values["pattern"] = rng.choice(sorted(LOOK_KIND))
        obj = ToyObject(**values)
        if heldout is None or (obj.triple in HELDOUT) == heldout:
            break
    else:
        raise ValueError(f"no {'held-out' if heldout else 'training'} triple matches {fixed}")
    if any(k.startswith("d_") for k in fixed) or (distractor and rng.random() < distractor):
        obj = replace(obj, d_shape=fixed.get("d_shape") or rng.choice(ATTRIBUTES["shape"]),
                      d_color=fixed.get("d_color") or rng.choice(ATTRIBUTES["color"]),
                      d_corner=fixed.get("d_corner") or rng.choice(CORNERS))
    return obj


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


def _shape_mask(shape: str, cx: float, cy: float, r: float) -> np.ndarray:
    """[H, W, 1] float in 0..1: where the shape covers the canvas."""
    mask_img = Image.new("L", (IMAGE_SIZE, IMAGE_SIZE), 0)
    draw = ImageDraw.Draw(mask_img)
    if shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=255)
    else:
        draw.polygon(_polygon(shape, cx, cy, r, 0.0), fill=255)
    return np.asarray(mask_img, dtype=np.float32)[..., None] / 255.0


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


def _color(name: str, rng: random.Random) -> np.ndarray:
    return np.array([c + rng.uniform(-18, 18) for c in _RGB[name]], dtype=np.float32).clip(0, 255)


def render(obj: ToyObject, rng: random.Random, noise: float = 5.0,
           light: tuple[float, tuple[float, float, float]] | None = None) -> np.ndarray:
    """Draw one scene. Returns [64, 64, 3] uint8.

    Args:
        obj: The scene.
        rng: Random source of the nuisances (exact size, jitter, pattern phase, color jitter, noise).
        noise: Standard deviation of the Gaussian pixel noise.
        light: ``(gain, (r, g, b) offset)`` of the camera: pixels become ``gain * pixel + offset`` before the noise
            (None: pre-training's neutral light). The benchmarks' photos are taken under another light than
            pre-training's, as a benchmark's images differ from a CLIP's pre-training data.
    """
    lo, hi = _RADIUS[obj.size]
    r = rng.uniform(lo, hi)
    c = IMAGE_SIZE / 2
    cx, cy = c + rng.uniform(-_JITTER, _JITTER), c + rng.uniform(-_JITTER, _JITTER)
    mask = _shape_mask(obj.shape, cx, cy, r)  # [H, W, 1]
    fg = np.broadcast_to(_color(obj.color, rng), (IMAGE_SIZE, IMAGE_SIZE, 3)).copy()  # [H, W, 3]
    fg[_pattern_mask(obj.pattern, rng)] *= 0.3
    bg = np.full((IMAGE_SIZE, IMAGE_SIZE, 3), _BG[obj.background] + rng.uniform(-12, 12), dtype=np.float32)
    img = mask * fg + (1 - mask) * bg
    if obj.d_shape is not None:
        dx, dy = _CORNER_XY[obj.d_corner]
        d_mask = _shape_mask(obj.d_shape, dx + rng.uniform(-1, 1), dy + rng.uniform(-1, 1), rng.uniform(*_DISTRACTOR_RADIUS))
        img = d_mask * _color(obj.d_color, rng) + (1 - d_mask) * img
    if light is not None:
        img = light[0] * img + np.asarray(light[1], dtype=np.float32)
    pixel_noise = np.random.default_rng(rng.getrandbits(32)).normal(0, noise, img.shape)
    return (img + pixel_noise).clip(0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------- captions
_PREFIX = ("a photo of", "an image of", "a picture of", "a drawing of", "there is", "")
_PATTERN_ADJ = {"plain": ("plain", "solid"), "striped": ("striped",), "dotted": ("dotted", "spotted")}
_PATTERN_PP = {"plain": ("with no pattern",), "striped": ("with stripes",), "dotted": ("with dots", "with spots")}
_SYNONYMS = {"red": "scarlet", "green": "emerald", "blue": "azure", "yellow": "golden", "purple": "violet",
             "orange": "amber", "small": "tiny", "large": "big", "gray": "grey"}
_GENERIC = ("shape", "object", "thing")
_P_MENTION = {"shape": 0.85, "color": 0.85, "pattern": 0.8, "size": 0.6, "background": 0.5, "distractor": 0.7,
              "kind": 0.6, "state": 0.75}
# a caption's claims: attribute -> value; "kind" / "state" for nouns, "d_shape" / "d_color" / "d_corner" for the
# distractor. A scene satisfies a caption when it agrees on every claim.
CLAIM_KEYS = (*ATTRIBUTES, "kind", "state", "d_shape", "d_color", "d_corner")


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


@dataclass
class Caption:
    """A caption as words, with what it claims and which words carry each claim.

    Attributes:
        words: The caption's words in order ("." is its own word).
        claims: Claimed values, e.g. ``{"color": "red", "d_shape": "star"}``.
        spans: Claim key -> indices into ``words`` of the words that carry it (a value word, not its article).
    """

    words: list[str]
    claims: dict[str, str]
    spans: dict[str, list[int]]

    @property
    def text(self) -> str:
        return " ".join(self.words).replace(" .", ".").replace(" ,", ",")


class _Builder:
    """Collects words and the spans of the claims they carry."""

    def __init__(self) -> None:
        self.words: list[str] = []
        self.claims: dict[str, str] = {}
        self.spans: dict[str, list[int]] = {}

    def add(self, text: str, key: str | None = None, value: str | None = None) -> None:
        for w in text.split():
            if key is not None:
                self.spans.setdefault(key, []).append(len(self.words))
            self.words.append(w)
        if key is not None:
            self.claims[key] = value


def _word(value: str, rng: random.Random, p_synonym: float) -> str:
    return _SYNONYMS[value] if value in _SYNONYMS and rng.random() < p_synonym else value


def _noisy(key: str, value: str, rng: random.Random, p_wrong: float) -> str:
    """The value a caption states: now and then a wrong one (label noise)."""
    if p_wrong and rng.random() < p_wrong:
        domain = CORNERS if key == "d_corner" else STATES if key == "state" else ATTRIBUTES[key.removeprefix("d_")]
        return rng.choice([v for v in domain if v != value])
    return value


def describe(obj: ToyObject, rng: random.Random, p_mention: dict[str, float] | None = None,
             p_synonym: float = 0.1, p_wrong: float = 0.0) -> Caption:
    """A caption of ``obj`` that mentions a random subset of its attributes, attributes bound to their object.

    Args:
        obj: The scene.
        rng: Random source.
        p_mention: Override of the mention probabilities (keys of ``_P_MENTION``).
        p_synonym: Probability of a synonym ("scarlet", "tiny", "grey") for a value that has one.
        p_wrong: Probability that a mentioned value is replaced by a wrong one (its claim is then wrong too).
    """
    p = {**_P_MENTION, **(p_mention or {})}
    say = {k: rng.random() < p[k] for k in ("shape", "color", "pattern", "size", "background")}
    use_kind = obj.kind is not None and rng.random() < p["kind"]
    if use_kind:
        say.update(shape=False, color=False, pattern=False)
    if not any(say.values()) and not use_kind:
        say[rng.choice(list(say))] = True
    b = _Builder()
    prefix = rng.choice(_PREFIX)
    if prefix:
        b.add(prefix)
    adjs: list[tuple[str, str, str]] = []  # (text, key, claimed value)
    if say["size"]:
        v = _noisy("size", obj.size, rng, p_wrong)
        adjs.append((_word(v, rng, p_synonym), "size", v))
    if say["color"]:
        v = _noisy("color", obj.color, rng, p_wrong)
        adjs.append((_word(v, rng, p_synonym), "color", v))
    pattern_pp = None
    if say["pattern"]:
        v = _noisy("pattern", obj.pattern, rng, p_wrong)
        if rng.random() < 0.65:
            adjs.append((rng.choice(_PATTERN_ADJ[v]), "pattern", v))
        else:
            pattern_pp = (rng.choice(_PATTERN_PP[v]), v)
    if use_kind and rng.random() < p["state"]:
        v = _noisy("state", obj.state, rng, p_wrong)
        adjs.append((v, "state", v))
    if rng.random() < 0.3:
        rng.shuffle(adjs)  # mostly canonical order (size, color, pattern), sometimes any
    noun_key, noun = ("kind", obj.kind) if use_kind else ("shape", _noisy("shape", obj.shape, rng, p_wrong)) \
        if say["shape"] else (None, rng.choice(_GENERIC))
    first = adjs[0][0] if adjs else noun
    b.add(_article(first))
    for text, key, value in adjs:
        b.add(text, key, value)
    b.add(noun, noun_key, noun if noun_key else None)
    post = []
    if pattern_pp:
        post.append(("pattern", pattern_pp))
    if say["background"]:
        post.append(("background", _noisy("background", obj.background, rng, p_wrong)))
    if obj.d_shape is not None and rng.random() < p["distractor"]:
        post.append(("distractor", None))
    rng.shuffle(post)
    for key, value in post:
        if key == "pattern":
            text, v = value
            b.add(text.rsplit(" ", 1)[0])
            b.add(text.rsplit(" ", 1)[1], "pattern", v)
        elif key == "background":
            lead = rng.choice(("on a", "against a", "in front of a"))
            b.add(lead)
            b.add(_word(value, rng, p_synonym), "background", value)
            b.add("background")
        else:
            _distractor_phrase(b, obj, rng, p_synonym, p_wrong)
    if rng.random() < 0.7:
        b.add(".")
    return Caption(b.words, b.claims, b.spans)


def _distractor_phrase(b: _Builder, obj: ToyObject, rng: random.Random, p_synonym: float, p_wrong: float) -> None:
    """``with a small blue star in the top left corner`` / ``next to a tiny blue star`` (random parts said)."""
    b.add(rng.choice(("with a", "next to a", "and a", "beside a")))
    b.add(_word("small", rng, p_synonym))
    if rng.random() < 0.8:
        v = _noisy("d_color", obj.d_color, rng, p_wrong)
        b.add(_word(v, rng, p_synonym), "d_color", v)
    if rng.random() < 0.7:
        v = _noisy("d_shape", obj.d_shape, rng, p_wrong)
        b.add(v, "d_shape", v)
    else:
        b.add(rng.choice(_GENERIC))
    if rng.random() < 0.4:
        v = _noisy("d_corner", obj.d_corner, rng, p_wrong)
        b.add("in the")
        b.add(v, "d_corner", v)
        b.add("corner")


def attribute_prompts(attribute: str) -> dict[str, list[str]]:
    """Zero-shot prompts per value of one main-object attribute (others unmentioned), or of ``kind``."""
    if attribute == "shape":
        tmpl = ("a photo of a {}.", "a {}.")
        return {v: [t.format(v) for t in tmpl] for v in ATTRIBUTES["shape"]}
    if attribute == "background":
        tmpl = ("a shape on a {} background.", "an object against a {} background.")
        return {v: [t.format(v) for t in tmpl] for v in ATTRIBUTES["background"]}
    if attribute == "kind":
        return {n: [f"a photo of a {n}.", f"a {n}."] for n in KINDS}
    tmpl = ("a photo of a {} shape.", "a {} object.")
    return {v: [t.format(v) for t in tmpl] for v in ATTRIBUTES[attribute]}


def sample_batch(rng: random.Random, n: int, heldout: bool | None = False, distractor: float = 0.5,
                 kind: float = 0.35, p_wrong: float = 0.03) -> tuple[np.ndarray, list[Caption], list[ToyObject]]:
    """``n`` fresh (image, caption) pairs of pre-training: ([n, 64, 64, 3] uint8, captions, scenes)."""
    objs = [sample_object(rng, heldout=heldout, distractor=distractor, kind=kind) for _ in range(n)]
    images = np.stack([render(o, rng) for o in objs])
    return images, [describe(o, rng, p_wrong=p_wrong) for o in objs], objs


def consistent(objs: list[ToyObject], claims: list[dict[str, str]]) -> np.ndarray:
    """[N, M] bool: scene i satisfies caption j (agrees on every claim of caption j)."""
    out = np.ones((len(objs), len(claims)), dtype=bool)
    for key in CLAIM_KEYS:
        said = np.array([key in c for c in claims])
        if not said.any():
            continue
        a = np.array([str(getattr(o, key)) for o in objs])[:, None]  # [N, 1]
        b = np.array([c.get(key, "") for c in claims])[None, :]  # [1, M]
        out &= (a == b) | ~said[None, :]
    return out
