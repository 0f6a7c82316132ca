"""What every task provides, and the tf.train.Feature helpers tasks share.

A task turns its label (a small NumPy dataclass) into tf.Example features on the
Python side, and parses those features back into tensors inside `tf.data`.
Later layers (pseudo-labeling, the student's head and loss, metrics) hang off
the same task object, so each task lives in exactly one module of `must.tasks`.
"""
import abc
import dataclasses
from typing import Any, ClassVar, Mapping, Sequence

import numpy as np
import tensorflow as tf

from must import image_codec

Features = dict[str, tf.train.Feature]
FeatureSpec = dict[str, tf.io.FixedLenFeature | tf.io.VarLenFeature]

# Why an exporter drops a label (`Task.select`).
BELOW_MIN_SCORE = "below_min_score"
CLASS_NOT_SELECTED = "class_not_selected"
NO_BOXES = "no_boxes"
SCORE_BINS = 10  # bins of the score histograms of `Task.label_stats`
# The thresholds (min score / min confidence) at which `Task.quality_stats` scores
# pseudo labels against ground truth, and the accuracy a kept label must reach
# for the suggested confidence threshold (`confidence_quality_summary`).
QUALITY_THRESHOLDS = tuple(round(0.1 * i, 1) for i in range(10))
TARGET_ACCURACY = 0.9


@dataclasses.dataclass(frozen=True)
class Selection:
  """What to export.

  Attributes:
    min_score: the lowest detection score / top-1 class probability kept.
    classes: category ids to keep; None keeps every class.
    keep_empty: keep detection images left without boxes.
  """
  min_score: float = 0.0
  classes: frozenset[int] | None = None
  keep_empty: bool = False


def in_classes(values, classes: frozenset[int] | None) -> np.ndarray:
  """Which of `values` are in `classes` (all of them when `classes` is None)."""
  if classes is None:
    return np.ones(np.shape(values), bool)
  return np.isin(values, sorted(classes))


def class_counts(values) -> dict[int, int]:
  """{value: how often it occurs} of an integer array."""
  ids, counts = np.unique(np.asarray(values).reshape(-1), return_counts=True)
  return {int(i): int(c) for i, c in zip(ids, counts)}


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

  # The attributes that hold the accumulated state, summed by `merge`.
  state_fields: ClassVar[tuple[str, ...]] = ()

  def merge(self, other: "Metric") -> "Metric":
    """Adds `other`'s images to this accumulator (a Beam combiner's merge); returns self."""
    if not self.state_fields:
      raise NotImplementedError(f"{type(self).__name__} cannot merge: list its accumulated "
                                "state in `state_fields`, or override `merge`")
    for field in self.state_fields:
      setattr(self, field, getattr(self, field) + getattr(other, field))
    return self


