"""Semantic segmentation: one class id per pixel, 255 = ignore.

Feature: `image/segmentation/class/encoded`, a single-channel 8-bit PNG, which
is what Model Garden's semantic segmentation decoder reads.
"""
import dataclasses

import numpy as np
import tensorflow as tf

from must import image_codec
from must import tasks
from must import visualize
from must.tasks import base
from must.tasks import heads
from official.modeling import hyperparams

ENCODED = "image/segmentation/class/encoded"
FORMAT = "image/segmentation/class/format"
IGNORE_LABEL = 255


@dataclasses.dataclass
class SegmentationLabel:
  """mask: uint8 [H, W] class ids; IGNORE_LABEL marks pixels without a label."""
  mask: np.ndarray


@dataclasses.dataclass
class SegmentationAdapter(hyperparams.Config):
  """How a foreign segmenter's output maps to per-pixel classes.

  Attributes:
    key: its [B, h, w, C] output ('' for its only output), at any resolution.
    kind: 'logits' or 'probs'.
  """
  key: str = ""
  kind: str = "logits"


@tasks.register
class Segmentation(base.Task):
  """Semantic segmentation.

  Args:
    num_classes: class ids are 0..num_classes-1 (0 = background); 255 ignores.
  """

  name = "segmentation"
  primary_metric = "miou"
  has_classes = True
  world_teacher_split = True

  def __init__(self, num_classes: int):
    if not 1 <= num_classes <= IGNORE_LABEL:
      raise ValueError(f"num_classes must be in [1, {IGNORE_LABEL}], got {num_classes}")
    self.num_classes = num_classes

  def features(self, label: SegmentationLabel, image_size) -> base.Features:
    mask = np.asarray(label.mask)
    base.check_dense_shape(self.name, mask, image_size)
    labeled = mask[mask != IGNORE_LABEL]
    if labeled.size and (labeled.min() < 0 or labeled.max() >= self.num_classes):
      raise ValueError(f"segmentation ids must be < {self.num_classes} or "
                       f"{IGNORE_LABEL}, got max {labeled.max()}")
    return {
        ENCODED: base.bytes_feature(image_codec.encode_png(mask.astype(np.uint8))),
        FORMAT: base.bytes_feature(image_codec.PNG),
    }

  def feature_spec(self) -> base.FeatureSpec:
    return {
        ENCODED: tf.io.FixedLenFeature((), tf.string, default_value=""),
        FORMAT: tf.io.FixedLenFeature((), tf.string, default_value=""),
    }

  outputs_at_teacher_size = ("classes", "confidence")
  served_outputs = {"classes": 3, "confidence": 3}
  adapter_outputs = SegmentationAdapter

  def adapt_outputs(self, outputs, options, input_size):
    scores = tf.cast(base.adapted_output(outputs, options.key), tf.float32)
    if options.kind not in ("logits", "probs"):
      raise ValueError(f"segmentation outputs kind {options.kind!r}; valid: logits, probs")
    logits = scores if options.kind == "logits" else tf.math.log(tf.maximum(scores, 1e-12))
    return classes_and_confidence(logits, list(input_size[:2]))

  def check_served(self, outputs):
    top = int(np.max(outputs["classes"], initial=0))
    return "" if top < self.num_classes else (
        f"class {top} served, the teacher declares {self.num_classes} classes")

  def pseudo_label(self, outputs, image_size, min_confidence: float = 0.5) -> SegmentationLabel:
    """The teacher's per-pixel class; pixels whose confidence (top class
    probability) is under `min_confidence` get IGNORE_LABEL (the paper's
    recipe, 0.5).

    The label is made at the teacher's resolution and mapped to the image by
    nearest neighbour, so memory stays one byte per image pixel whatever the
    number of classes.

    Args:
      outputs: one image's teacher outputs: `classes` int [h, w] and
        `confidence` float [h, w], spanning the image.
      image_size: (height, width) of the stored image.
      min_confidence: the probability threshold.

    Returns:
      The SegmentationLabel.
    """
    classes = np.asarray(outputs["classes"])
    if classes.size and classes.max() >= self.num_classes:
      raise ValueError(f"the segmentation teacher gives class {classes.max()}, "
                       f"the schema has {self.num_classes}")
    mask = classes.astype(np.uint8)
    mask[np.asarray(outputs["confidence"]) < min_confidence] = IGNORE_LABEL
    if mask.shape != tuple(image_size):
      # Each image pixel takes the teacher pixel whose area holds its centre.
      rows, cols = ((2 * np.arange(int(n)) + 1) * t // (2 * int(n))
                    for n, t in zip(image_size, mask.shape))
      mask = mask[rows[:, None], cols[None, :]]
    return SegmentationLabel(mask)

  def metric(self) -> "MeanIoU":
    return MeanIoU(self.num_classes)

  def student_head(self, config, model) -> "SegmentationHead":
    return SegmentationHead(config, model, self.num_classes)

  def decode(self, parsed, image_size, present):
    # Absent: every pixel ignored.
    mask = base.decode_png_or_fill(parsed[ENCODED], present, image_size, 1, tf.uint8,
                                   IGNORE_LABEL)
    return {"mask": mask}

  def world_label(self, scene):
    return SegmentationLabel(scene.semantic)

  def from_decoded(self, decoded):
    return SegmentationLabel(np.asarray(decoded["mask"], np.uint8))

  def select(self, label, selection):
    """Pixels of unselected classes become background; an image left without one is dropped."""
    if selection.classes is None:
      return label, ""
    mask = np.asarray(label.mask)
    objects = (mask != 0) & (mask != IGNORE_LABEL)
    other = objects & ~base.in_classes(mask, selection.classes)
    if not (objects & ~other).any():
      return None, base.CLASS_NOT_SELECTED
    return SegmentationLabel(np.where(other, 0, mask).astype(np.uint8)), ""

  def balance_key(self, label):
    """Balanced by the most frequent object class, ranked by the labeled fraction."""
    mask = np.asarray(label.mask)
    labeled = float(np.mean(mask != IGNORE_LABEL))
    objects = mask[(mask != 0) & (mask != IGNORE_LABEL)]
    if not objects.size:
      return 0, labeled
    return int(np.argmax(np.bincount(objects))), labeled

  def scored_classes(self, label):
    mask = np.asarray(label.mask)
    return [(int(c), None) for c in np.unique(mask) if c not in (0, IGNORE_LABEL)]

  def files(self, image_id, label):
    """One 8-bit PNG of class ids per image (255 = ignore)."""
    return {f"{image_id}.png": image_codec.encode_png(np.asarray(label.mask, np.uint8))}

  def label_stats(self, label):
    mask = np.asarray(label.mask)
    ignored = int(np.sum(mask == IGNORE_LABEL))
    return {"ignored_pixels": ignored, "pixels": int(mask.size),
            "class_histogram": base.class_counts(mask[mask != IGNORE_LABEL]),
            "ignored_fraction_histogram": np.histogram(
                [ignored / max(mask.size, 1)], base.SCORE_BINS, (0.0, 1.0))[0].tolist()}

  def stats_summary(self, totals):
    if not totals.get("pixels"):
      return {}
    return {"ignored_pixel_fraction": totals["ignored_pixels"] / totals["pixels"]}

  def quality_stats(self, truth, outputs, metric):
    """Reliability of each labeled pixel's class (`base.confidence_quality`),
    kept when its confidence reaches a threshold (`min_confidence`)."""
    del metric
    mask = np.asarray(truth["mask"]).reshape(-1)
    valid = mask != IGNORE_LABEL
    classes = np.asarray(outputs["classes"]).reshape(-1)
    confidence = np.asarray(outputs["confidence"], np.float64).reshape(-1)
    if classes.shape != mask.shape:
      raise ValueError(f"segmentation outputs have {classes.size} pixels, the label "
                       f"{mask.size}")
    return base.confidence_quality(confidence[valid], classes[valid] == mask[valid])

  def quality_summary(self, totals):
    return base.confidence_quality_summary(totals, "min_confidence", "pixel")

  def uncertainty(self, label):
    """The fraction of pixels the teacher was unsure of (ignored: under
    `min_confidence`)."""
    return float(np.mean(np.asarray(label.mask) == IGNORE_LABEL)) if np.size(label.mask) else 0.0

  def draw(self, label, image, names, scale):
    mask = visualize.upscale(np.asarray(label.mask), scale)
    return [(visualize.overlay_mask(image, mask, len(names)), "mask")]


