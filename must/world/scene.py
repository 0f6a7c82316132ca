"""Procedural scenes with exact ground truth for every task (pure NumPy).

This is the embedded stand-in for ImageNet / Objects365 / COCO / MiDaS data: a
pinhole camera, looking slightly down, sees a textured ground plane that ends
at a far textured wall, with a handful of objects standing on the ground. Each
scene comes with the label maps the image was shaded from:

* `semantic`: category id of the visible surface (0 = ground or wall),
* `instances`: which object is visible at each pixel,
* `depth`: metric z distance along the camera axis,
* `normals`: unit surface normals in the camera frame (x right, y up, z toward
  the camera),
* `boxes`/`classes`: tight boxes around each object's visible pixels,
* `image_class`: the category with the largest visible area.

Objects are "2.5D sprites": a camera-facing billboard whose silhouette, normal
field and relief (height toward the camera) come from an analytic 3D shape,
tabulated once at import into a template. The object's size, position on the
ground and perspective give its screen footprint; its relief is subtracted from
the billboard's depth, so the depth and normal maps agree with each other and
with the Lambertian + specular shading of the image. A z-buffer resolves
occlusion between objects. Colours and textures are drawn independently of the
category, so only silhouette and shading tell categories apart.

Everything is vectorized over whole rows or over each object's screen box;
one 96x96 scene takes about a millisecond on one core.
"""
import dataclasses
import functools
import hashlib
import math

import numpy as np

CATEGORIES: tuple[str, ...] = (
    "sphere", "cube", "cylinder", "cone", "pyramid", "torus", "star",
    "capsule", "cross", "octahedron")
NUM_CLASSES = len(CATEGORIES) + 1

_T = 128  # texture and largest template resolution (texels per side), a power of two
_TMASK = _T - 1
_LEVELS = (16, 32, 64, _T)  # template resolutions
# Template channels: nx, ny, nz, relief (in object radii), silhouette mask.
_NX, _NY, _NZ, _RELIEF, _MASK = range(5)
_OUTSIDE_RELIEF = -1e9
_ASPECTS = (0.82, 1.0, 1.22)  # sprite width / height variants
_EMPTY_DEPTH = 1e6  # z-buffer start value; far beyond any object, below outside texels


@dataclasses.dataclass(frozen=True)
class RenderParams:
  """Knobs of the procedural world.

  Attributes:
    height: image height in pixels.
    width: image width in pixels.
    min_objects: fewest objects per scene (the first is the large "main" one).
    max_objects: most objects per scene.
    min_object_size: smallest object radius, world units.
    max_object_size: largest object radius, world units.
    noise_std_max: per-image Gaussian noise std is drawn in [0, this] (0..255).
    min_visible_pixels: instances with fewer visible pixels get no box.
    fov_degrees: horizontal field of view of the pinhole camera.
    min_<x>, max_<x>: the range each scene draws <x> from: the camera's
      downward pitch and height above the ground (world units); the objects'
      forward distance (world z, log-uniform: near objects are common) and the
      main object's (which is also at least mid-sized); the far wall's
      distance; the brightness gain, ambient and specular light terms; the
      e-folding distance of the haze.
    max_attempts: scenes whose main category ends up without a box are redrawn
      (from the same stream) up to this many times; the last try has only the
      main object.
  """
  height: int = 96
  width: int = 96
  min_objects: int = 2
  max_objects: int = 7
  min_object_size: float = 0.5
  max_object_size: float = 1.6
  noise_std_max: float = 8.0
  min_visible_pixels: int = 16
  fov_degrees: float = 60.0
  min_pitch_degrees: float = 4.0
  max_pitch_degrees: float = 16.0
  min_camera_height: float = 1.6
  max_camera_height: float = 2.8
  min_object_distance: float = 3.5
  max_object_distance: float = 20.0
  min_main_object_distance: float = 3.5
  max_main_object_distance: float = 6.5
  min_wall_distance: float = 24.0
  max_wall_distance: float = 40.0
  min_brightness: float = 0.75
  max_brightness: float = 1.25
  min_ambient: float = 0.25
  max_ambient: float = 0.45
  min_specular: float = 0.0
  max_specular: float = 0.35
  min_haze_distance: float = 45.0
  max_haze_distance: float = 150.0
  max_attempts: int = 6

  def __post_init__(self):
    for name in _RANGE_FIELDS:
      low, high = getattr(self, "min_" + name), getattr(self, "max_" + name)
      if not low <= high:
        raise ValueError(f"need min_{name} <= max_{name}, got {low}, {high}")
    if self.height < 8 or self.width < 8:
      raise ValueError(f"image must be at least 8x8, got {self.height}x{self.width}")
    if not 1 <= self.min_objects <= self.max_objects:
      raise ValueError(
          f"need 1 <= min_objects <= max_objects, got {self.min_objects}, {self.max_objects}")
    if not 0 < self.min_object_size <= self.max_object_size:
      raise ValueError("need 0 < min_object_size <= max_object_size")
    if self.noise_std_max < 0 or self.min_visible_pixels < 1 or self.max_attempts < 1:
      raise ValueError("need noise_std_max >= 0, min_visible_pixels >= 1, max_attempts >= 1")
    if not 0 < self.fov_degrees < 150:
      raise ValueError(f"fov_degrees must be in (0, 150), got {self.fov_degrees}")
    if not (0 <= self.min_pitch_degrees and self.max_pitch_degrees <= 45):
      raise ValueError("pitch must lie in [0, 45] degrees, got "
                       f"[{self.min_pitch_degrees}, {self.max_pitch_degrees}]")
    if self.min_camera_height <= 0 or self.min_object_distance <= 0:
      raise ValueError("camera height and object distances must be positive")
    # Nearest possible surface: the largest object, nearest, with the camera low
    # and pitched down the most, bulging one radius toward the camera.
    pitch = math.radians(self.max_pitch_degrees)
    near = min(self.min_object_distance, self.min_main_object_distance)
    r = self.max_object_size
    if near * math.cos(pitch) + (self.min_camera_height - r) * math.sin(pitch) - r < 0.1:
      raise ValueError("objects would reach behind the camera: increase the object "
                       "distances or reduce max_object_size")
    if self.min_wall_distance <= max(self.max_object_distance, self.max_main_object_distance):
      raise ValueError("the wall must be farther than every object")


