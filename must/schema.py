"""The multi-task tf.Example schema: encode in Python/NumPy, decode in tf.data.

One example holds one image and a label for any subset of the registered tasks.
Common keys are the ones TF Model Garden's decoders read (`image/encoded`,
`image/format`, `image/height`, `image/width`, `image/source_id`); each task
adds its own keys (see `must.tasks`). Per task, provenance says whether the
label is ground truth or a teacher's pseudo label and which model made it:

  must/schema_version         int64, SCHEMA_VERSION
  must/<task>/source          bytes, 'ground_truth' | 'pseudo' (absent: no label)
  must/<task>/model           bytes, teacher 'name@version' ('' for ground truth)
"""
import dataclasses
from typing import Any, Mapping

import numpy as np
import tensorflow as tf

from must import image_codec
from must import tasks
from must.tasks import base

SCHEMA_VERSION = 1
VERSION_KEY = "must/schema_version"
GROUND_TRUTH = "ground_truth"
PSEUDO = "pseudo"
SOURCES = (GROUND_TRUTH, PSEUDO)
IMAGE_KEY = "image/encoded"


def source_key(task: str) -> str:
  return f"must/{task}/source"


def model_key(task: str) -> str:
  return f"must/{task}/model"


@dataclasses.dataclass(frozen=True)
class Provenance:
  """Where a label came from: ground truth, or a teacher's pseudo label."""
  source: str = GROUND_TRUTH
  model: str = ""

  def __post_init__(self):
    if self.source not in SOURCES:
      raise ValueError(f"unknown label source {self.source!r}; valid: {SOURCES}")

  @classmethod
  def pseudo(cls, teacher: str, version: str) -> "Provenance":
    return cls(PSEUDO, f"{teacher}@{version}")


GROUND_TRUTH_PROVENANCE = Provenance()


class Schema:
  """Encodes and decodes examples for a fixed set of tasks.

  Args:
    task_params: task name -> the task's constructor parameters, e.g.
      {"classification": {"num_classes": 11}, "depth": {}}. Decoding returns
      every one of these tasks, with `present` False where a label is absent.
  """

  def __init__(self, task_params: Mapping[str, Mapping[str, Any]]):
    self.tasks = {name: tasks.build(name, **dict(params))
                  for name, params in task_params.items()}

  # -- Python / NumPy side -----------------------------------------------------

  def encode(self, image: np.ndarray, labels: Mapping[str, Any], *,
             provenance: Provenance | Mapping[str, Provenance] = GROUND_TRUTH_PROVENANCE,
             encoded: bytes | None = None, image_format: str = image_codec.JPEG,
             source_id: str | None = None, jpeg_quality: int = 95) -> tf.train.Example:
    """Builds one tf.train.Example.

    Args:
      image: uint8 [H, W, 3] RGB pixels (labels are in these coordinates).
      labels: task name -> that task's label dataclass; tasks not named carry
        no label.
      provenance: one `Provenance` for every label, or one per task.
      encoded: the image's file bytes when it already has them (kept as they
        are); otherwise `image` is encoded as `image_format`.
      image_format: 'jpeg' or 'png', the format of `encoded` or to encode in.
      source_id: a stable id; defaults to a hash of the encoded bytes. Keep it
        a decimal integer string: Model Garden's detection evaluation parses
        it as the COCO image id.
      jpeg_quality: JPEG quality when encoding.
    """
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
      raise ValueError(f"image must be uint8 [H, W, 3], got {image.dtype} {image.shape}")
    if encoded is None:
      encoded = image_codec.encode_image(image, image_format, jpeg_quality)
    image_size = image.shape[:2]
    feature = {
        IMAGE_KEY: base.bytes_feature(encoded),
        "image/format": base.bytes_feature(image_format),
        "image/height": base.int64_feature(image_size[0]),
        "image/width": base.int64_feature(image_size[1]),
        "image/source_id": base.bytes_feature(source_id or image_codec.content_id(encoded)),
        VERSION_KEY: base.int64_feature(SCHEMA_VERSION),
    }
    for name, label in labels.items():
      if name not in self.tasks:
        raise KeyError(f"label for task {name!r}, which this schema does not have; "
                       f"its tasks: {sorted(self.tasks)}")
      prov = provenance if isinstance(provenance, Provenance) else provenance[name]
      feature.update(self.tasks[name].features(label, image_size))
      feature[source_key(name)] = base.bytes_feature(prov.source)
      feature[model_key(name)] = base.bytes_feature(prov.model)
    return tf.train.Example(features=tf.train.Features(feature=feature))

  # -- TensorFlow side ---------------------------------------------------------

  def feature_spec(self) -> base.FeatureSpec:
    """The parse spec of the common keys, provenance and every task's keys."""
    spec = {
        IMAGE_KEY: tf.io.FixedLenFeature((), tf.string),
        "image/format": tf.io.FixedLenFeature((), tf.string, default_value=""),
        "image/height": tf.io.FixedLenFeature((), tf.int64, default_value=-1),
        "image/width": tf.io.FixedLenFeature((), tf.int64, default_value=-1),
        "image/source_id": tf.io.FixedLenFeature((), tf.string, default_value=""),
        VERSION_KEY: tf.io.FixedLenFeature((), tf.int64, default_value=0),
    }
    for name, task in self.tasks.items():
      spec.update(task.feature_spec())
      spec[source_key(name)] = tf.io.FixedLenFeature((), tf.string, default_value="")
      spec[model_key(name)] = tf.io.FixedLenFeature((), tf.string, default_value="")
    return spec

  def decode(self, serialized: tf.Tensor) -> dict[str, Any]:
    """Decodes one serialized example; works eagerly and inside `tf.data`.

    Returns:
      {'image': uint8 [H, W, 3], 'source_id', 'format', 'schema_version',
       and per task name: {'present', 'source', 'model', ...the task's tensors}}.
    """
    parsed = tf.io.parse_single_example(serialized, self.feature_spec())
    image = tf.io.decode_image(parsed[IMAGE_KEY], channels=3, expand_animations=False)
    image_size = tf.shape(image)[:2]
    decoded = {
        "image": image,
        "source_id": parsed["image/source_id"],
        "format": parsed["image/format"],
        "schema_version": parsed[VERSION_KEY],
    }
    for name, task in self.tasks.items():
      source = parsed[source_key(name)]
      present = tf.strings.length(source) > 0
      decoded[name] = {"present": present, "source": source,
                       "model": parsed[model_key(name)],
                       **task.decode(parsed, image_size, present)}
    return decoded
