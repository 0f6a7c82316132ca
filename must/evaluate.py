"""Evaluates teacher-signature models on ground truth with each task's metric.

Metrics come from the task registry (`Task.metric()`): top-1, COCO AP/AP50
through pycocotools, mIoU, AbsRel and delta<1.25, surface-normal angles.
"""
import glob
from typing import Callable, Iterator, Mapping

import numpy as np
import tensorflow as tf

from must import schema as schema_lib

Predict = Callable[[np.ndarray], Mapping[str, np.ndarray]]


def _examples(pattern: str, schema: schema_lib.Schema) -> Iterator[dict]:
  files = sorted(tf.io.gfile.glob(pattern)) or sorted(glob.glob(pattern))
  if not files:
    raise FileNotFoundError(f"evaluation split {pattern!r} matches no files")
  dataset = tf.data.TFRecordDataset(files).map(schema.decode, num_parallel_calls=tf.data.AUTOTUNE)
  yield from dataset.as_numpy_iterator()


def evaluate(predictors: Mapping[str, Predict], pattern: str, task_params: Mapping[str, dict],
             batch_size: int = 32) -> dict[str, dict[str, float]]:
  """Runs each task's predictor over the split and scores it against its labels.

  Args:
    predictors: task name -> predict(uint8 images [B, H, W, 3]) -> raw outputs.
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
    images = np.stack([example["image"] for example in batch])
    for task, predict in predictors.items():
      outputs = predict(images)
      for i, example in enumerate(batch):
        if example[task]["present"]:
          label = {**example[task], "image_size": example["image"].shape[:2]}
          metrics[task].update(label, {key: value[i] for key, value in outputs.items()})
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