class Task(abc.ABC):
  """One vision task: everything the engine does with its labels.

  Subclasses set `name` (the registry key) and implement the abstract
  methods; the others have defaults for tasks they do not apply to.
  Constructor keyword arguments are the task's parameters (e.g. the number of
  classes), so `must.tasks.build(name, **params)` makes one.

  Nothing outside `must.tasks` names a task: the world, the pipelines, the
  student, the export, inspection and the report only call these methods.
  """

  name: ClassVar[str]
  # The metric (a key of `metric().result()`) reports compare models on.
  primary_metric: ClassVar[str]
  # Metric keys where lower is better (e.g. an error); every other is higher-better.
  lower_is_better: ClassVar[tuple[str, ...]] = ()
  # Whether the task's parameters include `num_classes` (the category space).
  has_classes: ClassVar[bool] = False
  # Whether the procedural world writes a labeled split to train a teacher on.
  world_teacher_split: ClassVar[bool] = False
  # Export formats beside per-image files: a COCO file, JSON lines.
  writes_coco: ClassVar[bool] = False
  writes_json_lines: ClassVar[bool] = False
  # How the student weighs this task's loss by default: 'teacher' applies the
  # paper's rule w = (b_s * lr_t) / (b_t * lr_s) from the teacher's metadata;
  # 'fixed' uses 1 (the paper weighs depth on its own).
  student_loss_weight_rule: ClassVar[str] = "teacher"
  # The typed config of this task's own head settings (`HeadConfig.options`);
  # None when the head has only the settings every head has.
  head_options: ClassVar[type | None] = None
  # Image formats this task's exported records may store; others are re-encoded
  # as the first (what the stock Model Garden parser of the task decodes).
  record_image_formats: ClassVar[tuple[str, ...]] = image_codec.FORMATS
  # Dense teacher outputs `pseudo_label` takes at the teacher's size and maps to
  # the image itself (so a [H, W, C] map is never expanded to a large image).
  outputs_at_teacher_size: ClassVar[tuple[str, ...]] = ()
  # The teacher contract (`must.serving`): how a served model fits images to its
  # input size (the first is the default) and its outputs: key -> rank, batch
  # axis included.
  size_policies: ClassVar[tuple[str, ...]] = ("pad", "resize")
  served_outputs: ClassVar[dict[str, int]] = {}
  # The typed config of how a model of another origin maps its outputs to this
  # task's (`adapt_outputs`, `teachers.adapter`); None: no adapter.
  adapter_outputs: ClassVar[type | None] = None

  def adapt_outputs(self, outputs: Mapping[str, tf.Tensor], options: Any,
                    input_size: Sequence[int]) -> dict[str, tf.Tensor]:
    """A foreign model's outputs -> this task's in the model's frame (TF).

    Args:
      outputs: the model's named outputs for a batch at its input size.
      options: this task's `adapter_outputs` config.
      input_size: (h, w) of the model's input.
    """
    raise ValueError(f"{self.name} has no adapter for models of other origins")

  def check_served(self, outputs: Mapping[str, np.ndarray]) -> str:
    """'' when a served model's outputs (one probe batch) fit this task, else why not."""
    del outputs
    return ""

  def to_image_frame(self, outputs: Mapping[str, tf.Tensor], image_info: tf.Tensor,
                     input_size: Sequence[int]) -> dict[str, tf.Tensor]:
    """A served model's outputs in its input's frame -> in each image's own frame (TF).

    The default crops dense maps (outputs [B, h, w, ...] at the input size or a
    fraction of it) to the part that covers the image and resizes that back to
    the map's size, so the map spans the image; integer maps by nearest
    neighbour. Other outputs pass unchanged. Tasks with coordinates override it.

    Args:
      outputs: the model's outputs for the fitted images.
      image_info: float [B, 4, 2], Model Garden's (original size, input size,
        scale, offset) per image (`must.serving.fit_image`): the image covers
        the input's top-left original size * scale.
      input_size: (h, w) of the model's input.
    """
    return {key: crop_to_image(value, image_info, input_size)
            if value.shape.rank is not None and value.shape.rank >= 3 else value
            for key, value in outputs.items()}

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
        dimension), dense maps already resized to the stored image's size
        but those named in `outputs_at_teacher_size`.
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


  # -- The procedural world --------------------------------------------------

  def world_label(self, scene: Any) -> Any | None:
    """The ground-truth label of a `must.world.scene.Scene`; None: the world has none."""
    del scene
    return None

  # -- Export, statistics, drawing (NumPy, inside Beam DoFns) -----------------

  @abc.abstractmethod
  def from_decoded(self, decoded: Mapping[str, np.ndarray]) -> Any:
    """This task's part of `Schema.decode` (NumPy values) -> its label dataclass."""

  def select(self, label: Any, selection: Selection) -> tuple[Any | None, str]:
    """(the label to export, '') or (None, the reason it is not exported)."""
    del selection
    return label, ""

  def balance_key(self, label: Any) -> tuple[int, float] | None:
    """(class, score): the class it is balanced under and its rank; None: not balanced."""
    del label
    return None

  def scored_classes(self, label: Any) -> list[tuple[int, float | None]]:
    """What a filter by class or score looks at: (class, score or None) items."""
    del label
    return []

  def files(self, image_id: str, label: Any) -> dict[str, bytes]:
    """Per-image export files of this task: file name -> bytes."""
    del image_id, label
    return {}

  def json_line(self, image_id: str, label: Any, names: Sequence[str],
                top_k: int) -> dict[str, Any]:
    """One JSON-lines record of the image (tasks with `writes_json_lines`)."""
    raise ValueError(f"{self.name} has no JSON-lines export")

  def coco_annotations(self, label: Any, image_size: tuple[int, int]) -> list[dict[str, Any]]:
    """COCO annotations (without ids) of one image (tasks with `writes_coco`)."""
    del label, image_size
    return []

  def label_stats(self, label: Any) -> dict[str, Any]:
    """Summary numbers of one label: ints, {class id: count} dicts, histogram lists.

    The labeling run sums them over its images (keys `min` / `max` keep the
    extreme): `class_histogram` is {class id: count}, `pixels` /
    `valid_pixels` count dense labels, `score_histogram` has `SCORE_BINS` bins
    over [0, 1].
    """
    del label
    return {}

  def stats_summary(self, totals: Mapping[str, Any]) -> dict[str, Any]:
    """Numbers derived from a run's summed `label_stats` (and its `pseudo` count)."""
    del totals
    return {}

  # -- Label quality against ground truth, uncertainty (NumPy, inside Beam) ----

  def quality_stats(self, truth: Mapping[str, Any], outputs: Mapping[str, np.ndarray],
                    metric: Metric) -> dict[str, Any]:
    """One image's pseudo labels at `QUALITY_THRESHOLDS` scored against its ground
    truth: numbers the labeling run sums over images (as `label_stats`).

    Args:
      truth: this task's part of `Schema.decode` (NumPy) plus `image_size`.
      outputs: the teacher's outputs for the image, dense maps at its size.
      metric: a `metric()` that has seen this image alone (its `result()` is
        the image's own score); the run merges it into the sample's metric.
    """
    del truth, outputs, metric
    return {}

  def quality_summary(self, totals: Mapping[str, Any]) -> dict[str, Any]:
    """Summed `quality_stats` -> {'curve': one dict per threshold, 'suggested':
    {'threshold', 'value', 'criterion'} or None, 'plot': {'title', 'x', 'y',
    'series': {name: [[x...], [y...]]}}}; {} when the task has none."""
    del totals
    return {}

  def uncertainty(self, label: Any) -> float | None:
    """How unsure the teacher was of this pseudo label, in [0, 1] (1: the most);
    None when the label says nothing about it."""
    del label
    return None

  def title(self, label: Any, names: Sequence[str], top_k: int) -> str:
    """Text for the caption of the image panel ('' for none)."""
    del label, names, top_k
    return ""

  def draw(self, label: Any, image: np.ndarray, names: Sequence[str],
           scale: int) -> list[tuple[np.ndarray, str]]:
    """(panel, caption) pairs showing the label on `image` (upscaled by `scale`)."""
    del label, image, names, scale
    return []


