"""Scores models on raw ground truth with each task's metric, offline and in training.

Metrics come from the task registry (`Task.metric()`): top-1, COCO AP/AP50
through pycocotools, mIoU, AbsRel and delta<1.25, surface-normal angles. Every
model (teacher, student, baseline, transfer) is scored by `score`: offline
(`evaluate`, on exported models) and in Model Garden's eval loop, where the
eval parser adds `ground_truth`, `padded_batch` batches it and `aggregate`
feeds it to the metrics from a task's `aggregate_logs`.
"""
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np
import tensorflow as tf

from must import schema as schema_lib

Predict = Callable[[list[bytes]], Mapping[str, np.ndarray]]
GROUND_TRUTH = "ground_truth"  # the eval labels' key of the raw decoded labels


def score(metric, label: Mapping[str, np.ndarray], image_size, outputs: Mapping[str, np.ndarray],
          size: Sequence[int] | None = None) -> None:
  """Adds one image to `metric` if it is labeled: its decoded label as it is.

  Args:
    metric: the task's `Task.metric()`.
    label: the task's part of `Schema.decode` (NumPy) for the image.
    image_size: (height, width) of the stored image.
    outputs: the model's outputs for the image (teacher signature, no batch axis).
    size: (height, width) the model's dense outputs have; the label's dense
      maps (those that cover the image pixel for pixel, as the schema stores
      them) are nearest-resized to it when the image has another size.
  """
  if not label["present"]:
    return
  height, width = (int(v) for v in image_size)
  if size is not None and (height, width) != tuple(size):
    rows = (np.arange(size[0]) + 0.5) * height // size[0]
    cols = (np.arange(size[1]) + 0.5) * width // size[1]
    label = {key: value[rows.astype(int)][:, cols.astype(int)]
             if np.ndim(value) >= 2 and np.shape(value)[:2] == (height, width) else value
             for key, value in label.items()}
    height, width = size
  metric.update({**label, "image_size": (height, width)}, outputs)


def ground_truth(decoded: Mapping[str, Any], tasks: Sequence[str]) -> dict[str, Any]:
  """In `tf.data`: the decoded labels of `tasks` as they are, for `aggregate`.

  Each array's shape travels with it (scalars have none: a batch of empty
  shapes crashes mirrored CPU replicas), so `padded_batch` can batch labels of
  any size and `aggregate` cuts the padding off again.
  """
  labels = {task: dict(decoded[task]) for task in tasks}
  shapes = {task: {key: tf.shape(value) for key, value in label.items() if value.shape.rank}
            for task, label in labels.items()}
  return {"labels": labels, "shapes": shapes, "image_size": tf.shape(decoded["image"])[:2]}


def padded_batch(params) -> Callable[..., tf.data.Dataset]:
  """A `transform_and_batch_fn` for Model Garden's input reader: batches with padding."""
  def batch(dataset: tf.data.Dataset, input_context=None) -> tf.data.Dataset:
    size = params.global_batch_size
    size = input_context.get_per_replica_batch_size(size) if input_context else size
    return dataset.padded_batch(size, drop_remainder=params.drop_remainder)
  return batch


def _replicas(tree) -> list:
  """Eval outputs (values: a tuple with one entry per local replica, as Model
  Garden's eval loop hands them over, or a plain tensor) -> one tree per replica."""
  if not isinstance(tree, Mapping):
    return [np.asarray(v) for v in (tree if isinstance(tree, (tuple, list)) else [tree])]
  parts = {key: _replicas(value) for key, value in tree.items()}
  return [{key: part[r] if part else {} for key, part in parts.items()}
          for r in range(max(map(len, parts.values()), default=0))]


def aggregate(metrics: Mapping[str, Any], truth: Mapping[str, Any],
              served: Mapping[str, Mapping[str, Any]], size: Sequence[int]) -> None:
  """Scores one eval step: its batched `ground_truth` against each task's served
  outputs (dense ones of `size`), updating `metrics` (task -> `Task.metric()`)."""
  for replica_truth, replica_served in zip(_replicas(truth), _replicas(served)):
    for i, image_size in enumerate(replica_truth["image_size"]):
      for task, metric in metrics.items():
        shapes = replica_truth["shapes"][task]
        label = {key: value[(i, *(slice(0, n) for n in shapes[key][i]))] if key in shapes
                 else value[i]
                 for key, value in replica_truth["labels"][task].items()}
        score(metric, label, image_size, {k: v[i] for k, v in replica_served[task].items()},
              size)


def _examples(pattern: str, schema: schema_lib.Schema) -> Iterator[dict]:
  """Decoded examples of the split, each with its stored image bytes as `encoded`."""
  files = sorted(tf.io.gfile.glob(pattern))
  if not files:
    raise FileNotFoundError(f"evaluation split {pattern!r} matches no files")
  encoded = {schema_lib.IMAGE_KEY: tf.io.FixedLenFeature((), tf.string)}
  dataset = tf.data.TFRecordDataset(files).map(
      lambda record: {**schema.decode(record),
                      "encoded": tf.io.parse_single_example(record, encoded)[schema_lib.IMAGE_KEY]},
      num_parallel_calls=tf.data.AUTOTUNE)
  yield from dataset.as_numpy_iterator()


def dense_size(task, outputs: Mapping[str, np.ndarray]) -> tuple[int, int] | None:
  """(h, w) of one image's dense served outputs (`Task.served_outputs` of rank 3+)."""
  for key, rank in task.served_outputs.items():
    if rank >= 3 and key in outputs:
      return tuple(np.shape(outputs[key])[:2])
  return None


def evaluate(predictors: Mapping[str, Predict], pattern: str, task_params: Mapping[str, dict],
             batch_size: int = 32) -> dict[str, dict[str, float]]:
  """Runs each task's predictor over the split and scores it against its labels.

  Args:
    predictors: task name -> predict(encoded images) -> the teacher contract's
      outputs (`must.serving`), dense ones spanning each image.
    pattern: TFRecord file pattern of the evaluation split.
    task_params: the schema's task parameters (e.g. the world's).
    batch_size: images per predictor call.

  Returns:
    task name -> metric name -> value, over examples labeled for that task.
  """
  schema = schema_lib.Schema({task: task_params[task] for task in predictors})
  metrics = {task: schema.tasks[task].metric() for task in predictors}
  batch = []

  def flush():
    encoded = [example["encoded"] for example in batch]
    for task, predict in predictors.items():
      outputs = predict(encoded)
      for i, example in enumerate(batch):
        one = {key: value[i] for key, value in outputs.items()}
        score(metrics[task], example[task], example["image"].shape[:2], one,
              dense_size(schema.tasks[task], one))
    batch.clear()

  for example in _examples(pattern, schema):
    batch.append(example)
    if len(batch) == batch_size:
      flush()
  if batch:
    flush()
  return {task: metric.result() for task, metric in metrics.items()}


def table(rows: Mapping[str, Mapping[str, float]]) -> str:
  """A Markdown table: one row per key, one column per metric name."""
  columns = sorted({column for values in rows.values() for column in values})
  lines = ["| | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
  for name, values in rows.items():
    cells = [f"{values[c]:.4g}" if isinstance(values.get(c), float) else str(values.get(c, ""))
             for c in columns]
    lines.append(f"| {name} | " + " | ".join(cells) + " |")
  return "\n".join(lines)
