"""synthetic_streets: generated street scenes in two renderings, a built-in domain shift.

Every scene is drawn by one layout sampler (sky, buildings with windows, trees, a road in
perspective with lane dashes, tiled sidewalks, poles with traffic signs, cars, people), labelled
with the 19 Cityscapes train ids (9 of them occur). Each class has its own geometry and texture
pattern (window grids, tile lines, leafy noise, asphalt grain, wheels, heads), so a model can
tell classes apart without colour. The two configs draw layouts from the same distribution with
independent seeds per domain and split, and differ only in how the same kind of layout is
rendered:

  source: flat, saturated, game-like palette; crisp; no noise; full contrast.
  target: a camera-like rendering: another palette (the source palette hue-rotated by 25
          degrees, desaturated and tinted), contrast cut to ~0.6 with a warm per-channel offset,
          gamma ~0.8, per-image exposure jitter, vignetting, Gaussian blur (sigma 0.8 px) and
          sensor noise (sigma 5 grey levels).
  pretrain: a third style, neither source's nor target's, on which the demo pretrains its tiny
          segmenter once, as the paper's models start from DeepLab weights pretrained elsewhere:
          the source palette hue-rotated the other way (-70 degrees), a green-blue offset,
          contrast ~0.8 with per-image jitter, light blur (sigma 0.5 px) and noise (sigma 3).

Most of the shift is a change of per-channel pixel statistics, which per-domain BatchNorm
statistics and affine parameters (SEAT) can absorb but a source-only model with shared BN
cannot. Measured on the default configs (128x256, the 200 train images, seed 0), RGB order:

  source train: per-channel mean (R, G, B) = (150.3, 96.5, 153.3), std = (71.7, 44.0, 73.9)
  target train: per-channel mean (R, G, B) = (172.5, 118.4, 88.3), std = (30.9, 17.2, 25.7)
  (pretrain train, first 50 images: mean (107.1, 143.4, 177.1), std (33.9, 49.5, 48.6))

so the means move by (+22, +22, -65) grey levels and the contrast drops to ~0.4x; the class
pixel frequencies of the two domains agree within ~0.01 (tests/test_synthetic_streets.py checks
mean gaps >= 15 per channel, std ratio <= 0.8 and frequencies within 0.03 on 100 images).
`_describe_statistics()` recomputes these numbers.

What this shift does to a model (a 6-layer conv+BN net, 64x128 inputs, 500 Adam steps, mIoU
over the 9 classes on the 50 validation images of the target): trained on source and evaluated
with its source BN statistics 20%; the same weights with BN statistics recomputed on target
images (AdaBN, no labels) 58%; trained on target labels (oracle) 73%; source model on source
76%. So per-domain normalisation recovers most of the gap, and what it cannot recover (the
palette change) is left for the adversarial part of SEAT.

Deterministic: example i of (seed, domain, split) is a pure function of those four values, so
the same config always yields the same bytes (on one platform and NumPy version).
Generation takes a few seconds.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from data_builders import common

# Train ids (seat_jax.labels.CITYSCAPES_CLASSES) of the classes the scenes contain.
ROAD, SIDEWALK, BUILDING, POLE, TRAFFIC_SIGN, VEGETATION, SKY, PERSON, CAR = (
    0, 1, 2, 5, 7, 8, 10, 11, 13)
SCENE_CLASSES = (ROAD, SIDEWALK, BUILDING, POLE, TRAFFIC_SIGN, VEGETATION, SKY, PERSON, CAR)

DOMAINS = ("source", "target", "pretrain")  # append only: the index seeds each domain's stream
SPLITS = ("train", "validation")

# Flat, saturated "game" colours (RGB) of the source domain.
_SOURCE_PALETTE = {
    ROAD: (125, 70, 150), SIDEWALK: (235, 70, 205), BUILDING: (205, 120, 60),
    POLE: (215, 215, 70), TRAFFIC_SIGN: (255, 185, 0), VEGETATION: (45, 200, 50),
    SKY: (70, 170, 255), PERSON: (240, 35, 70), CAR: (35, 70, 235),
}


@dataclasses.dataclass(eq=False)
class SyntheticStreetsConfig(tfds.core.BuilderConfig):
  """Domain, seed, image size (height, width) and example counts of a generated dataset."""

  domain: str = "source"
  seed: int = 0
  image_hw: tuple[int, int] = (128, 256)
  num_train: int = 200
  num_validation: int = 50


# --------------------------------------------------------------------------- layout + label


class SceneCanvas:
  """Label map plus two domain-free rendering maps filled by painting primitives back to front.

  `shade` is a per-instance brightness factor; `pattern` in [-1, 1] is the class texture.
  """

  def __init__(self, hw: tuple[int, int]):
    self.hw = hw
    self.label = np.full(hw, SKY, np.uint8)
    self.shade = np.ones(hw, np.float32)
    self.pattern = np.zeros(hw, np.float32)

  def paint(self, y0: int, x0: int, mask: np.ndarray, class_id: int, shade: float,
            pattern: np.ndarray | float) -> None:
    """Paints `mask` (a bool array whose top-left corner goes to (y0, x0)), clipped."""
    h, w = self.hw
    mh, mw = mask.shape
    ya, xa = max(y0, 0), max(x0, 0)
    yb, xb = min(y0 + mh, h), min(x0 + mw, w)
    if ya >= yb or xa >= xb:
      return
    m = mask[ya - y0:yb - y0, xa - x0:xb - x0]
    region = (slice(ya, yb), slice(xa, xb))
    self.label[region][m] = class_id
    self.shade[region][m] = shade
    if isinstance(pattern, np.ndarray):
      pattern = pattern[ya - y0:yb - y0, xa - x0:xb - x0][m]
    self.pattern[region][m] = pattern


def _ellipse(ry: float, rx: float) -> np.ndarray:
  ry, rx = max(ry, 0.5), max(rx, 0.5)
  yy, xx = np.ogrid[-int(ry):int(ry) + 1, -int(rx):int(rx) + 1]
  return (yy / ry) ** 2 + (xx / rx) ** 2 <= 1.0


def _block_noise(rng: np.random.Generator, shape: tuple[int, int], block: int,
                 scale: float) -> np.ndarray:
  """Uniform noise in [-scale, scale] that is constant on block x block cells."""
  coarse = rng.uniform(-scale, scale, (shape[0] // block + 1, shape[1] // block + 1))
  return np.repeat(np.repeat(coarse, block, 0), block, 1)[:shape[0], :shape[1]].astype(np.float32)


def _draw_sky(c: SceneCanvas, horizon: int) -> None:
  ys = np.arange(c.hw[0], dtype=np.float32)[:, None]
  c.pattern[:] = np.clip(0.6 * ys / max(horizon, 1) - 0.3, -0.3, 0.3)  # brighter at the horizon


def _draw_buildings(c: SceneCanvas, rng: np.random.Generator, horizon: int) -> None:
  h, w = c.hw
  x = -int(rng.integers(0, w // 8 + 1))
  while x < w:
    width = max(4, int(w * rng.uniform(0.08, 0.25)))
    if rng.random() < 0.15:  # a gap shows the sky
      x += width // 2
      continue
    top = int(horizon * rng.uniform(0.0, 0.65))
    bottom = horizon + max(1, h // 20)
    cell_h = max(3, int(h * rng.uniform(0.05, 0.08)))
    cell_w = max(3, int(w * rng.uniform(0.025, 0.045)))
    yy, xx = np.mgrid[0:bottom - top, 0:width]
    windows = ((yy % cell_h) >= cell_h // 3) & ((xx % cell_w) >= cell_w // 3) & (yy > 1)
    pattern = np.where(windows, -0.65, 0.1).astype(np.float32)
    c.paint(top, x, np.ones((bottom - top, width), bool), BUILDING, rng.uniform(0.75, 1.2), pattern)
    x += width


def _draw_tree(c: SceneCanvas, rng: np.random.Generator, horizon: int) -> None:
  h, w = c.hw
  radius = h * rng.uniform(0.06, 0.14)
  cx, base = int(rng.uniform(0, w)), horizon + int(h * rng.uniform(0.0, 0.06))
  cy = int(horizon - radius * rng.uniform(0.6, 1.6))
  trunk_w = max(1, int(radius * 0.2))
  c.paint(cy, cx - trunk_w // 2, np.ones((max(base - cy, 1), trunk_w), bool), VEGETATION,
          0.6, -0.5)
  shade = rng.uniform(0.8, 1.15)
  for _ in range(int(rng.integers(3, 6))):
    r = radius * rng.uniform(0.5, 0.9)
    oy, ox = int(cy + rng.uniform(-0.6, 0.3) * radius), int(cx + rng.uniform(-0.8, 0.8) * radius)
    mask = _ellipse(r, r * rng.uniform(0.9, 1.3))
    c.paint(oy - mask.shape[0] // 2, ox - mask.shape[1] // 2, mask, VEGETATION, shade,
            _block_noise(rng, mask.shape, 2, 0.7))


def _draw_ground(c: SceneCanvas, rng: np.random.Generator, horizon: int) -> tuple[float, float]:
  """Road (a trapezoid to a vanishing point) and sidewalks; returns (vanish_x, half width)."""
  h, w = c.hw
  vanish_x = w * rng.uniform(0.35, 0.65)
  half_width = w * rng.uniform(0.3, 0.5)
  rows = slice(horizon, h)
  yy, xx = np.mgrid[horizon:h, 0:w].astype(np.float32)
  depth = (yy - horizon + 1) / (h - horizon)  # 0 far .. 1 near
  tiles = (np.mod(6.0 / depth, 1.0) < 0.15) | (np.mod((xx - vanish_x) / (depth * w / 7), 1.0) < 0.1)
  c.label[rows] = SIDEWALK
  c.shade[rows] = rng.uniform(0.85, 1.15)
  c.pattern[rows] = np.where(tiles, -0.55, 0.15)
  on_road = np.abs(xx - vanish_x) < half_width * depth
  dashes = (np.abs(xx - vanish_x) < 0.01 * w * depth + 0.5) & (np.mod(3.0 / depth, 1.0) < 0.5)
  asphalt = rng.normal(0, 0.12, on_road.shape).astype(np.float32)
  road_pattern = np.where(dashes, 0.9, asphalt)
  c.label[rows][on_road] = ROAD
  c.shade[rows][on_road] = rng.uniform(0.85, 1.15)
  c.pattern[rows][on_road] = road_pattern[on_road]
  return vanish_x, half_width


def _draw_car(c: SceneCanvas, rng, base: int, cx: float, depth: float) -> None:
  width = max(4, int(c.hw[1] * 0.3 * depth))
  height = max(3, int(width * rng.uniform(0.45, 0.6)))
  top, left = base - height, int(cx - width / 2)
  body = np.ones((height, width), bool)
  pattern = np.full((height, width), 0.2, np.float32)
  cabin_h = height * 2 // 5
  inset = width // 5
  body[:cabin_h, :inset] = False
  body[:cabin_h, width - inset:] = False
  pattern[1:cabin_h, inset + 1:width - inset - 1] = -0.6  # windows
  c.paint(top, left, body, CAR, rng.uniform(0.8, 1.2), pattern)
  wheel = _ellipse(max(1.0, height * 0.18), max(1.0, height * 0.18))
  for wx in (left + width // 5, left + 4 * width // 5):
    c.paint(base - wheel.shape[0] // 2 - 1, wx - wheel.shape[1] // 2, wheel, CAR, 1.0, -0.85)


def _draw_person(c: SceneCanvas, rng, base: int, cx: float, depth: float) -> None:
  height = max(5, int(c.hw[0] * 0.45 * depth))
  width = max(2, int(height * 0.3))
  head = _ellipse(height * 0.09, height * 0.08)
  shade = rng.uniform(0.8, 1.2)
  left = int(cx - width / 2)
  torso_top = base - height + head.shape[0]
  legs_top = base - int(height * 0.45)
  c.paint(torso_top, left, np.ones((legs_top - torso_top, width), bool), PERSON, shade, 0.1)
  leg_w = max(1, width // 3)
  for lx in (left, left + width - leg_w):
    c.paint(legs_top, lx, np.ones((base - legs_top, leg_w), bool), PERSON, shade, -0.45)
  c.paint(base - height, int(cx) - head.shape[1] // 2, head, PERSON, 1.0, 0.5)


def _draw_pole(c: SceneCanvas, rng, base: int, x: float, depth: float) -> None:
  height = max(6, int(c.hw[0] * 0.8 * depth))
  width = max(1, int(c.hw[1] * 0.012 * depth))
  pattern = np.tile(np.linspace(0.4, -0.3, width, dtype=np.float32), (height, 1))
  c.paint(base - height, int(x), np.ones((height, width), bool), POLE, 1.0, pattern)
  if rng.random() < 0.65:
    size = max(3, int(c.hw[0] * 0.09 * depth))
    if rng.random() < 0.5:
      sign = _ellipse(size / 2, size / 2)
    else:
      sign = np.ones((size, size), bool)
    ring = np.ones(sign.shape, np.float32) * 0.3
    ring[[0, -1], :] = ring[:, [0, -1]] = -0.6
    c.paint(base - height - sign.shape[0] // 2, int(x) + width // 2 - sign.shape[1] // 2, sign,
            TRAFFIC_SIGN, 1.0, ring)


def draw_layout(rng: np.random.Generator, hw: tuple[int, int]) -> SceneCanvas:
  """Samples one street scene; returns its label, shade and pattern maps."""
  h, w = hw
  c = SceneCanvas(hw)
  horizon = int(h * rng.uniform(0.38, 0.5))
  _draw_sky(c, horizon)
  _draw_buildings(c, rng, horizon)
  for _ in range(int(rng.integers(1, 5))):
    _draw_tree(c, rng, horizon)
  vanish_x, half_width = _draw_ground(c, rng, horizon)

  objects = []  # (depth, kind, x); drawn far to near so near objects occlude far ones
  for _ in range(int(rng.integers(1, 4))):
    depth = rng.uniform(0.2, 0.95)
    objects.append((depth, "car", vanish_x + rng.uniform(-0.7, 0.7) * half_width * depth))
  for kind, count in (("person", rng.integers(1, 5)), ("pole", rng.integers(1, 4))):
    for _ in range(int(count)):
      depth = rng.uniform(0.2, 0.9)
      side = rng.choice((-1.0, 1.0))
      edge = vanish_x + side * half_width * depth
      objects.append((depth, kind, edge + side * rng.uniform(0.03, 0.2) * w * depth))
  draw = {"car": _draw_car, "person": _draw_person, "pole": _draw_pole}
  for depth, kind, x in sorted(objects, key=lambda o: o[0]):
    base = horizon + int(depth * (h - horizon)) - 1
    draw[kind](c, rng, base, x, depth)
  return c


# ------------------------------------------------------------------------------- rendering


def _hue_rotation(degrees: float) -> np.ndarray:
  """3x3 RGB matrix rotating hue around the grey axis (keeps greys grey)."""
  a = np.deg2rad(degrees)
  k = np.ones((3, 3)) / 3.0
  cross = np.array([[0, -1, 1], [1, 0, -1], [-1, 1, 0]]) / np.sqrt(3.0)
  return np.cos(a) * np.eye(3) + (1 - np.cos(a)) * k + np.sin(a) * cross


def _target_palette() -> dict[int, np.ndarray]:
  """The source palette hue-rotated by 25 degrees, desaturated by 30% and tinted warm."""
  rotation = _hue_rotation(25.0)
  tint = np.array([1.05, 0.95, 0.8])
  out = {}
  for cls, rgb in _SOURCE_PALETTE.items():
    col = rotation @ np.asarray(rgb, np.float64)
    col = 0.7 * col + 0.3 * col.mean()
    out[cls] = np.clip(col * tint, 0, 255)
  return out


def _pretrain_palette() -> dict[int, np.ndarray]:
  """The source palette hue-rotated by -70 degrees and desaturated by 15%."""
  rotation = _hue_rotation(-70.0)
  out = {}
  for cls, rgb in _SOURCE_PALETTE.items():
    col = rotation @ np.asarray(rgb, np.float64)
    out[cls] = np.clip(0.85 * col + 0.15 * col.mean(), 0, 255)
  return out


_PALETTES = {
    "source": {k: np.asarray(v, np.float64) for k, v in _SOURCE_PALETTE.items()},
    "target": _target_palette(),
    "pretrain": _pretrain_palette(),
}


@functools.lru_cache(maxsize=None)
def _palette_lut(domain: str) -> np.ndarray:
  """float32 [256, 3]: the RGB colour of each train id in a domain (0 for absent ids)."""
  lut = np.zeros((256, 3), np.float32)
  for cls, rgb in _PALETTES[domain].items():
    lut[cls] = rgb
  lut.setflags(write=False)
  return lut


def _gaussian_blur(image: np.ndarray, sigma: float) -> np.ndarray:
  """Separable Gaussian blur of an [H, W, C] float32 image with edge padding."""
  radius = max(1, int(3 * sigma))
  taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
  taps = (taps / taps.sum()).astype(np.float32)
  h, w = image.shape[:2]
  padded = np.pad(image, ((radius, radius), (0, 0), (0, 0)), mode="edge")
  image = sum(t * padded[i:i + h] for i, t in enumerate(taps))
  padded = np.pad(image, ((0, 0), (radius, radius), (0, 0)), mode="edge")
  return sum(t * padded[:, i:i + w] for i, t in enumerate(taps))


@functools.lru_cache(maxsize=8)
def _vignette(hw: tuple[int, int]) -> np.ndarray:
  """Camera-like fall-off: 1 at the centre, 0.88 at the corners' inscribed ellipse."""
  h, w = hw
  yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
  r2 = ((yy - h / 2) / (h / 2)) ** 2 + ((xx - w / 2) / (w / 2)) ** 2
  return (1.0 - 0.12 * r2)[..., None].astype(np.float32)


