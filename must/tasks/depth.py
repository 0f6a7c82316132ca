"""Monocular depth: a float map stored as a 16-bit PNG plus scale and shift.

Features: `image/depth/encoded` (16-bit single-channel PNG), and what brings the
floats back: value = shift + scale * (q - 1) for codes q >= 1; code 0 marks
pixels without depth (non-finite input). `image/depth/kind` says what the
values are: `relative_inverse` (MiDaS-style, valid up to scale and shift: what
teachers predict) or `metric` (distance along the camera axis: ground truth).
The quantization error is at most scale / 2 = (max - min) / 131068.
"""
import dataclasses

import numpy as np
import tensorflow as tf

from must import image_codec
from must import tasks
from must.tasks import base

ENCODED = "image/depth/encoded"
SCALE = "image/depth/scale"
SHIFT = "image/depth/shift"
KIND = "image/depth/kind"
KINDS = ("relative_inverse", "metric")
_MAX_CODE = 65535


@dataclasses.dataclass
class DepthLabel:
  """depth: float [H, W]; NaN or inf marks pixels without depth."""
  depth: np.ndarray
  kind: str = "relative_inverse"


def quantize(depth: np.ndarray) -> tuple[np.ndarray, np.float32, np.float32]:
  """Float depth -> (uint16 codes, scale, shift) with 0 for invalid pixels."""
  depth = np.asarray(depth, np.float32)
  valid = np.isfinite(depth)
  if not valid.any():
    return np.zeros(depth.shape, np.uint16), np.float32(1), np.float32(0)
  lo, hi = float(depth[valid].min()), float(depth[valid].max())
  shift = np.float32(lo)
  scale = np.float32((hi - lo) / (_MAX_CODE - 1)) if hi > lo else np.float32(1)
  codes = np.zeros(depth.shape, np.uint16)
  codes[valid] = np.clip(np.rint((depth[valid] - shift) / scale) + 1, 1, _MAX_CODE)
  return codes, scale, shift


def dequantize(codes: np.ndarray, scale: float, shift: float) -> np.ndarray:
  """uint16 codes -> float32 depth, NaN where the code is 0."""
  depth = np.float32(shift) + np.float32(scale) * (codes.astype(np.float32) - 1)
  return np.where(codes > 0, depth, np.float32(np.nan)).astype(np.float32)


@tasks.register
class Depth(base.Task):
  """Dense depth (relative inverse or metric)."""

  name = "depth"

  def features(self, label: DepthLabel, image_size) -> base.Features:
    if label.kind not in KINDS:
      raise ValueError(f"unknown depth kind {label.kind!r}; valid: {KINDS}")
    base.check_dense_shape(self.name, np.asarray(label.depth), image_size)
    codes, scale, shift = quantize(label.depth)
    return {
        ENCODED: base.bytes_feature(image_codec.encode_png(codes)),
        SCALE: base.float_feature(scale),
        SHIFT: base.float_feature(shift),
        KIND: base.bytes_feature(label.kind),
    }

  def feature_spec(self) -> base.FeatureSpec:
    return {
        ENCODED: tf.io.FixedLenFeature((), tf.string, default_value=""),
        SCALE: tf.io.FixedLenFeature((), tf.float32, default_value=1.0),
        SHIFT: tf.io.FixedLenFeature((), tf.float32, default_value=0.0),
        KIND: tf.io.FixedLenFeature((), tf.string, default_value=""),
    }

  def pseudo_label(self, outputs, image_size) -> DepthLabel:
    """The teacher's raw prediction as relative inverse depth (the paper's recipe).

    Args:
      outputs: one image's teacher outputs; `depth` is float [H, W] at the
        stored image's size.
      image_size: (height, width) of the stored image.

    Returns:
      A DepthLabel of kind `relative_inverse`.
    """
    depth = np.asarray(outputs["depth"], np.float32)
    depth = depth[..., 0] if depth.ndim == 3 else depth
    base.check_dense_shape(self.name, depth, image_size)
    return DepthLabel(depth=depth, kind="relative_inverse")

  def metric(self) -> "DepthMetrics":
    return DepthMetrics()

  def decode(self, parsed, image_size, present):
    # Absent: every pixel invalid.
    codes = base.decode_png_or_fill(parsed[ENCODED], present, image_size, 1, tf.uint16, 0)
    values = parsed[SHIFT] + parsed[SCALE] * (tf.cast(codes, tf.float32) - 1.0)
    valid = codes > 0
    return {"depth": tf.where(valid, values, 0.0), "valid": valid, "kind": parsed[KIND]}


def align_scale_shift(prediction: np.ndarray, target: np.ndarray,
                      valid: np.ndarray) -> np.ndarray:
  """Least-squares s, t so that s * prediction + t fits target on valid pixels."""
  p, t = prediction[valid].astype(np.float64), target[valid].astype(np.float64)
  design = np.stack([p, np.ones_like(p)], axis=1)
  (scale, shift), *_ = np.linalg.lstsq(design, t, rcond=None)
  return (scale * prediction + shift).astype(np.float32)


class DepthMetrics(base.Metric):
  """AbsRel and delta<1.25 after per-image scale/shift alignment in inverse depth.

  The prediction (`depth`, relative inverse depth) is aligned by least squares
  to the label's inverse depth (1 / metric depth, or the label itself when it
  is relative inverse), turned into depth, and compared on valid pixels.
  """

  def __init__(self, min_depth: float = 1e-3):
    self.min_depth = min_depth
    self.abs_rel_sum = 0.0
    self.delta_count = 0
    self.pixels = 0

  def update(self, label, outputs):
    valid = np.asarray(label["valid"], bool)
    if valid.sum() < 2:
      return
    truth = np.asarray(label["depth"], np.float32)
    metric = label.get("kind", b"metric") in (b"metric", "metric")
    target_inverse = np.where(valid, 1.0 / np.maximum(truth, self.min_depth), 0) if metric else truth
    aligned = align_scale_shift(np.asarray(outputs["depth"], np.float32), target_inverse, valid)
    # Aligned inverse depth can be <= 0; cap predictions at 10x the farthest truth.
    predicted_depth = 1.0 / np.maximum(aligned[valid], 0.1 * target_inverse[valid].min())
    true_depth = 1.0 / target_inverse[valid]
    ratio = np.maximum(predicted_depth / true_depth, true_depth / predicted_depth)
    self.abs_rel_sum += float(np.sum(np.abs(predicted_depth - true_depth) / true_depth))
    self.delta_count += int(np.sum(ratio < 1.25))
    self.pixels += int(valid.sum())

  def result(self):
    pixels = max(self.pixels, 1)
    return {"abs_rel": self.abs_rel_sum / pixels, "delta_1.25": self.delta_count / pixels}
