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

import tf_keras

from must import image_codec
from must import tasks
from must.tasks import base
from must.tasks import heads
from official.modeling import hyperparams

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


@dataclasses.dataclass
class ClassificationAdapter(hyperparams.Config):
  """How a foreign classifier's output maps to `probs`.

  Attributes:
    key: its output of class scores ('' for its only output).
    kind: 'logits' (softmax applied) or 'probs'.
  """
  key: str = ""
  kind: str = "logits"


@tasks.register
class Classification(base.Task):
  """Classification with soft labels.

  Args:
    num_classes: size of the label space (the dense decoded vector's length).
    top_k: store only the k most probable classes; None stores every class
      with non-zero probability.
  """

  name = "classification"
  size_policies = ("resize", "center_crop", "pad")
  served_outputs = {"probs": 2}
  adapter_outputs = ClassificationAdapter

  def adapt_outputs(self, outputs, options, input_size):
    scores = tf.cast(base.adapted_output(outputs, options.key), tf.float32)
    if options.kind not in ("logits", "probs"):
      raise ValueError(f"classification outputs kind {options.kind!r}; valid: logits, probs")
    return {"probs": tf.nn.softmax(scores, -1) if options.kind == "logits" else scores}

  def check_served(self, outputs):
    width = np.shape(outputs["probs"])[-1]
    return "" if width == self.num_classes else (
        f"probs have {width} classes, the teacher declares {self.num_classes}")
  primary_metric = "top1"
  has_classes = True
  world_teacher_split = True
  writes_json_lines = True
  record_image_formats = (image_codec.JPEG,)  # the stock parser's decode_jpeg_only=True

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

  def student_head(self, config, model) -> "ClassificationHead":
    return ClassificationHead(config, model, self.num_classes)

  def decode(self, parsed, image_size, present):
    del image_size, present  # Absent: label -1, all-zero distribution.
    ids = base.dense(parsed, SOFT_LABEL)
    probs = tf.scatter_nd(ids[:, None], base.dense(parsed, SOFT_PROB),
                          [self.num_classes])
    return {"label": tf.cast(parsed[LABEL], tf.int32), "probs": probs}

  def world_label(self, scene):
    return ClassificationLabel.one_hot(scene.image_class, self.num_classes)

  def from_decoded(self, decoded):
    return ClassificationLabel(np.asarray(decoded["probs"], np.float32))

  def select(self, label, selection):
    """Kept when the top-1 class is selected and its probability >= min_score."""
    probs = np.asarray(label.probs)
    if probs.max(initial=0.0) < selection.min_score:
      return None, base.BELOW_MIN_SCORE
    if not base.in_classes(int(np.argmax(probs)), selection.classes):
      return None, base.CLASS_NOT_SELECTED
    return label, ""

  def balance_key(self, label):
    """Balanced by the top-1 class, ranked by its probability."""
    return int(np.argmax(label.probs)), float(np.max(label.probs))

  def scored_classes(self, label):
    return [self.balance_key(label)]

  def json_line(self, image_id, label, names, top_k):
    probs = np.asarray(label.probs)
    top = [int(i) for i in np.argsort(-probs, kind="stable")[:top_k] if probs[i] > 0]
    return {"id": image_id, "label": int(np.argmax(probs)),
            "top_k": [{"class_id": i, "name": names[i] if i < len(names) else str(i),
                       "prob": float(probs[i])} for i in top]}

  def label_stats(self, label):
    return {"class_histogram": {int(np.argmax(label.probs)): 1}}

  def quality_stats(self, truth, outputs, metric):
    """Reliability of the top-1 class (`base.confidence_quality`), kept when its
    probability reaches a threshold (the export's `min_score`)."""
    probs = np.asarray(outputs["probs"], np.float64).reshape(-1)
    return base.confidence_quality([probs.max()], [metric.result()["top1"] == 1.0])

  def quality_summary(self, totals):
    return base.confidence_quality_summary(totals, "min_score", "image")

  def uncertainty(self, label):
    """The entropy of the distribution over the log of the number of classes."""
    probs = np.asarray(label.probs, np.float64)
    probs = probs[probs > 0] / max(probs.sum(), 1e-12)
    return float(-(probs * np.log(probs)).sum() / np.log(self.num_classes)) if (
        self.num_classes > 1) else 0.0

  def title(self, label, names, top_k):
    probs = np.asarray(label.probs)
    return " ".join(f"{names[i] if i < len(names) else i}:{probs[i]:.2f}"
                    for i in np.argsort(-probs)[:top_k])


class TopOneAccuracy(base.Metric):
  """Top-1 accuracy of `probs` against the label's argmax class."""

  state_fields = ("correct", "count")

  def __init__(self):
    self.correct = 0
    self.count = 0

  def update(self, label, outputs):
    self.correct += int(np.argmax(outputs["probs"]) == int(label["label"]))
    self.count += 1

  def result(self):
    return {"top1": self.correct / max(self.count, 1), "images": self.count}


class ClassificationHead(heads.StudentHead):
  """Global-average-pooled C5 + a linear layer, trained with soft cross-entropy."""

  def build(self):
    return _PooledLinear(self.num_classes, self.model.l2_regularizer, name="classification_head")

  def targets(self, label, flip, output_size):
    del flip, output_size
    return {"probs": label["probs"], "label": label["label"], "present": label["present"]}

  def loss(self, outputs, targets):
    log_probs = tf.nn.log_softmax(tf.cast(outputs, tf.float32), axis=-1)
    per_example = -tf.reduce_sum(targets["probs"] * log_probs, axis=-1)
    present = tf.cast(targets["present"], tf.float32)
    return tf.reduce_sum(per_example * present), tf.reduce_sum(present)

  def serve(self, outputs, image_size):
    del image_size
    return {"probs": tf.nn.softmax(tf.cast(outputs, tf.float32), axis=-1)}


class _PooledLinear(tf_keras.layers.Layer):
  """Logits [B, C] from the backbone's last endpoint, average-pooled."""

  def __init__(self, num_classes: int, kernel_regularizer=None, **kwargs):
    super().__init__(**kwargs)
    self.pool = tf_keras.layers.GlobalAveragePooling2D()
    self.linear = tf_keras.layers.Dense(num_classes, kernel_regularizer=kernel_regularizer)

  def call(self, features, training=None):
    endpoints = features["backbone"]
    return self.linear(self.pool(endpoints[max(endpoints, key=int)]))
