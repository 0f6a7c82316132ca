"""Image classification: a (soft) class distribution per image.

Features: `image/class/label` (argmax, what Model Garden's classification
decoder reads) plus the distribution as `image/class/soft/label` (class ids)
and `image/class/soft/prob` (their float32 probabilities). With `top_k` only
the k most probable classes are stored, to bound record size for large label
spaces; probabilities are stored as they are, not renormalized.
"""
import dataclasses

import numpy as np
import tensorflow as tf

from must import tasks
from must.tasks import base

LABEL = "image/class/label"
SOFT_LABEL = "image/class/soft/label"
SOFT_PROB = "image/class/soft/prob"


@dataclasses.dataclass
class ClassificationLabel:
  """probs: float [num_classes], a distribution (one-hot for ground truth)."""
  probs: np.ndarray

  @classmethod
  def one_hot(cls, class_id: int, num_classes: int) -> "ClassificationLabel":
    probs = np.zeros([num_classes], np.float32)
    probs[class_id] = 1.0
    return cls(probs)


@tasks.register
class Classification(base.Task):
  """Classification with soft labels.

  Args:
    num_classes: size of the label space (the dense decoded vector's length).
    top_k: store only the k most probable classes; None stores every class
      with non-zero probability.
  """

  name = "classification"

  def __init__(self, num_classes: int, top_k: int | None = None):
    if num_classes < 1:
      raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    self.num_classes = num_classes
    self.top_k = top_k

  def features(self, label: ClassificationLabel, image_size) -> base.Features:
    del image_size
    probs = np.asarray(label.probs, np.float32)
    if probs.shape != (self.num_classes,):
      raise ValueError(
          f"classification label has shape {probs.shape}, expected ({self.num_classes},)")
    ids = np.flatnonzero(probs)
    if self.top_k is not None and len(ids) > self.top_k:
      ids = np.sort(np.argsort(-probs, kind="stable")[:self.top_k])
    return {
        LABEL: base.int64_feature(int(np.argmax(probs))),
        SOFT_LABEL: base.int64_feature(ids),
        SOFT_PROB: base.float_feature(probs[ids]),
    }

  def feature_spec(self) -> base.FeatureSpec:
    return {
        LABEL: tf.io.FixedLenFeature((), tf.int64, default_value=-1),
        SOFT_LABEL: tf.io.VarLenFeature(tf.int64),
        SOFT_PROB: tf.io.VarLenFeature(tf.float32),
    }

  def pseudo_label(self, outputs, image_size, top_k: int | None = None) -> ClassificationLabel:
    """The teacher's class distribution as a soft label (the paper's recipe).

    Args:
      outputs: one image's teacher outputs; `probs` is float [num_classes].
      image_size: (height, width) of the stored image (unused: one label per image).
      top_k: keep only the k most probable classes (the others become 0); the
        task's own `top_k` still applies when the label is encoded.

    Returns:
      The soft ClassificationLabel.
    """
    del image_size
    probs = np.asarray(outputs["probs"], np.float32).reshape(-1)
    if probs.shape != (self.num_classes,):
      raise ValueError(f"the classification teacher gives {probs.shape[0]} classes, "
                       f"the schema has {self.num_classes}")
    if top_k is not None and top_k < len(probs):
      keep = np.argsort(-probs, kind="stable")[:top_k]
      kept = np.zeros_like(probs)
      kept[keep] = probs[keep]
      probs = kept
    return ClassificationLabel(probs)

  def metric(self) -> "TopOneAccuracy":
    return TopOneAccuracy()

  def decode(self, parsed, image_size, present):
    del image_size, present  # Absent: label -1, all-zero distribution.
    ids = base.dense(parsed, SOFT_LABEL)
    probs = tf.scatter_nd(ids[:, None], base.dense(parsed, SOFT_PROB),
                          [self.num_classes])
    return {"label": tf.cast(parsed[LABEL], tf.int32), "probs": probs}


class TopOneAccuracy(base.Metric):
  """Top-1 accuracy of `probs` against the label's argmax class."""

  def __init__(self):
    self.correct = 0
    self.count = 0

  def update(self, label, outputs):
    self.correct += int(np.argmax(outputs["probs"]) == int(label["label"]))
    self.count += 1

  def result(self):
    return {"top1": self.correct / max(self.count, 1), "images": self.count}