_RANGE_FIELDS = ("pitch_degrees", "camera_height", "object_distance",
                 "main_object_distance", "wall_distance", "brightness", "ambient", "specular",
                 "haze_distance")


@dataclasses.dataclass
class Scene:
  """One rendered scene and its exact labels.

  Attributes:
    image: uint8 [H, W, 3] RGB.
    semantic: uint8 [H, W]; 0 = background, 1..K = category id.
    instances: int32 [H, W]; 0 = background, i + 1 = visible pixels of object i
      (the scene's objects in sampling order, object 0 being the large "main"
      one; all of them, boxed or not).
    depth: float32 [H, W]; metric z distance along the camera axis, > 0.
    normals: float32 [H, W, 3]; unit normals, camera frame (x right, y up,
      z toward the camera).
    boxes: float32 [N, 4]; normalized (ymin, xmin, ymax, xmax), tight around the
      visible pixels (ymax = (last row + 1) / H). Only objects with at least
      `min_visible_pixels` visible pixels, in increasing instance id.
    classes: int32 [N]; category ids 1..K of the boxes.
    box_instance_ids: int32 [N]; the `instances` value each box covers.
    image_class: category id (1..K) with the largest visible area (ties go to
      the smaller id).
    silhouette_areas: int32 [num_objects]; in-frame pixels of each object's
      unoccluded silhouette (index i <-> instance id i + 1).
  """
  image: np.ndarray
  semantic: np.ndarray
  instances: np.ndarray
  depth: np.ndarray
  normals: np.ndarray
  boxes: np.ndarray
  classes: np.ndarray
  box_instance_ids: np.ndarray
  image_class: int
  silhouette_areas: np.ndarray


def scene_rng(seed: int, split: str, index: int) -> np.random.Generator:
  """A fresh, independent and reproducible random stream per (seed, split name, index)."""
  if seed < 0 or index < 0:
    raise ValueError(f"seed and index must be non-negative, got {seed}, {index}")
  split_hash = int.from_bytes(
      hashlib.blake2b(split.encode("utf-8"), digest_size=8).digest(), "little")
  return np.random.default_rng(np.random.SeedSequence([int(seed), split_hash, int(index)]))


# ---------------------------------------------------------------------------
# Shape templates (built once at import).


def _unit(nx, ny, nz):
  norm = np.sqrt(nx * nx + ny * ny + nz * nz)
  return nx / norm, ny / norm, nz / norm


def _polygon_sdf(x, y, verts):
  """Signed distance (negative inside) and outward unit gradient to a polygon."""
  verts = np.asarray(verts, np.float64)
  best = np.full(x.shape, np.inf)
  qx = np.zeros_like(x)
  qy = np.zeros_like(y)
  inside = np.zeros(x.shape, bool)
  for k in range(len(verts)):
    ax, ay = verts[k]
    bx, by = verts[(k + 1) % len(verts)]
    ex, ey = bx - ax, by - ay
    t = np.clip(((x - ax) * ex + (y - ay) * ey) / (ex * ex + ey * ey), 0.0, 1.0)
    cx, cy = ax + t * ex, ay + t * ey
    d2 = (x - cx) ** 2 + (y - cy) ** 2
    closer = d2 < best
    best = np.where(closer, d2, best)
    qx = np.where(closer, cx, qx)
    qy = np.where(closer, cy, qy)
    if ay != by:
      crosses = ((ay > y) != (by > y)) & (x < ex * (y - ay) / (by - ay) + ax)
      inside ^= crosses
  dist = np.sqrt(best)
  sign = np.where(inside, -1.0, 1.0)
  safe = np.maximum(dist, 1e-9)
  return sign * dist, sign * (x - qx) / safe, sign * (y - qy) / safe


