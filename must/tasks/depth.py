"""Monocular depth: a float map stored as a 16-bit PNG plus scale and shift.

Features: `image/depth/encoded` (16-bit single-channel PNG), and what brings the
floats back: value = shift + scale * (q - 1) for codes q >= 1; code 0 marks
pixels without depth (non-finite input). `image/depth/kind` says what the
values are: `relative_inverse` (MiDaS-style, valid up to scale and shift: what
teachers predict) or `metric` (distance along the camera axis: ground truth).
The quantization error is at most scale / 2 = (max - min) / 131068.
"""
import dataclasses
import json
from typing import Tuple

import numpy as np
import tensorflow as tf

from must import image_codec
from must import tasks
from must import visualize
from must.tasks import base
from must.tasks import heads
from official.modeling import hyperparams

ENCODED = "image/depth/encoded"
SCALE = "image/depth/scale"
SHIFT = "image/depth/shift"
KIND = "image/depth/kind"
KINDS = ("relative_inverse", "metric")
OUTPUT = "depth"  # the key of a depth model's output map
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


@dataclasses.dataclass
class DepthAdapter(hyperparams.Config):
  """How a foreign depth model's output maps to relative inverse depth.

  Attributes:
    key: its [B, h, w] or [B, h, w, 1] output ('' for its only output).
    kind: 'metric' or 'relative' (depth: inverted), 'inverse' or
      'relative_inverse' (disparity-like: kept).
  """
  key: str = ""
  kind: str = "relative_inverse"


@tasks.register
class Depth(base.Task):
  """Dense depth (relative inverse or metric)."""

  name = "depth"
  served_outputs = {"depth": 3}
  adapter_outputs = DepthAdapter

  def adapt_outputs(self, outputs, options, input_size):
    values = tf.cast(base.adapted_output(outputs, options.key), tf.float32)
    values = values if values.shape.rank == 4 else values[..., None]
    values = heads.upsample(values, list(input_size[:2]))[..., 0]
    if options.kind in ("metric", "relative"):
      values = 1.0 / tf.maximum(values, 1e-6)
    elif options.kind not in ("inverse", "relative_inverse"):
      raise ValueError(f"depth outputs kind {options.kind!r}; valid: metric, relative, "
                       "inverse, relative_inverse")
    return {OUTPUT: values}
  primary_metric = "delta_1.25"
  lower_is_better = ("abs_rel",)
  student_loss_weight_rule = "fixed"
  world_teacher_split = True

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

  def student_head(self, config, model) -> "DepthHead":
    return DepthHead(config, model)

  def decode(self, parsed, image_size, present):
    # Absent: every pixel invalid.
    codes = base.decode_png_or_fill(parsed[ENCODED], present, image_size, 1, tf.uint16, 0)
    values = parsed[SHIFT] + parsed[SCALE] * (tf.cast(codes, tf.float32) - 1.0)
    valid = codes > 0
    return {"depth": tf.where(valid, values, 0.0), "valid": valid, "kind": parsed[KIND]}

  def world_label(self, scene):
    return DepthLabel(scene.depth, kind="metric")

  def from_decoded(self, decoded):
    values = np.asarray(decoded["depth"], np.float32)
    return DepthLabel(np.where(decoded["valid"], values, np.float32(np.nan)),
                      kind=decoded["kind"].decode() or KINDS[0])

  def files(self, image_id, label):
    """A 16-bit PNG plus a JSON side file with its scale and shift."""
    codes, scale, shift = quantize(label.depth)
    side = {"scale": float(scale), "shift": float(shift), "kind": label.kind,
            "decode": "value = shift + scale * (code - 1); code 0 = no depth"}
    return {f"{image_id}.png": image_codec.encode_png(codes),
            f"{image_id}.json": json.dumps(side, sort_keys=True).encode()}

  def label_stats(self, label):
    values = np.asarray(label.depth)
    finite = values[np.isfinite(values)]
    stats = {"pixels": int(values.size), "valid_pixels": int(finite.size)}
    if finite.size:
      stats["min"], stats["max"] = float(finite.min()), float(finite.max())
    return stats

  def quality_stats(self, truth, outputs, metric):
    """The image's AbsRel (after alignment, `DepthMetrics`) in a histogram of
    `ABS_REL_BINS` bins; depth has no threshold."""
    del truth, outputs
    result = metric.result()
    if not metric.pixels:
      return {"images_without_depth": 1}
    return {"abs_rel_histogram": np.histogram(
        [min(result["abs_rel"], ABS_REL_RANGE - 1e-9)], ABS_REL_BINS,
        (0.0, ABS_REL_RANGE))[0].tolist()}

  def quality_summary(self, totals):
    counts = totals.get("abs_rel_histogram", [0] * ABS_REL_BINS)
    edges = np.linspace(0.0, ABS_REL_RANGE, ABS_REL_BINS + 1)
    return {"curve": [{"abs_rel_from": float(a), "abs_rel_to": float(b), "images": int(n)}
                      for a, b, n in zip(edges[:-1], edges[1:], counts)],
            "suggested": None,
            "plot": {"title": "per-image depth error", "x": "AbsRel (aligned)", "y": "images",
                     "bars": True,
                     "series": {"images": [((edges[:-1] + edges[1:]) / 2).tolist(),
                                           [int(n) for n in counts]]}}}

  def draw(self, label, image, names, scale):
    values = np.asarray(label.depth, np.float32)
    valid = np.isfinite(values)
    colors = visualize.colorize_depth(np.where(valid, values, 0), valid,
                                      inverse=label.kind != "relative_inverse")
    return [(visualize.upscale(colors, scale), "depth")]


