"""What every task provides, and the tf.train.Feature helpers tasks share.

A task turns its label (a small NumPy dataclass) into tf.Example features on the
Python side, and parses those features back into tensors inside `tf.data`.
Later layers (pseudo-labeling, the student's head and loss, metrics) hang off
the same task object, so each task lives in exactly one module of `must.tasks`.
"""
import abc
from typing import Any, ClassVar, Mapping

import numpy as np
import tensorflow as tf

Features = dict[str, tf.train.Feature]
FeatureSpec = dict[str, tf.io.FixedLenFeature | tf.io.VarLenFeature]


def bytes_feature(*values: bytes | str) -> tf.train.Feature:
  """A BytesList feature; str values are UTF-8 encoded."""
  return tf.train.Feature(bytes_list=tf.train.BytesList(
      value=[v.encode() if isinstance(v, str) else v for v in values]))


def int64_feature(values) -> tf.train.Feature:
  """An Int64List feature from a scalar or a 1-D sequence."""
  return tf.train.Feature(int64_list=tf.train.Int64List(
      value=np.asarray(values, np.int64).reshape(-1).tolist()))


def float_feature(values) -> tf.train.Feature:
  """A FloatList feature (float32) from a scalar or a 1-D sequence."""
  return tf.train.Feature(float_list=tf.train.FloatList(
      value=np.asarray(values, np.float32).reshape(-1).tolist()))


def dense(parsed: Mapping[str, Any], key: str) -> tf.Tensor:
  """A VarLenFeature as a dense 1-D tensor."""
  return tf.sparse.to_dense(parsed[key])


class Metric(abc.ABC):
  """Accumulates one task's metric over images; `result()` gives the numbers.

  `update` takes one image's decoded label (this task's part of
  `Schema.decode`, as NumPy) and the model's raw outputs for that image (the
  teacher signature's outputs without the batch dimension).
  """

  @abc.abstractmethod
  def update(self, label: Mapping[str, np.ndarray], outputs: Mapping[str, np.ndarray]) -> None:
    """Adds one image."""

  @abc.abstractmethod
  def result(self) -> dict[str, float]:
    """The metric values over every image added so far."""


class Task(abc.ABC):
  """One vision task: its label and its tf.Example features.

  Subclasses set `name` (the registry key) and implement the three methods.
  Constructor keyword arguments are the task's parameters (e.g. the number of
  classes), so `must.tasks.build(name, **params)` makes one.
  """

  name: ClassVar[str]
  # The metric (a key of `metric().result()`) reports compare models on; higher is better.
  primary_metric: ClassVar[str]
  # How the student weighs this task's loss by default: 'teacher' applies the
  # paper's rule w = (b_s * lr_t) / (b_t * lr_s) from the teacher's metadata;
  # 'fixed' uses 1 (the paper weighs depth on its own).
  student_loss_weight_rule: ClassVar[str] = "teacher"

  @abc.abstractmethod
  def features(self, label: Any, image_size: tuple[int, int]) -> Features:
    """Encodes one label (this task's label dataclass) as tf.Example features.

    Args:
      label: this task's label dataclass.
      image_size: (height, width) of the stored image; dense labels must match.
    """

  @abc.abstractmethod
  def feature_spec(self) -> FeatureSpec:
    """The parse spec of this task's features; every key has a default."""

  @abc.abstractmethod
  def metric(self) -> Metric:
    """A fresh accumulator of this task's standard metric."""

  @abc.abstractmethod
  def pseudo_label(self, outputs: Mapping[str, np.ndarray], image_size: tuple[int, int],
                   **thresholds) -> Any:
    """One image's raw teacher outputs -> this task's label dataclass.

    Args:
      outputs: the teacher signature's outputs for one image (no batch
        dimension), dense maps already resized to the stored image's size.
      image_size: (height, width) of the stored image.
      **thresholds: the task's pseudo-labeling thresholds (e.g. min_score).
    """

  @abc.abstractmethod
  def student_head(self, config: Any, model: Any) -> Any:
    """This task's part of the multi-task student (`must.tasks.heads.StudentHead`).

    Args:
      config: the head's `must.tasks.heads.HeadConfig`.
      model: the `must.tasks.heads.ModelSpec` of the student around it.
    """

  @abc.abstractmethod
  def decode(self, parsed: Mapping[str, tf.Tensor], image_size: tf.Tensor,
             present: tf.Tensor) -> dict[str, tf.Tensor]:
    """Parsed features -> label tensors, inside `tf.data` or eagerly.

    Args:
      parsed: the output of `tf.io.parse_single_example` with every task's spec.
      image_size: int32 [2] tensor, (height, width) of the decoded image.
      present: scalar bool, whether this example carries this task's label.
        When False the task still returns tensors of the usual shapes (empty
        or filled with its ignore value) so examples batch together.

    Returns:
      A dict of tensors, this task's part of the decoded example.
    """


def check_dense_shape(name: str, array: np.ndarray, image_size: tuple[int, int]) -> None:
  """Raises when a dense label does not cover the stored image pixel for pixel."""
  if tuple(array.shape[:2]) != tuple(image_size):
    raise ValueError(f"{name} label is {array.shape[0]}x{array.shape[1]} but the "
                     f"image is {image_size[0]}x{image_size[1]}")


def decode_png_or_fill(encoded: tf.Tensor, present: tf.Tensor, image_size: tf.Tensor,
                       channels: int, dtype: tf.DType, fill) -> tf.Tensor:
  """Decodes a dense PNG label, or a map filled with `fill` when absent.

  Returns:
    [H, W] for one channel, [H, W, channels] otherwise.
  """
  shape = tf.concat([image_size, [channels]], axis=0)
  array = tf.cond(
      present,
      lambda: tf.reshape(tf.io.decode_png(encoded, channels=channels, dtype=dtype), shape),
      lambda: tf.fill(shape, tf.constant(fill, dtype)))
  return array[..., 0] if channels == 1 else array