def _bevelled(x, y, verts, bevel=0.2, thickness=0.35):
  """A flat slab with the polygon's outline and bevelled edges."""
  sd, gx, gy = _polygon_sdf(x, y, verts)
  inner = -sd
  on_bevel = inner < bevel
  slope = thickness / bevel
  normal = _unit(np.where(on_bevel, gx * slope, 0.0), np.where(on_bevel, gy * slope, 0.0),
                 np.ones_like(x))
  return sd < 0, *normal, thickness * np.minimum(inner / bevel, 1.0)


def _shape(name, x, y):
  """Mask, unit normal (camera frame) and relief of a shape in [-1, 1]^2 (y up)."""
  one = np.ones_like(x)
  if name == "sphere":
    r2 = x * x + y * y
    nz = np.sqrt(np.clip(1 - r2, 0, 1))
    return r2 < 1, x, y, nz, nz
  if name == "cube":
    # Isometric view of a cube: its near corner at the centre, three faces.
    c = math.sqrt(3) / 2
    t = 1 / math.sqrt(3)
    mask = (np.abs(x) <= c) & (np.abs(y) <= 1 - t * np.abs(x))
    top = y > t * np.abs(x)
    faces = [top, ~top & (x < 0), ~top & (x >= 0)]  # top, left, right
    face_n = [(0.0, 0.8165, 0.5774), (-0.7071, -0.4082, 0.5774), (0.7071, -0.4082, 0.5774)]
    nx, ny, nz = (np.select(faces, [n[c] for n in face_n], 0.0) for c in range(3))
    relief = np.select(faces, [1.0 - (fx * x + fy * y) / fz for fx, fy, fz in face_n], 0.0)
    return mask, nx, ny, nz, relief
  if name == "cylinder":
    w, e = 0.72, 0.28
    yt, yb = 1 - e, -1 + e
    cap = (x / w) ** 2 + ((y - yt) / e) ** 2 < 1
    bottom = (x / w) ** 2 + ((y - yb) / e) ** 2 < 1
    side = (np.abs(x) < w) & (y < yt) & ((y > yb) | bottom)
    q = np.clip(x / w, -1, 1)
    root = np.sqrt(1 - q * q)
    cap_ny, cap_nz = math.sqrt(1 - (e / w) ** 2), e / w
    nx = np.where(cap, 0.0, q)
    ny = np.where(cap, cap_ny, 0.0)
    nz = np.where(cap, cap_nz, root)
    relief = np.where(cap, 0.5 * w - (cap_ny / cap_nz) * (y - yt) * 0.5, w * root)
    return cap | side, nx, ny, nz, relief
  if name == "cone":
    w, e = 0.8, 0.24
    yb = -1 + e
    k = w / (1 - yb)
    wy = np.where(y > yb, k * (1 - y), w)
    bottom = (x / w) ** 2 + ((y - yb) / e) ** 2 < 1
    mask = ((np.abs(x) < wy) & (y > yb) & (y < 1)) | bottom
    q = np.clip(x / np.maximum(wy, 1e-6), -1, 1)
    root = np.sqrt(1 - q * q)
    nx, ny, nz = _unit(q, k * one, root)
    return mask, nx, ny, nz, wy * root
  if name == "pyramid":
    # Square pyramid seen corner-on: two planar faces meeting at a ridge.
    w = 0.9
    mask = (y < 1 - 1.75 * np.abs(x) / w) & (y > -1 + 0.25 * np.abs(x) / w)
    gx = 0.875 / w
    nx, ny, nz = _unit(np.sign(x) * gx + (x == 0) * gx, 0.5 * one, one)
    relief = 0.5 - 0.5 * y - gx * np.abs(x)
    return mask, nx, ny, nz, relief
  if name == "torus":
    r0, a = 0.64, 0.36
    rho = np.maximum(np.sqrt(x * x + y * y), 1e-6)
    s = (rho - r0) / a
    mask = np.abs(s) < 1
    s = np.clip(s, -1, 1)
    root = np.sqrt(1 - s * s)
    return mask, x / rho * s, y / rho * s, root, a * root
  if name == "star":
    verts = [((1.0 if k % 2 == 0 else 0.44) * math.cos(math.pi / 2 + k * math.pi / 5),
              (1.0 if k % 2 == 0 else 0.44) * math.sin(math.pi / 2 + k * math.pi / 5))
             for k in range(10)]
    return _bevelled(x, y, verts, bevel=0.16, thickness=0.3)
  if name == "capsule":
    # A capsule lying on the ground: a horizontal rounded bar.
    w = 0.46
    cx = np.clip(x, -(1 - w), 1 - w)
    qx, qy = x - cx, y
    d2 = (qx * qx + qy * qy) / (w * w)
    root = np.sqrt(np.clip(1 - d2, 0, 1))
    return d2 < 1, qx / w, qy / w, root, w * root
  if name == "cross":
    t, l = 0.32, 0.95
    verts = [(t, l), (t, t), (l, t), (l, -t), (t, -t), (t, -l), (-t, -l), (-t, -t),
             (-l, -t), (-l, t), (-t, t), (-t, l)]
    return _bevelled(x, y, verts, bevel=0.14, thickness=0.3)
  if name == "octahedron":
    w, hc = 0.75, 0.85
    mask = np.abs(x) / w + np.abs(y) < 1
    sx = np.where(x >= 0, 1.0, -1.0)
    sy = np.where(y >= 0, 1.0, -1.0)
    nx, ny, nz = _unit(sx * hc / w, sy * hc, one)
    return mask, nx, ny, nz, hc * (1 - np.abs(x) / w - np.abs(y))
  raise KeyError(f"unknown shape {name!r}; known: {', '.join(CATEGORIES)}")