ABS_REL_BINS, ABS_REL_RANGE = 10, 0.5  # the per-image error histogram of `quality_stats`


class DepthMetrics(base.Metric):
  """AbsRel and delta<1.25 after per-image scale/shift alignment in inverse depth.

  The prediction (`depth`, relative inverse depth) is aligned by least squares
  (`align_scale_shift_batch`, the loss's alignment) to the label's inverse
  depth (1 / metric depth, or the label itself when it is relative inverse),
  turned into depth, and compared on valid pixels. The one depth metric of
  every model: teachers in training and offline, students.
  """

  state_fields = ("abs_rel_sum", "delta_count", "pixels")

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
    aligned = align_scale_shift_batch(outputs["depth"], target_inverse, valid)[0].numpy()
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


# -- Scale-and-shift-invariant alignment and loss (tensors, batched) ----------


def _masked_mean(x: tf.Tensor, mask: tf.Tensor, count: tf.Tensor) -> tf.Tensor:
  return tf.reduce_sum(x * mask, axis=[-2, -1], keepdims=True) / tf.maximum(count, 1.0)


def align_scale_shift_batch(pred: tf.Tensor, target: tf.Tensor,
                      valid: tf.Tensor) -> Tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
  """Least-squares scale and shift that align `pred` to `target` per image.

  Solves min_{s,t} sum_valid (s * pred + t - target)^2 in closed form over the
  last two (spatial) axes. A prediction that is constant over the valid pixels
  gets scale 0 and the target's mean as shift; an image without valid pixels
  gets scale 0 and shift 0.

  Args:
    pred: float [..., H, W] prediction (e.g. relative inverse depth).
    target: float [..., H, W]; values at invalid pixels are ignored (may be
      NaN or inf).
    valid: bool [..., H, W].

  Returns:
    (aligned [..., H, W] = scale * pred + shift, scale [...], shift [...]).
  """
  pred = tf.convert_to_tensor(pred, tf.float32)
  target = tf.convert_to_tensor(target, tf.float32)
  valid = tf.convert_to_tensor(valid, tf.bool)
  mask = tf.cast(valid, tf.float32)
  pred_v = tf.where(valid, pred, 0.0)
  target_v = tf.where(valid, target, 0.0)
  count = tf.reduce_sum(mask, axis=[-2, -1], keepdims=True)
  # Centred sums: the normal equations' determinant cancels badly in float32.
  pred_mean = _masked_mean(pred_v, mask, count)
  target_mean = _masked_mean(target_v, mask, count)
  pred_c = (pred_v - pred_mean) * mask
  target_c = (target_v - target_mean) * mask
  variance = tf.reduce_sum(pred_c * pred_c, axis=[-2, -1], keepdims=True)
  covariance = tf.reduce_sum(pred_c * target_c, axis=[-2, -1], keepdims=True)
  scale = tf.math.divide_no_nan(covariance, variance)
  shift = target_mean - scale * pred_mean
  aligned = scale * pred + shift
  return aligned, scale[..., 0, 0], shift[..., 0, 0]


def _standardize(target: tf.Tensor, valid: tf.Tensor) -> tf.Tensor:
  """Zero mean, unit std over valid pixels per image (0 where invalid)."""
  mask = tf.cast(valid, tf.float32)
  target = tf.where(valid, target, 0.0)
  count = tf.reduce_sum(mask, axis=[-2, -1], keepdims=True)
  mean = _masked_mean(target, mask, count)
  centred = (target - mean) * mask
  std = tf.sqrt(_masked_mean(centred * centred, mask, count))
  return tf.math.divide_no_nan(centred, std)


def _gradient_matching(residual: tf.Tensor, mask: tf.Tensor, scales: int) -> tf.Tensor:
  """MiDaS multi-scale gradient matching term of the residual, per image [B]."""
  total = tf.zeros(tf.shape(residual)[:1])
  for scale in range(scales):
    step = 2**scale
    r = residual[:, ::step, ::step]
    m = mask[:, ::step, ::step]
    grad_x = tf.abs(r[:, :, 1:] - r[:, :, :-1]) * m[:, :, 1:] * m[:, :, :-1]
    grad_y = tf.abs(r[:, 1:, :] - r[:, :-1, :]) * m[:, 1:, :] * m[:, :-1, :]
    count = tf.maximum(tf.reduce_sum(m, axis=[1, 2]), 1.0)
    total += (tf.reduce_sum(grad_x, axis=[1, 2]) + tf.reduce_sum(grad_y, axis=[1, 2])) / count
  return total


