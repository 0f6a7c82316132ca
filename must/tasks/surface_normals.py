"""Surface normals: a unit vector per pixel in the camera frame.

Feature: `image/normals/encoded`, a 16-bit three-channel PNG with each
component mapped from [-1, 1] to codes [1, 65535]; (0, 0, 0) marks pixels
without a normal. Frame: x right, y up, z toward the camera. The quantization
error per component is at most 1 / 65534.
"""
import dataclasses

import numpy as np
import tensorflow as tf

from must import image_codec
from must import tasks
from must import visualize
from must.tasks import base
from must.tasks import heads

ENCODED = "image/normals/encoded"
_HALF_RANGE = 32767.0  # codes 1..65535 <-> components -1..1


@dataclasses.dataclass
class SurfaceNormalsLabel:
  """normals: float [H, W, 3] unit vectors; NaN rows mark pixels without one."""
  normals: np.ndarray


def quantize(normals: np.ndarray) -> np.ndarray:
  """Float [H, W, 3] normals -> uint16 codes, (0, 0, 0) where not finite."""
  normals = np.asarray(normals, np.float32)
  valid = np.all(np.isfinite(normals), axis=-1, keepdims=True)
  codes = np.rint((np.clip(np.nan_to_num(normals), -1, 1) + 1) * _HALF_RANGE) + 1
  return np.where(valid, codes, 0).astype(np.uint16)


@tasks.register
class SurfaceNormals(base.Task):
  """Dense surface normals."""

  name = "surface_normals"
  served_outputs = {"normals": 4}
  primary_metric = "within_11.25"
  lower_is_better = ("mean_angle",)
  student_loss_weight_rule = "fixed"

  def features(self, label: SurfaceNormalsLabel, image_size) -> base.Features:
    normals = np.asarray(label.normals)
    base.check_dense_shape(self.name, normals, image_size)
    if normals.ndim != 3 or normals.shape[2] != 3:
      raise ValueError(f"surface normals must be [H, W, 3], got {normals.shape}")
    return {ENCODED: base.bytes_feature(image_codec.encode_png(quantize(normals)))}

  def feature_spec(self) -> base.FeatureSpec:
    return {ENCODED: tf.io.FixedLenFeature((), tf.string, default_value="")}

  def pseudo_label(self, outputs, image_size) -> SurfaceNormalsLabel:
    """A normals teacher's prediction, renormalized to unit vectors.

    Args:
      outputs: one image's teacher outputs; `normals` is float [H, W, 3] at
        the stored image's size.
      image_size: (height, width) of the stored image.

    Returns:
      A SurfaceNormalsLabel; zero-length predictions become invalid (NaN).
    """
    normals = np.asarray(outputs["normals"], np.float32)
    base.check_dense_shape(self.name, normals, image_size)
    norm = np.linalg.norm(normals, axis=-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
      normals = np.where(norm > 1e-6, normals / norm, np.float32(np.nan))
    return SurfaceNormalsLabel(normals.astype(np.float32))

  def metric(self) -> "AngularError":
    return AngularError()

  def student_head(self, config, model) -> "SurfaceNormalsHead":
    return SurfaceNormalsHead(config, model)

  def decode(self, parsed, image_size, present):
    # Absent: every pixel invalid.
    codes = base.decode_png_or_fill(parsed[ENCODED], present, image_size, 3, tf.uint16, 0)
    valid = tf.reduce_all(codes > 0, axis=-1)
    normals = (tf.cast(codes, tf.float32) - 1.0) / _HALF_RANGE - 1.0
    return {"normals": tf.where(valid[..., None], normals, 0.0), "valid": valid}

  def world_label(self, scene):
    return SurfaceNormalsLabel(scene.normals)

  def from_decoded(self, decoded):
    valid = np.asarray(decoded["valid"], bool)[..., None]
    return SurfaceNormalsLabel(np.where(valid, np.asarray(decoded["normals"], np.float32),
                                        np.float32(np.nan)))

  def files(self, image_id, label):
    """The feature's 16-bit PNG: codes 1..65535 for components -1..1, 0 = no normal."""
    return {f"{image_id}.png": image_codec.encode_png(quantize(label.normals))}

  def label_stats(self, label):
    normals = np.asarray(label.normals)
    return {"pixels": int(normals.shape[0] * normals.shape[1]),
            "valid_pixels": int(np.all(np.isfinite(normals), axis=-1).sum())}

  def draw(self, label, image, names, scale):
    normals = np.asarray(label.normals, np.float32)
    colors = visualize.colorize_normals(np.nan_to_num(normals),
                                        np.all(np.isfinite(normals), axis=-1))
    return [(visualize.upscale(colors, scale), "normals")]


class AngularError(base.Metric):
  """Mean angular error (degrees) and the fraction of pixels under 11.25 degrees."""

  state_fields = ("angle_sum", "within", "pixels")

  def __init__(self):
    self.angle_sum = 0.0
    self.within = 0
    self.pixels = 0

  def update(self, label, outputs):
    valid = np.asarray(label["valid"], bool)
    truth = np.asarray(label["normals"], np.float32)[valid]
    predicted = np.asarray(outputs["normals"], np.float32)[valid]
    predicted /= np.maximum(np.linalg.norm(predicted, axis=-1, keepdims=True), 1e-6)
    angles = np.degrees(np.arccos(np.clip(np.sum(truth * predicted, axis=-1), -1, 1)))
    self.angle_sum += float(angles.sum())
    self.within += int(np.sum(angles < 11.25))
    self.pixels += int(valid.sum())

  def result(self):
    pixels = max(self.pixels, 1)
    return {"mean_angle": self.angle_sum / pixels, "within_11.25": self.within / pixels}


class SurfaceNormalsHead(heads.StudentHead):
  """Unit normals on the fused level-2 map; loss 1 - cos(angle) per valid pixel.

  A left-right flip mirrors the x component (x points right in the camera frame).
  """

  def build(self):
    return heads.DenseHead(3, self.config, self.model, name="surface_normals_head")

  def targets(self, label, flip, output_size):
    valid = tf.cast(label["valid"] & label["present"], tf.float32)[..., None]
    dense = heads.resize_dense(tf.concat([label["normals"], valid], axis=-1), output_size)
    dense = heads.flip_dense(dense, flip)
    normals = dense[..., :3] * tf.where(flip, [-1.0, 1.0, 1.0], [1.0, 1.0, 1.0])
    return {"normals": normals, "valid": dense[..., 3] > 0.5, "present": label["present"]}

  def loss(self, outputs, targets):
    valid = tf.cast(targets["valid"], tf.float32)
    pred = tf.math.l2_normalize(heads.upsample(outputs, tf.shape(valid)[1:3]), axis=-1)
    cosine = tf.reduce_sum(pred * targets["normals"], axis=-1)
    return tf.reduce_sum((1.0 - cosine) * valid), tf.reduce_sum(valid)

  def serve(self, outputs, image_size):
    return {"normals": tf.math.l2_normalize(heads.upsample(outputs, image_size), axis=-1)}
