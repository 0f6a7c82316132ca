"""How good the pseudo labels are, where the input carries ground truth.

On an input example with ground truth for a task (the partially labeled
corpus, a held-out labeled sample), the labeling run keeps the ground truth in
its output but also scores the teacher's outputs for that image against it
(`MakeExamplesFn` emits (task, (truth, outputs)) before the override).
`LabelQuality` combines them per task (`CombinePerKey`) and writes

  quality.json   per task: images scored, the task's own metric (`Task.metric`,
                 merged over images) on the teacher's outputs, the pseudo
                 labels' quality at each threshold of
                 `must.tasks.base.QUALITY_THRESHOLDS` (`Task.quality_summary`:
                 precision / recall / F1 for boxes, accuracy of the kept labels
                 and a reliability diagram for classes and pixels, the per-image
                 error for depth) and the suggested threshold with its criterion
  quality.png    one plot per task (`plot` of its summary)
"""
import json
from typing import Any, Mapping

import apache_beam as beam
import matplotlib
import numpy as np
import tensorflow as tf

matplotlib.use("Agg")
from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top

from beam_pipelines import common
from must import schema as schema_lib
from must.tasks import base

QUALITY = "quality"  # MakeExamplesFn's output of (task, (truth, outputs))
QUALITY_FILE = "quality.json"
QUALITY_PLOT = "quality.png"
# --quality: auto scores whenever the input can carry ground truth (TFRecords).
AUTO, ON, OFF = "auto", "on", "off"


class TruthDecoder:
  """An input tf.Example -> {task: its ground truth as NumPy, with `image_size`}."""

  def __init__(self, task_params: Mapping[str, Mapping[str, Any]]):
    self.task_params, self.decoders = dict(task_params), {}

  def __call__(self, example: tf.train.Example, tasks, image_size) -> dict[str, dict]:
    tasks = frozenset(tasks)
    if tasks not in self.decoders:
      schema = schema_lib.Schema({t: self.task_params[t] for t in tasks})
      self.decoders[tasks] = tf.function(schema.decode,
                                         input_signature=[tf.TensorSpec([], tf.string)])
    decoded = self.decoders[tasks](tf.constant(example.SerializeToString()))
    return {task: {**tf.nest.map_structure(lambda t: t.numpy(), decoded[task]),
                   "image_size": tuple(int(v) for v in image_size)} for task in tasks}


def add_trees(a: Any, b: Any) -> Any:
  """The sum of two trees of numbers of the same shape (dicts, lists, numbers);
  keys of either dict are kept."""
  if isinstance(a, dict):
    return {k: add_trees(a[k], b[k]) if k in a and k in b else a.get(k, b.get(k))
            for k in {**a, **b}}
  if isinstance(a, list):
    return [add_trees(x, y) for x, y in zip(a, b)]
  return a + b


class QualityFn(beam.CombineFn):
  """(task, truth, outputs) of one task -> its quality summary: the task's
  metric merged over the images (`Metric.merge`) and its summed `quality_stats`."""

  def __init__(self, task_params: Mapping[str, Mapping[str, Any]]):
    self.task_params = dict(task_params)

  def create_accumulator(self):
    return {"task": None, "metric": None, "stats": {}, "images": 0}

  def add_input(self, accumulator, element):
    name, truth, outputs = element
    task = schema_lib.Schema({name: self.task_params[name]}).tasks[name]
    metric = task.metric()
    metric.update(truth, outputs)
    stats = task.quality_stats(truth, outputs, metric)
    return self.merge_accumulators([accumulator, {"task": name, "metric": metric,
                                                  "stats": stats, "images": 1}])

  def merge_accumulators(self, accumulators):
    merged = self.create_accumulator()
    for acc in accumulators:
      if acc["task"] is None:
        continue
      if merged["task"] is None:
        merged.update(task=acc["task"], metric=acc["metric"], stats=acc["stats"])
      else:
        merged["metric"] = merged["metric"].merge(acc["metric"])
        merged["stats"] = add_trees(merged["stats"], acc["stats"])
      merged["images"] += acc["images"]
    return merged

  def extract_output(self, accumulator):
    if accumulator["task"] is None:
      return {"images": 0}
    task = schema_lib.Schema({accumulator["task"]: self.task_params[accumulator["task"]]}
                             ).tasks[accumulator["task"]]
    return {"images": accumulator["images"], "metric": accumulator["metric"].result(),
            "primary_metric": task.primary_metric,
            **task.quality_summary(accumulator["stats"])}