def _trimmed_mean_abs(residual: tf.Tensor, valid: tf.Tensor, trim_fraction: float) -> tf.Tensor:
  """Per image [B]: mean |residual| over valid pixels, largest fraction left out."""
  flat_abs = tf.reshape(tf.where(valid, tf.abs(residual), np.inf), [tf.shape(residual)[0], -1])
  ascending = tf.sort(flat_abs, axis=1)
  count = tf.reduce_sum(tf.cast(valid, tf.float32), axis=[1, 2])
  keep = tf.math.ceil(count * (1.0 - trim_fraction))
  kept = tf.cast(tf.range(tf.shape(ascending)[1]), tf.float32)[None, :] < keep[:, None]
  return tf.math.divide_no_nan(tf.reduce_sum(tf.where(kept, ascending, 0.0), axis=1), keep)


def scale_shift_invariant_loss(pred: tf.Tensor, target: tf.Tensor, valid: tf.Tensor,
                               gradient_matching_weight: float = 0.0,
                               gradient_matching_scales: int = 4,
                               loss_type: str = "mse",
                               trim_fraction: float = 0.2,
                               reduce_mean: bool = True) -> tf.Tensor:
  """Scale-and-shift-invariant loss (MiDaS), averaged over the batch.

  Each target is standardized over its valid pixels (so every image weighs
  the same whatever its depth range; the 'mse' loss is then 1 - R^2 of the
  least-squares fit), the prediction is aligned to it with
  `align_scale_shift_batch`, and the error over valid pixels is the image's loss.
  Images without valid pixels contribute 0.

  Args:
    pred: float [B, H, W] predicted relative inverse depth.
    target: float [B, H, W] target inverse depth.
    valid: bool [B, H, W].
    gradient_matching_weight: weight of the multi-scale gradient matching term.
    gradient_matching_scales: its number of scales.
    loss_type: 'mse' or 'trimmed_mae' (mean absolute error of the residuals
      but the largest `trim_fraction` of them, per image).
    trim_fraction: see `loss_type`.
    reduce_mean: average over the batch; False returns each image's loss.

  Returns:
    Scalar loss, the mean over the B images (per replica); or [B].
  """
  if loss_type not in ("mse", "trimmed_mae"):
    raise ValueError(f"unknown depth loss_type {loss_type!r}; valid: mse, trimmed_mae")
  valid = tf.convert_to_tensor(valid, tf.bool)
  mask = tf.cast(valid, tf.float32)
  target = _standardize(tf.convert_to_tensor(target, tf.float32), valid)
  aligned, _, _ = align_scale_shift_batch(pred, target, valid)
  residual = tf.where(valid, aligned - target, 0.0)
  if loss_type == "mse":
    count = tf.maximum(tf.reduce_sum(mask, axis=[1, 2]), 1.0)
    per_image = tf.reduce_sum(residual * residual, axis=[1, 2]) / count
  else:
    per_image = _trimmed_mean_abs(residual, valid, trim_fraction)
  if gradient_matching_weight:
    per_image += gradient_matching_weight * _gradient_matching(
        residual, mask, gradient_matching_scales)
  return tf.reduce_mean(per_image) if reduce_mean else per_image


def target_inverse_depth(label) -> tuple[tf.Tensor, tf.Tensor]:
  """A decoded depth label -> (inverse depth [H, W], valid [H, W]).

  Metric depth d (ground truth) becomes 1/d where d > 0; relative inverse
  depth (a teacher's pseudo label) is used as it is.
  """
  depth = tf.cast(label["depth"], tf.float32)
  valid = label["valid"] & label["present"] & tf.math.is_finite(depth)
  metric = tf.equal(label["kind"], b"metric")
  positive = valid & (depth > 0)
  inverse = tf.where(metric, tf.math.divide_no_nan(1.0, tf.where(positive, depth, 1.0)), depth)
  valid = tf.where(metric, positive, valid)
  return tf.where(valid, inverse, 0.0), valid


class DepthHead(heads.StudentHead):
  """Relative inverse depth on the fused level-2 map, scale-and-shift-invariant loss."""

  def build(self):
    return heads.DenseHead(1, self.config, self.model, name="depth_head")

  def targets(self, label, flip, output_size):
    inverse, valid = target_inverse_depth(label)
    dense = heads.resize_dense(tf.stack([inverse, tf.cast(valid, tf.float32)], axis=-1),
                               output_size)
    dense = heads.flip_dense(dense, flip)
    return {"inverse_depth": dense[..., 0], "valid": dense[..., 1] > 0.5,
            "metric": tf.equal(label["kind"], b"metric"), "present": label["present"]}

  def loss(self, outputs, targets):
    valid = targets["valid"]
    pred = heads.upsample(outputs, tf.shape(valid)[1:3])[..., 0]
    per_image = scale_shift_invariant_loss(pred, targets["inverse_depth"], valid,
                                           reduce_mean=False)
    has_depth = tf.cast(tf.reduce_any(valid, axis=[1, 2]), tf.float32)
    return tf.reduce_sum(per_image * has_depth), tf.reduce_sum(has_depth)

  def serve(self, outputs, image_size):
    return {"depth": heads.upsample(outputs, image_size)[..., 0]}