def _template_grid(res: int):
  """Texel-centre coordinates (x right, y up) of a res x res template over [-1, 1]^2."""
  coords = (np.arange(res) + 0.5) / res * 2 - 1
  return coords[None, :].repeat(res, 0), -coords[:, None].repeat(res, 1)  # row 0: y = +1


def _build_templates(res: int) -> np.ndarray:
  """[K, A, 5, res*res] float32 shape templates at one resolution.

  One template per category and sprite aspect (width / height, `_ASPECTS`).
  Channels are planar (nx, ny, nz, relief, mask). Stretching a shape in x by
  an aspect divides its normals' x component by it (then renormalized), so
  normals stay consistent with the relief. Outside the silhouette the relief
  is a huge negative number: the sprite's depth there loses every z-buffer
  test and drawing needs no separate mask test.
  """
  x, y = _template_grid(res)
  templates = np.zeros((len(CATEGORIES), len(_ASPECTS), 5, res, res), np.float32)
  for k, name in enumerate(CATEGORIES):
    mask, nx, ny, nz, relief = (np.broadcast_to(a, x.shape) for a in _shape(name, x, y))
    for j, aspect in enumerate(_ASPECTS):
      ax, ay, az = _unit(nx / aspect, ny, nz)
      templates[k, j] = np.stack([
          np.where(mask, ax, 0), np.where(mask, ay, 0), np.where(mask, az, 1),
          np.where(mask, relief, _OUTSIDE_RELIEF), mask])
  return templates.reshape(len(CATEGORIES), len(_ASPECTS), 5, res * res)


def _bottoms(templates: np.ndarray, res: int) -> np.ndarray:
  """Per category, the distance (in radii) from the centre down to the lowest texel.

  The sprite centre sits that high above the ground.
  """
  _, y = _template_grid(res)
  mask = templates[:, 0, _MASK].reshape(-1, res, res) > 0.5
  return np.array([-y[np.nonzero(m.any(1))[0].max(), 0] for m in mask], np.float32)


def _periodic_noise(rng, sigma):
  """Smooth periodic noise on the T x T torus, scaled to [0, 1]."""
  f = np.fft.fftfreq(_T)
  g = np.exp(-(f[:, None] ** 2 + f[None, :] ** 2) / (2 * sigma ** 2))
  field = np.fft.ifft2(np.fft.fft2(rng.standard_normal((_T, _T))) * g).real
  return (field - field.min()) / (field.max() - field.min())


