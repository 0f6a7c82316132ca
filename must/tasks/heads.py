"""What every task gives the multi-task student: targets, a head, a loss, outputs.

`Task.student_head(config, model)` returns a `StudentHead`. The student model
(`must.student`) only calls these methods, so adding a task to the student is
adding its task module, never touching the model code.

A head reads `Features`: the backbone's endpoints ('2'..'5'), the decoder's
pyramid ('2'..'7') and `fused`, every pyramid level resized to level 2 and
summed (the paper's input of the pixel tasks).

Losses come back as (sum over this replica's batch, normalizer). The student
sums each normalizer over all replicas before dividing, so a task's loss is the
same on one device and on many, and an example without a label adds to neither.
"""
import abc
import dataclasses
from typing import Any, List, Mapping, Optional

import tensorflow as tf

import must  # noqa: F401  (legacy Keras switch before Model Garden loads)
from must import configs
import tf_keras
from official.modeling import hyperparams
from official.vision.configs import common
from official.vision.modeling.heads import segmentation_heads
from official.vision.ops import preprocess_ops

Features = Mapping[str, Any]


@dataclasses.dataclass
class HeadConfig(hyperparams.Config):
  """One task head of the student: what every head has, plus its task's `options`.

  Attributes:
    task: the task's registry name.
    loss_weight: weight of this task's loss; None applies the task's default
      (the paper's rule from the teacher's batch size and learning rate, or 1).
    num_classes: the task's classes where it has classes (0: the schema's, e.g.
      the world's 11).
    num_convs: 3x3 conv + norm + activation layers before the prediction.
    num_filters: filters of those convs.
    options: settings only this task's head has, typed by its task's
      `head_options` config (as a Model Garden one-of holds only the chosen
      type's block); a key that config lacks stops at load (`typed_options`).
  """
  task: str = ""
  loss_weight: Optional[float] = None
  num_classes: int = 0
  num_convs: int = 3
  num_filters: int = 64
  options: hyperparams.Config = dataclasses.field(default_factory=hyperparams.Config)


def typed_options(config: HeadConfig, options_type: Optional[type]) -> Optional[hyperparams.Config]:
  """A head's `options` as its task's typed config (defaults + what was set).

  Raises:
    ConfigError: a key or value the task's options do not take, or options
      given to a task that has none.
  """
  given = config.options.as_dict() if config.options is not None else {}
  where = f"task.model.heads ({config.task}).options"
  if options_type is None:
    if given:
      raise configs.ConfigError(f"{where}: the {config.task} head takes no options, got {given}")
    return None
  return configs.load(options_type(), params_override=given, override_name=where)


@dataclasses.dataclass
class ModelSpec:
  """What heads need to know of the student model around them."""
  input_size: List[int]                  # [height, width]
  min_level: int                         # pyramid levels of the decoder
  max_level: int
  norm_activation: common.NormActivation
  l2_regularizer: Optional[tf_keras.regularizers.Regularizer] = None


class StudentHead(abc.ABC):
  """One task's part of the multi-task student.

  Args:
    config: this head's `HeadConfig`.
    model: the model around the head.
    num_classes: the task's class count (0 for tasks without classes).
  """

  def __init__(self, config: HeadConfig, model: ModelSpec, num_classes: int = 0):
    self.config = config
    self.model = model
    self.num_classes = config.num_classes or num_classes

  @abc.abstractmethod
  def build(self) -> tf_keras.layers.Layer:
    """A layer mapping `Features` to this task's raw outputs."""

  @abc.abstractmethod
  def targets(self, label: Mapping[str, tf.Tensor], flip: tf.Tensor,
              output_size: List[int]) -> dict[str, tf.Tensor]:
    """One decoded example's label -> fixed-shape training targets (in `tf.data`).

    Args:
      label: this task's part of `Schema.decode` (with 'present').
      flip: scalar bool, whether the image is flipped left-right.
      output_size: [height, width] the image is resized to.

    Returns:
      Tensors of fixed shape, 'present' (scalar bool) among them.
    """

  @abc.abstractmethod
  def loss(self, outputs: Any, targets: Mapping[str, tf.Tensor]) -> tuple[tf.Tensor, tf.Tensor]:
    """(sum of the loss over this batch, normalizer), absent labels excluded."""

  @abc.abstractmethod
  def serve(self, outputs: Any, image_size: tf.Tensor) -> dict[str, tf.Tensor]:
    """Raw outputs -> the teacher signature's outputs for images of `image_size`."""


class DenseHead(tf_keras.layers.Layer):
  """Model Garden's `SegmentationHead` on the fused level-2 map: convs + 1x1 conv."""

  def __init__(self, num_outputs: int, config: HeadConfig, model: ModelSpec, **kwargs):
    super().__init__(**kwargs)
    norm = model.norm_activation
    self.head = segmentation_heads.SegmentationHead(
        num_classes=num_outputs, level=2, num_convs=config.num_convs,
        num_filters=config.num_filters, activation=norm.activation,
        use_sync_bn=norm.use_sync_bn, norm_momentum=norm.norm_momentum,
        norm_epsilon=norm.norm_epsilon, kernel_regularizer=model.l2_regularizer)

  def call(self, features: Features, training=None):
    return self.head((features["backbone"], {"2": features["fused"]}), training=training)


def flip_dense(array: tf.Tensor, flip: tf.Tensor) -> tf.Tensor:
  """Flips [H, W, ...] left-right when `flip`."""
  return tf.cond(flip, lambda: tf.reverse(array, axis=[1]), lambda: array)


def resize_dense(array: tf.Tensor, output_size: List[int]) -> tf.Tensor:
  """Nearest-neighbour resize of a [H, W, C] label map (no new values)."""
  return tf.image.resize(array, output_size, method="nearest")


def upsample(logits: tf.Tensor, size) -> tf.Tensor:
  """[B, h, w, C] -> float32 [B, H, W, C], bilinear."""
  return tf.image.resize(tf.cast(logits, tf.float32), size, method="bilinear")


def normalize_images(images: tf.Tensor) -> tf.Tensor:
  """uint8 [..., H, W, 3] -> float32 normalized like Model Garden's vision tasks."""
  return preprocess_ops.normalize_image(
      images, [m / 255.0 for m in preprocess_ops.MEAN_RGB],
      [s / 255.0 for s in preprocess_ops.STDDEV_RGB])