def render(c: SceneCanvas, domain: str, rng: np.random.Generator) -> np.ndarray:
  """Renders a layout in a domain's style; returns uint8 [H, W, 3] RGB."""
  if domain not in DOMAINS:
    raise ValueError(f"domain must be one of {DOMAINS}, got {domain!r}")
  base = _palette_lut(domain)[c.label]
  if domain == "source":
    image = base * (c.shade * (1.0 + 0.45 * c.pattern))[..., None]
    return np.clip(np.round(image), 0, 255).astype(np.uint8)
  if domain == "pretrain":
    image = base * (c.shade * (1.0 + 0.4 * c.pattern))[..., None]
    contrast = np.float32(0.8 * rng.uniform(0.9, 1.1))
    image = contrast * image + np.array([15.0, 45.0, 45.0], np.float32)
    image = _gaussian_blur(image, 0.5)
    image += rng.standard_normal(image.shape, dtype=np.float32) * np.float32(3.0)
    return np.clip(np.round(image), 0, 255).astype(np.uint8)
  image = base * (c.shade * (1.0 + 0.35 * c.pattern))[..., None]
  contrast = np.float32(0.6 * rng.uniform(0.9, 1.1))  # exposure jitter per image
  offset = (np.array([75.0, 45.0, 10.0]) * rng.uniform(0.8, 1.2)).astype(np.float32)
  image = contrast * image + offset
  image = 255.0 * (np.clip(image, 0, 255) / np.float32(255.0)) ** np.float32(0.8)  # gamma
  image *= _vignette(c.hw)
  image = _gaussian_blur(image, 0.8)
  image += rng.standard_normal(image.shape, dtype=np.float32) * np.float32(5.0)  # sensor noise
  return np.clip(np.round(image), 0, 255).astype(np.uint8)