def confidence_quality(confidence: np.ndarray, correct: np.ndarray) -> dict[str, Any]:
  """Summable reliability numbers of labels with `confidence` (top-class
  probability) and whether each is `correct`: per confidence bin (of
  `SCORE_BINS` over [0, 1]) the count, the correct and the summed confidence;
  per threshold of `QUALITY_THRESHOLDS` the labels kept (confidence >= it) and
  the correct among them."""
  confidence = np.clip(np.asarray(confidence, np.float64).reshape(-1), 0.0, 1.0)
  correct = np.asarray(correct, bool).reshape(-1)
  bins = np.minimum((confidence * SCORE_BINS).astype(int), SCORE_BINS - 1)
  kept = confidence[None, :] >= np.asarray(QUALITY_THRESHOLDS)[:, None] - 1e-6
  return {
      "bin_count": np.bincount(bins, minlength=SCORE_BINS).tolist(),
      "bin_correct": np.bincount(bins, correct, minlength=SCORE_BINS).astype(int).tolist(),
      "bin_confidence": np.bincount(bins, confidence, minlength=SCORE_BINS).tolist(),
      "kept": kept.sum(1).tolist(),
      "kept_correct": (kept & correct[None, :]).sum(1).tolist(),
  }


def confidence_quality_summary(totals: Mapping[str, Any], threshold: str,
                               unit: str) -> dict[str, Any]:
  """`quality_summary` of summed `confidence_quality` numbers: accuracy of the
  kept labels per threshold, a reliability diagram, the expected calibration
  error, and the suggested `threshold`: the lowest (keeping the most `unit`s)
  whose kept labels reach `TARGET_ACCURACY`, else the most accurate one."""
  count, correct = np.asarray(totals["bin_count"], float), np.asarray(totals["bin_correct"], float)
  confidence = np.asarray(totals["bin_confidence"], float)
  kept, kept_correct = np.asarray(totals["kept"], float), np.asarray(totals["kept_correct"], float)
  total = max(count.sum(), 1.0)
  accuracy = np.divide(kept_correct, kept, out=np.zeros_like(kept), where=kept > 0)
  curve = [{"threshold": t, "kept_fraction": float(k / total), "accuracy": float(a)}
           for t, k, a in zip(QUALITY_THRESHOLDS, kept, accuracy)]
  seen = count > 0
  bin_accuracy = correct[seen] / count[seen]
  bin_confidence = confidence[seen] / count[seen]
  criterion = (f"the lowest {threshold} whose kept {unit}s are >= {TARGET_ACCURACY:.0%} "
               "correct (keeping the most)")
  good = [i for i in range(len(curve)) if kept[i] > 0 and accuracy[i] >= TARGET_ACCURACY]
  if good:
    best = good[0]
  else:
    best = int(np.argmax(accuracy))
    criterion += f"; none reaches it: the most accurate {threshold}"
  return {
      "curve": curve,
      "expected_calibration_error": float(
          np.sum(count[seen] * np.abs(bin_accuracy - bin_confidence)) / total),
      "suggested": {**curve[best], "threshold": threshold, "value": QUALITY_THRESHOLDS[best],
                    "criterion": criterion},
      "plot": {"title": f"reliability ({unit}s)", "x": "confidence", "y": "accuracy",
               "diagonal": True,
               "series": {"accuracy per confidence bin": [bin_confidence.tolist(),
                                                          bin_accuracy.tolist()],
                          f"accuracy of kept {unit}s vs {threshold}": [
                              list(QUALITY_THRESHOLDS), accuracy.tolist()]}},
  }


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