def _build_surface_patterns(rng):
  """Periodic [P, T*T] patterns in [0, 1] for the ground and the wall, and their means."""
  i = np.arange(_T)
  r, c = i[:, None], i[None, :]
  patterns = [
      ((r // 16 + c // 16) % 2).astype(float),  # checker
      (r % 32 < 16).astype(float) * np.ones_like(c),  # bands
      1.0 - ((r % 16 < 2) | (c % 16 < 2)),  # tiles with grout
      np.clip((_periodic_noise(rng, 0.04) - 0.35) * 3, 0, 1),  # blotches
      1.0 - ((r % 16 < 2) | ((c + 16 * (r // 16 % 2)) % 32 < 2)),  # bricks
      _periodic_noise(rng, 0.15),  # grain
      ((((r % 16) - 7.5) ** 2 + ((c % 16) - 7.5) ** 2) < 20).astype(float),  # dots
      (c % 16 < 8).astype(float) * np.ones_like(r),  # stripes
  ]
  patterns = np.stack([np.broadcast_to(p, (_T, _T)) for p in patterns]).astype(np.float32)
  return patterns.reshape(len(patterns), _T * _T), patterns.mean((1, 2))


def _build_object_patterns(rng) -> dict[int, np.ndarray]:
  """Per template level, [P, L*L] object surface patterns in template coordinates.

  Pattern 0 is plain.
  """
  noise = _periodic_noise(rng, 0.03)
  levels = {}
  for res in _LEVELS:
    x, y = _template_grid(res)
    step = _T // res
    patterns = [
        np.zeros_like(x),
        (np.sin(y * 4 * np.pi) > 0).astype(float),
        (np.sin(x * 4 * np.pi) > 0).astype(float),
        (np.sin((x + y) * 3 * np.pi) > 0).astype(float),
        ((((x * 3) % 1 - 0.5) ** 2 + ((y * 3) % 1 - 0.5) ** 2) < 0.08).astype(float),
        ((np.floor(x * 3) + np.floor(y * 3)) % 2).astype(float),
        noise[step // 2::step, step // 2::step],
        (np.sin(np.sqrt(x * x + y * y) * 6 * np.pi) > 0).astype(float),
    ]
    levels[res] = np.stack(patterns).astype(np.float32).reshape(len(patterns), res * res)
  return levels


def _frozen(array: np.ndarray) -> np.ndarray:
  """Marks a shared (module-level or cached) array read-only."""
  array.setflags(write=False)
  return array


# Templates come in several resolutions (like mipmaps): a small sprite samples
# a small template, which stays in the CPU cache.
_TEMPLATES = {res: _frozen(_build_templates(res)) for res in _LEVELS}
_BOTTOMS = _frozen(_bottoms(_TEMPLATES[_T], _T))
_LEVEL_FOR_SIZE = tuple(min(r for r in _LEVELS if r >= size) for size in range(_T + 1))
_pattern_rng = np.random.default_rng(20210823)
_SURFACES, _SURFACE_MEANS = map(_frozen, _build_surface_patterns(_pattern_rng))
_OBJECT_PATTERNS = {res: _frozen(p) for res, p in _build_object_patterns(_pattern_rng).items()}
del _pattern_rng
_SHADOW_LEVELS = 8


@functools.lru_cache(maxsize=8)
def _noise_bank(size: int) -> np.ndarray:
  """Fixed standard normal samples; a scene adds a random window of them.

  Drawing fresh Gaussian noise for every pixel costs more than the rest of the
  rendering, so scenes read a random window of a fixed bank instead.
  """
  length = 1 << max(18, (2 * size - 1).bit_length())
  return _frozen(np.random.default_rng(8108).standard_normal(length, dtype=np.float32))


@functools.lru_cache(maxsize=8)
def _pixel_grid(height: int, width: int, fov_degrees: float):
  """Focal length and normalized ray coordinates u (per column), v (per row, up)."""
  focal = (width / 2) / math.tan(math.radians(fov_degrees) / 2)
  u = ((np.arange(width) + 0.5 - width / 2) / focal).astype(np.float32)
  v = ((height / 2 - np.arange(height) - 0.5) / focal).astype(np.float32)
  return focal, _frozen(u), _frozen(v)


@functools.lru_cache(maxsize=4096)
def _sprite_index(rows: int, cols: int, res: int) -> np.ndarray:
  """Flat texel index, in a res x res template, of each pixel of a rows x cols sprite box."""
  ti = ((np.arange(rows) + 0.5) * (res / rows)).astype(np.intp)
  tj = ((np.arange(cols) + 0.5) * (res / cols)).astype(np.intp)
  return _frozen(np.add.outer(ti * res, tj))


@functools.lru_cache(maxsize=4096)
def _shadow_blob(rows: int, cols: int, level: int) -> np.ndarray:
  """Multiplicative soft elliptic contact shadow filling a rows x cols box."""
  strength = 0.25 + 0.45 * level / (_SHADOW_LEVELS - 1)
  dy = (np.arange(rows) + 0.5) / rows * 2 - 1
  dx = (np.arange(cols) + 0.5) / cols * 2 - 1
  q2 = dy[:, None] ** 2 + dx[None, :] ** 2
  return _frozen((1.0 - strength * np.maximum(1.0 - q2, 0.0)).astype(np.float32))


def _lerp(low, high, t):
  return low + (high - low) * t


# Slots of the per-scene uniform draws.
(_COUNT, _PITCH, _CAM_H, _WALL, _G_PAT, _W_PAT, _G_SCALE, _W_SCALE, _G_ROT, _OX, _OZ, _WX,
 _WY, _LX, _LY, _LZ, _AMB, _SPEC, _BRIGHT, _NOISE, _NOISE_OFF, _HAZE, _SHADOW) = range(23)
_TINT = 23  # 3 slots
_BG_COLOURS = 26  # 4 colours x 3 slots: ground pair, wall pair
_N_SCENE = 38
# Slots of the per-object uniform draws.
(_O_CAT, _O_Z, _O_X, _O_R, _O_ASPECT, _O_PAT, _O_AMP) = range(7)
_O_COLOURS = 7  # 2 colours x 3 slots
_N_OBJECT = 13


def _background(p: RenderParams, s, gain, focal, u, v, sin_p, cos_p, cam_h, bg_colours):
  """Ground (below `split`) and wall (above) depth, albedo and normals.

  Background depth depends on the image row only. Texture coordinates are
  affine in the column's ray slope u on each row, so one pass samples both
  surfaces: texel (a, b) = (A + B * u, C + D * u) with per-row A, B, C, D.

  Returns:
    (split row, [H] depth per row, [3, H, W] albedo, [3, H, W] normals).
  """
  h, w = p.height, p.width
  wall_z = _lerp(p.min_wall_distance, p.max_wall_distance, s[_WALL])
  down = sin_p - v * cos_p  # -(world y) of the ray (u, v, -1)
  fwd = v * sin_p + cos_p  # world z of the ray
  depth = wall_z / fwd
  t_ground = cam_h / np.maximum(down, 1e-6)
  is_ground = (down > 0) & (t_ground < depth)
  split = int(is_ground.argmax()) if is_ground[-1] else h
  depth[split:] = t_ground[split:]

  n_surf = len(_SURFACES)
  g_pat = min(int(s[_G_PAT] * n_surf), n_surf - 1)
  w_pat = (g_pat + 1 + min(int(s[_W_PAT] * (n_surf - 1)), n_surf - 2)) % n_surf
  coef = np.empty((5, h), np.float32)  # A, B, C, D, contrast fade
  mean = np.empty(h, np.float32)
  # A texture cell spans 16 texels; fade it where one pixel covers a cell.
  if split < h:  # ground: world (x, z) = t * (u, fwd), rotated about the vertical
    tg = depth[split:]
    ang = (s[_G_ROT] - 0.5) * math.pi / 2
    scale = 6.0 + 18.0 * s[_G_SCALE]  # texels per world unit
    ca, sa = scale * math.cos(ang), scale * math.sin(ang)
    gz = tg * fwd[split:]
    coef[0, split:] = gz * ca + (4096 + 64 * s[_OZ])
    coef[1, split:] = tg * -sa
    coef[2, split:] = gz * sa + (4096 + 64 * s[_OX])
    coef[3, split:] = tg * ca
    coef[4, split:] = tg * tg * (scale / (16 * focal * cam_h))
    mean[split:] = _SURFACE_MEANS[g_pat]
  if split > 0:  # wall: world (x, y) = (t * u, cam_h + t * (world y of the ray))
    tw = depth[:split]
    scale = 1.5 + 4.5 * s[_W_SCALE]
    coef[0, :split] = tw * ((sin_p - v[:split] * cos_p) * scale) + (
        4096 + 64 * s[_WY] - cam_h * scale)
    coef[1, :split] = 0.0
    coef[2, :split] = 4096 + 64 * s[_WX]
    coef[3, :split] = tw * scale
    coef[4, :split] = tw * (scale / (16 * focal))
    mean[:split] = _SURFACE_MEANS[w_pat]
  fade = 1.0 / (1.0 + 4.0 * coef[4] * coef[4])

  ia = np.multiply.outer(coef[1], u) + coef[0][:, None]
  ib = np.multiply.outer(coef[3], u) + coef[2][:, None]
  idx = (ia.astype(np.intp) & _TMASK) << (_T.bit_length() - 1) | (ib.astype(np.intp) & _TMASK)
  values = np.empty((h, w), np.float32)
  _SURFACES[w_pat].take(idx[:split], out=values[:split])
  _SURFACES[g_pat].take(idx[split:], out=values[split:])
  values = values * fade[:, None] + (mean * (1.0 - fade))[:, None]

  albedo = np.empty((3, h, w), np.float32)
  colours = bg_colours * gain
  for rows, c0, c1 in ((slice(0, split), colours[2], colours[3]),
                       (slice(split, h), colours[0], colours[1])):
    out = albedo[:, rows]
    np.multiply.outer(c1 - c0, values[rows], out=out)
    out += c0[:, None, None]

  normals = np.empty((3, h, w), np.float32)
  normals[0] = 0.0
  normals[1, :split] = -sin_p
  normals[2, :split] = cos_p
  normals[1, split:] = cos_p
  normals[2, split:] = sin_p
  return split, depth, albedo, normals


def _second_tone(colour: np.ndarray, other: np.ndarray) -> np.ndarray:
  """The second colour of a two-tone texture: a darker shade with a hue shift.

  `other` holds uniform draws. Mostly-lightness contrast looks like real
  textures and survives JPEG's chroma subsampling far better than two
  unrelated colours.
  """
  return np.clip((other - colour) * 0.3 + colour * (0.35 + 0.45 * other[..., :1]), 0.0, 1.0)


def _render_once(draws: np.ndarray, p: RenderParams, num_objects: int):
  """Renders one candidate scene from its uniform draws; None if it is unusable."""
  h, w = p.height, p.width
  focal, u, v = _pixel_grid(h, w, p.fov_degrees)
  s = draws[:_N_SCENE].tolist()
  objs = draws[_N_SCENE:_N_SCENE + num_objects * _N_OBJECT].reshape(num_objects, _N_OBJECT)
  # Brightness and colour tint of the light are folded into all albedos.
  gain = ((255.0 * _lerp(p.min_brightness, p.max_brightness, s[_BRIGHT])) *
          (0.88 + 0.24 * draws[_TINT:_TINT + 3])).astype(np.float32)
  colours = objs[:, _O_COLOURS:_O_COLOURS + 6].astype(np.float32).reshape(num_objects, 2, 3)
  base_colours = (colours[:, 0] * gain)[:, :, None, None]
  bg_colours = draws[_BG_COLOURS:_BG_COLOURS + 12].astype(np.float32).reshape(4, 3)
  # Two-tone textures: objects' patterns, then the ground's and the wall's.
  tones = _second_tone(np.concatenate((colours[:, 0], bg_colours[0::2])),
                       np.concatenate((colours[:, 1], bg_colours[1::2])))
  amplitude = (0.5 + 0.5 * objs[:, _O_AMP]).astype(np.float32)
  pattern_colours = (tones[:num_objects] - colours[:, 0]) * (gain * amplitude[:, None])
  bg_colours[1::2] = tones[num_objects:]
  objs = objs[:, :_O_COLOURS].tolist()

  # Camera: world y up, z forward; camera at (0, cam_h, 0) pitched down.
  pitch = math.radians(_lerp(p.min_pitch_degrees, p.max_pitch_degrees, s[_PITCH]))
  sin_p, cos_p = math.sin(pitch), math.cos(pitch)
  cam_h = _lerp(p.min_camera_height, p.max_camera_height, s[_CAM_H])
  split, bg_depth, albedo, normals = _background(
      p, s, gain, focal, u, v, sin_p, cos_p, cam_h, bg_colours)

  # Objects: place on the ground, project, then z-buffer their sprites.
  semantic = np.zeros((h, w), np.uint8)
  instances = np.zeros((h, w), np.int32)
  zbuf = np.full((h, w), _EMPTY_DEPTH, np.float32)
  tan_half = (w / 2) / focal
  shadow_level = min(int(s[_SHADOW] * _SHADOW_LEVELS), _SHADOW_LEVELS - 1)
  n_cat, n_pat, n_asp = len(CATEGORIES), len(_OBJECT_PATTERNS[_T]), len(_ASPECTS)
  cats = np.zeros(num_objects, np.int64)
  boxes_at = []
  silhouettes = np.zeros(num_objects, np.int32)
  for i, oi in enumerate(objs):
    cat = min(int(oi[_O_CAT] * n_cat), n_cat - 1)
    cats[i] = cat
    if i == 0:
      z = _lerp(p.min_main_object_distance, p.max_main_object_distance, oi[_O_Z])
      radius = _lerp(0.5 * (p.min_object_size + p.max_object_size), p.max_object_size,
                     oi[_O_R])
      x = (2 * oi[_O_X] - 1) * 0.35 * z * tan_half
    else:
      lo, hi = p.min_object_distance, p.max_object_distance
      z = lo * (hi / lo) ** oi[_O_Z]  # log-uniform: near objects are common
      radius = _lerp(p.min_object_size, p.max_object_size, oi[_O_R])
      x = (2 * oi[_O_X] - 1) * 1.05 * z * tan_half
    a_k = min(int(oi[_O_ASPECT] * n_asp), n_asp - 1)
    yc = float(_BOTTOMS[cat]) * radius - cam_h  # sprite centre height relative to the camera
    depth_c = z * cos_p - yc * sin_p
    col_c = w / 2 + focal * x / depth_c
    row_c = h / 2 - focal * (yc * cos_p + z * sin_p) / depth_c
    ry = focal * radius / depth_c
    rx = ry * _ASPECTS[a_k]

    # Soft contact shadow on the ground (objects are drawn over it).
    row_g = h / 2 - focal * (z * sin_p - cam_h * cos_p) / (z * cos_p + cam_h * sin_p)
    sh, sw = max(int(0.6 * rx + 0.5), 1), max(int(2.2 * rx + 0.5), 1)
    top, left = int(math.floor(row_g - sh / 2 + 0.5)), int(math.floor(col_c - sw / 2 + 0.5))
    r0, r1 = max(top, split), min(top + sh, h)
    c0, c1 = max(left, 0), min(left + sw, w)
    if r0 < r1 and c0 < c1:
      albedo[:, r0:r1, c0:c1] *= _shadow_blob(sh, sw, shadow_level)[
          r0 - top:r1 - top, c0 - left:c1 - left]

    # The sprite box snaps to whole pixels; labels come from the same pixels.
    bh, bw = max(int(2 * ry + 0.5), 1), max(int(2 * rx + 0.5), 1)
    top, left = int(math.floor(row_c - bh / 2 + 0.5)), int(math.floor(col_c - bw / 2 + 0.5))
    r0, r1 = max(top, 0), min(top + bh, h)
    c0, c1 = max(left, 0), min(left + bw, w)
    if r0 >= r1 or c0 >= c1:
      continue
    res = _LEVEL_FOR_SIZE[min(max(bh, bw), _T)]
    idx = _sprite_index(bh, bw, res)[r0 - top:r1 - top, c0 - left:c1 - left]
    sub = _TEMPLATES[res][cat, a_k].take(idx, axis=1)  # [5, rows, cols]
    silhouettes[i] = np.count_nonzero(sub[_MASK])
    if not silhouettes[i]:
      continue
    boxes_at.append((i, r0, r1, c0, c1))
    d = sub[_RELIEF] * -radius + depth_c
    zb = zbuf[r0:r1, c0:c1]
    write = d < zb
    np.copyto(zb, d, where=write)
    np.copyto(instances[r0:r1, c0:c1], i + 1, where=write)
    np.copyto(semantic[r0:r1, c0:c1], cat + 1, where=write)
    np.copyto(normals[:, r0:r1, c0:c1], sub[:3], where=write)
    pat_k = min(int(oi[_O_PAT] * n_pat), n_pat - 1)
    if pat_k == 0:
      np.copyto(albedo[:, r0:r1, c0:c1], base_colours[i], where=write)
    else:
      col = np.multiply.outer(pattern_colours[i], _OBJECT_PATTERNS[res][pat_k].take(idx))
      col += base_colours[i]
      np.copyto(albedo[:, r0:r1, c0:c1], col, where=write)

  # Boxes from the final visibility, per sprite box.
  visible = np.zeros(num_objects, np.int64)
  box_list, box_ids = [], []
  for i, r0, r1, c0, c1 in boxes_at:
    own = instances[r0:r1, c0:c1] == i + 1
    count = np.count_nonzero(own)
    visible[i] = count
    if count < p.min_visible_pixels:
      continue
    rows = np.flatnonzero(own.any(1))
    cols = np.flatnonzero(own.any(0))
    box_list.append(((r0 + rows[0]) / h, (c0 + cols[0]) / w, (r0 + rows[-1] + 1) / h,
                     (c0 + cols[-1] + 1) / w))
    box_ids.append(i + 1)
  area = np.bincount(cats + 1, weights=visible, minlength=NUM_CLASSES)
  image_class = int(area[1:].argmax()) + 1
  box_ids = np.asarray(box_ids, np.int32)
  classes = (cats[box_ids - 1] + 1).astype(np.int32)
  if area[image_class] == 0 or image_class not in classes:
    return None

  depth = np.where(instances > 0, zbuf, bg_depth[:, None])

  # Shading from the very normal map above: ambient + Lambert + Blinn-Phong.
  light = np.array([1.6 * s[_LX] - 0.8, 0.2 + 0.8 * s[_LY], 0.3 + 0.7 * s[_LZ]], np.float32)
  light /= np.linalg.norm(light)
  half = light + np.array([0, 0, 1], np.float32)
  half /= np.linalg.norm(half)
  ambient = _lerp(p.min_ambient, p.max_ambient, s[_AMB])
  flat_n = normals.reshape(3, -1)
  shade = np.maximum((light * np.float32(1.0 - ambient)) @ flat_n, 0.0) + ambient
  image = albedo.reshape(3, -1) * shade
  specular = _lerp(p.min_specular, p.max_specular, s[_SPEC])
  if specular > 0:
    spec = np.maximum((half * np.float32(specular ** (1 / 16))) @ flat_n, 0.0)  # spec (n.h)^16
    for _ in range(4):
      spec *= spec
    image += np.multiply.outer(gain, spec)

  # Haze toward the horizon, then sensor noise.
  haze_colour = (180.0 + 60.0 * bg_colours[3]).astype(np.float32)[:, None]
  haze_distance = _lerp(p.min_haze_distance, p.max_haze_distance, s[_HAZE])
  keep = np.exp(depth.reshape(-1) * np.float32(-1.0 / haze_distance))
  image = (image - haze_colour) * keep + (haze_colour + 0.5)  # + 0.5: round to uint8 below
  n_px = image.size
  bank = _noise_bank(n_px)
  start = int(s[_NOISE_OFF] * (bank.size - n_px))
  image += bank[start:start + n_px].reshape(3, -1) * np.float32(p.noise_std_max * s[_NOISE])
  np.clip(image, 0.0, 255.0, out=image)
  rgb = np.ascontiguousarray(image.astype(np.uint8).reshape(3, h, w).transpose(1, 2, 0))
  return Scene(
      image=rgb, semantic=semantic, instances=instances, depth=depth,
      normals=np.ascontiguousarray(normals.transpose(1, 2, 0)),
      boxes=np.asarray(box_list, np.float32).reshape(-1, 4), classes=classes,
      box_instance_ids=box_ids, image_class=image_class, silhouette_areas=silhouettes)


def render_scene(rng: np.random.Generator, params: RenderParams = RenderParams()) -> Scene:
  """Renders one random scene from its stream (`scene_rng`).

  The first object is a large, near "main" object so that every scene has at
  least one box; if occlusion leaves the largest category without a box, the
  scene is redrawn from the same stream (so the result stays deterministic),
  and the last attempt draws the main object alone.
  """
  span = params.max_objects - params.min_objects + 1
  for attempt in range(params.max_attempts):
    draws = rng.random(_N_SCENE + params.max_objects * _N_OBJECT)
    if attempt == params.max_attempts - 1:
      num_objects = 1
    else:
      num_objects = params.min_objects + min(int(draws[_COUNT] * span), span - 1)
    scene = _render_once(draws, params, num_objects)
    if scene is not None:
      return scene
  raise RuntimeError(f"could not render a scene with a visible main object under {params}")