def example_rng(seed: int, domain: str, split: str, index: int) -> np.random.Generator:
  """Independent random stream per (seed, domain, split, example)."""
  return np.random.default_rng([seed, DOMAINS.index(domain), SPLITS.index(split), index])


def generate_example(seed: int, domain: str, split: str, index: int,
                     image_hw: tuple[int, int] = (128, 256)) -> tuple[np.ndarray, np.ndarray]:
  """(image uint8 [H, W, 3], label uint8 [H, W]) of one example; a pure function of its args."""
  rng = example_rng(seed, domain, split, index)
  canvas = draw_layout(rng, tuple(image_hw))
  return render(canvas, domain, rng), canvas.label


# ---------------------------------------------------------------------------------- builder


class Builder(tfds.core.GeneratorBasedBuilder):
  """Generated street scenes; configs 'source', 'target' and 'pretrain', splits 'train' and
  'validation'."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  BUILDER_CONFIGS = [
      SyntheticStreetsConfig(name="source", domain="source",
                             description="Flat, saturated, game-like rendering."),
      SyntheticStreetsConfig(name="target", domain="target",
                             description="Camera-like rendering: palette, lighting, blur, noise."),
      SyntheticStreetsConfig(name="pretrain", domain="pretrain",
                             description="A third style for the demo's pretrained init."),
  ]

  def _info(self) -> tfds.core.DatasetInfo:
    return common.segmentation_info(
        self, __doc__,
        metadata=dict(
            domain=self.builder_config.domain, seed=self.builder_config.seed,
            image_hw=list(self.builder_config.image_hw)))

  def _split_generators(self, dl_manager):
    del dl_manager  # nothing to download
    config = self.builder_config
    if config.domain not in DOMAINS:
      raise ValueError(f"SyntheticStreetsConfig.domain must be one of {DOMAINS}, "
                       f"got {config.domain!r}")
    return {
        "train": self._generate_examples("train", config.num_train),
        "validation": self._generate_examples("validation", config.num_validation),
    }

  def _generate_examples(self, split: str, count: int):
    config = self.builder_config
    for index in range(count):
      image, label = generate_example(config.seed, config.domain, split, index, config.image_hw)
      example_id = f"{config.domain}_{split}_{index:05d}"
      yield example_id, {"image": common.encode_png(image),
                         "label": common.encode_png(label), "id": example_id}


def _describe_statistics() -> dict[str, Any]:
  """Recomputes the numbers quoted in the module docstring (kept for maintainers)."""
  stats = {}
  for domain in DOMAINS:
    pixels = np.concatenate([
        generate_example(0, domain, "train", i)[0].reshape(-1, 3) for i in range(200)])
    stats[domain] = (pixels.mean(0).round(1).tolist(), pixels.std(0).round(1).tolist())
  return stats