def adapted_output(outputs: Mapping[str, tf.Tensor], key: str) -> tf.Tensor:
  """`outputs[key]` ('' for a model's only output), naming the keys on a miss."""
  if not key and len(outputs) == 1:
    return next(iter(outputs.values()))
  if key not in outputs:
    raise ValueError(f"the model has outputs {sorted(outputs)}, not {key!r}: set the "
                     "adapter config's outputs")
  return outputs[key]


def crop_to_image(dense: tf.Tensor, image_info: tf.Tensor, input_size: Sequence[int]
                  ) -> tf.Tensor:
  """[B, h, w(, C)] over the fitted input -> the same shape over each image alone."""
  size = tf.shape(dense)[1:3]
  scaled = image_info[:, 0, :] * image_info[:, 2, :]  # the image's extent in the input
  covered = scaled / tf.constant(list(input_size[:2]), tf.float32) * tf.cast(size, tf.float32)
  extents = tf.clip_by_value(tf.cast(tf.math.ceil(covered - 1e-3), tf.int32), 1, size)
  values = dense if dense.shape.rank == 4 else dense[..., None]
  method = "bilinear" if dense.dtype.is_floating else "nearest"

  def resize(args):
    value, extent = args
    return tf.image.resize(tf.cast(value[:extent[0], :extent[1]], tf.float32), size,
                           method=method)
  cropped = tf.map_fn(resize, (values, extents),
                      fn_output_signature=tf.TensorSpec([None, None, values.shape[-1]],
                                                        tf.float32))
  cropped = cropped if dense.shape.rank == 4 else cropped[..., 0]
  return tf.cast(tf.round(cropped) if not dense.dtype.is_floating else cropped, dense.dtype)