class MeanIoU(base.Metric):
  """Mean intersection-over-union of the served `classes` over classes seen in
  labels or predictions; ignored pixels do not count."""

  state_fields = ("confusion",)

  def __init__(self, num_classes: int):
    self.num_classes = num_classes
    self.confusion = np.zeros([num_classes, num_classes], np.int64)

  def update(self, label, outputs):
    truth = np.asarray(label["mask"]).reshape(-1).astype(np.int64)
    predicted = np.asarray(outputs["classes"]).reshape(-1).astype(np.int64)
    keep = truth != IGNORE_LABEL
    self.confusion += np.bincount(truth[keep] * self.num_classes + predicted[keep],
                                  minlength=self.num_classes ** 2).reshape(self.confusion.shape)

  def result(self):
    intersection = np.diag(self.confusion)
    union = self.confusion.sum(0) + self.confusion.sum(1) - intersection
    seen = union > 0
    return {"miou": float((intersection[seen] / union[seen]).mean()) if seen.any() else 0.0,
            "pixel_accuracy": float(intersection.sum() / max(self.confusion.sum(), 1))}


class SegmentationHead(heads.StudentHead):
  """Per-pixel classes on the fused level-2 map; cross-entropy, 255 ignored."""

  def build(self):
    return heads.DenseHead(self.num_classes, self.config, self.model, name="segmentation_head")

  def targets(self, label, flip, output_size):
    mask = heads.resize_dense(label["mask"][..., None], output_size)[..., 0]
    return {"mask": heads.flip_dense(mask, flip), "present": label["present"]}

  def loss(self, outputs, targets):
    mask = tf.cast(targets["mask"], tf.int32)
    logits = heads.upsample(outputs, tf.shape(mask)[1:3])
    valid = mask != IGNORE_LABEL
    per_pixel = tf.nn.sparse_softmax_cross_entropy_with_logits(
        labels=tf.where(valid, mask, 0), logits=logits)
    valid = tf.cast(valid, tf.float32)
    return tf.reduce_sum(per_pixel * valid), tf.reduce_sum(valid)

  def serve(self, outputs, image_size):
    return classes_and_confidence(outputs, image_size)


def classes_and_confidence(logits: tf.Tensor, size) -> dict[str, tf.Tensor]:
  """float [B, h, w, C] logits -> the served `classes` (int32 argmax) and
  `confidence` (its softmax probability) at `size` [H, W], the logits resized
  bilinearly one image at a time, so that only one image's probabilities are
  ever held."""
  def one(image_logits):
    probs = tf.nn.softmax(heads.upsample(image_logits[None], size)[0], axis=-1)
    return tf.argmax(probs, axis=-1, output_type=tf.int32), tf.reduce_max(probs, axis=-1)
  classes, confidence = tf.map_fn(one, logits, fn_output_signature=(tf.int32, tf.float32))
  return {"classes": classes, "confidence": confidence}