def quality_report(summaries: list) -> str:
  """[(task, summary)] -> quality.json's text."""
  return json.dumps({
      "tasks": dict(sorted(summaries)),
      "thresholds": list(base.QUALITY_THRESHOLDS),
      "scored": "each task on the input images with its ground truth, the teacher's "
                "outputs against it before the ground truth replaces them; 'metric' is "
                "the task's own metric on the raw outputs",
  }, indent=2, sort_keys=True)


def plot(report: Mapping[str, Any], path: str) -> None:
  """quality.png: one panel per task from its summary's `plot`."""
  panels = [(task, s["plot"]) for task, s in sorted(report["tasks"].items()) if "plot" in s]
  figure, axes = plt.subplots(1, max(len(panels), 1), squeeze=False,
                              figsize=(0.5 + 3.6 * max(len(panels), 1), 3.4))
  if not panels:
    axes[0][0].text(0.5, 0.5, "no ground truth in the input", ha="center", va="center")
    axes[0][0].set_axis_off()
  for axis, (task, spec) in zip(axes[0], panels):
    suggested = report["tasks"][task].get("suggested")
    for name, (x, y) in spec["series"].items():
      if spec.get("bars"):
        width = (x[1] - x[0]) * 0.9 if len(x) > 1 else 0.1
        axis.bar(x, y, width=width, label=name)
      else:
        axis.plot(x, y, marker="o", markersize=3, label=name)
    if spec.get("diagonal"):
      axis.plot([0, 1], [0, 1], color="gray", linestyle=":", linewidth=1, label="calibrated")
    if suggested:
      axis.axvline(suggested["value"], color="black", linestyle="--", linewidth=1,
                   label=f"suggested {suggested['threshold']} {suggested['value']}")
    axis.set_xlabel(spec["x"], fontsize=8)
    axis.set_ylabel(spec["y"], fontsize=8)
    axis.set_title(f"{task}: {spec['title']} ({report['tasks'][task]['images']} images)",
                   fontsize=8)
    axis.legend(fontsize=6)
  figure.tight_layout()
  with tf.io.gfile.GFile(path, "wb") as f:
    figure.savefig(f, dpi=110, format="png")
  plt.close(figure)


def _write(text: str, output_dir: str) -> str:
  common.write_bytes(common.join(output_dir, QUALITY_FILE), text.encode())
  plot(json.loads(text), common.join(output_dir, QUALITY_PLOT))
  return text


class LabelQuality(beam.PTransform):
  """(task, (truth, outputs)) -> one quality.json text, written with quality.png
  under `output_dir`.

  Args:
    task_params: the schema's task parameters.
    output_dir: where the files go (the run's staging dir).
  """

  def __init__(self, task_params: Mapping[str, Mapping[str, Any]], output_dir: str):
    super().__init__()
    self.task_params, self.output_dir = dict(task_params), output_dir

  def expand(self, scored):
    return (scored
            | "WithTask" >> beam.Map(lambda kv: (kv[0], (kv[0], *kv[1])))
            | "PerTask" >> beam.CombinePerKey(QualityFn(self.task_params))
            | "All" >> beam.combiners.ToList()
            | "Report" >> beam.Map(quality_report)
            | "Write" >> beam.Map(_write, self.output_dir))


def uncertainty(labels: Mapping[str, Any], tasks: Mapping[str, base.Task]) -> float:
  """An image's uncertainty: the mean of its labels' `Task.uncertainty` (0: none says)."""
  values = [v for v in (tasks[t].uncertainty(label) for t, label in labels.items())
            if v is not None]
  return float(np.mean(values)) if values else 0.0
