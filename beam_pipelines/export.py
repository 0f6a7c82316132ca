"""Export of pseudo-labeled shards for other tools, on Apache Beam.

  python -m beam_pipelines.export --runner=DirectRunner \\
      --input_pattern 'out/pseudo_labeled/pseudo_labeled-*.tfrecord' \\
      --output_dir out/export [--min_score 0.6] [--classes cube,torus] \\
      [--balance_per_class 500] [--holdout_fraction 0.1] [--seed 0]

Runner options are the labeling pipeline's (`--runner DataflowRunner
--project ... --temp_location gs://...` on Dataflow). The shards' schema task
parameters and category names come from the labeling run's `summary.json`
beside them (or `--metadata`). Outputs under `--output_dir`:

  coco/detection_<split>.json       COCO instances: images, categories, and one
                                    annotation per box (bbox [x, y, w, h] in
                                    pixels, score, category_id); loads with
                                    pycocotools as ground truth or, its
                                    `annotations`, as results
  files/segmentation/<id>.png       class masks, 8-bit (255 = ignore)
  files/depth/<id>.png, <id>.json   16-bit depth codes; the side file has the
                                    scale, shift and kind that bring them back
  files/classification.jsonl        top-k classes with probabilities per image
  manifest.jsonl                    one line per image: id, source path, split,
                                    and per task: exported or why not, files,
                                    COCO image id, copies in the training records
  tfrecords/<task>/<split>-*.tfrecord   one task's labels per record, keys as
                                    TF Model Garden's decoders read them: the
                                    stock RetinaNet, semantic segmentation and
                                    image classification tasks train on them
  summary.json, dead_letters.jsonl  counts (records in = images + dead letters),
                                    selection and balancing per task and class

Selection (each task's `select` in `must.tasks`): `--min_score`, `--classes`
(names or ids), `--keep_empty`. The split is by image id: an image is held out
when a hash of its id falls under `--holdout_fraction`, for every task alike,
whatever the seed. `--balance_per_class N` balances each task's training
records per class as Noisy Student does: classes with more than N images keep
the N with the highest score, classes with fewer are duplicated up to N (the
remainder going to images chosen by a hash of `--seed` and the id). COCO,
files and the manifest list each selected image once; only the training
TFRecords are balanced.

Malformed input (another schema version, an example missing a task of
`--tasks`, an undecodable label, a duplicate id, an unreadable shard) goes to
the dead letters with its reason, never stopping the run; so do images whose
shape the stock parsers cannot take (a side under 2 px, an aspect ratio over
32: `extreme_aspect_ratio`). Classification records store JPEG (the stock
parser decodes JPEG only), other images re-encoded at quality 95.

TFRecords, the COCO files and the JSON lines are written by Beam's file sinks
(exactly-once finalize); the per-image files are written by a DoFn under the
image's id, so a retried bundle rewrites the same bytes.
"""
import argparse
import dataclasses
import json
import logging
from typing import Any, Iterator, Mapping, Sequence

import apache_beam as beam
from apache_beam.options import pipeline_options

import must  # noqa: F401  (legacy Keras switch before TensorFlow loads)
from beam_pipelines import common
from beam_pipelines import run_dir
from beam_pipelines import decode
from beam_pipelines import shards
from must import cli
from must import schema as schema_lib
from must import tasks as tasks_lib
from must.tasks import base

COCO, FILES, TFRECORDS = "coco", "files", "tfrecords"
FORMATS = (COCO, FILES, TFRECORDS)
TRAIN, HOLDOUT = "train", "holdout"
SPLITS = (TRAIN, HOLDOUT)
MANIFEST_FILE = "manifest.jsonl"
DEAD_LETTERS_FILE = "dead_letters.jsonl"
SUMMARY_FILE = "summary.json"
_NAMESPACE = "export"


class ExportOptions(shards.LabeledShardsOptions, pipeline_options.PipelineOptions):
  """Options of the export (beside Beam's, `common.DataOptions` and the shard reader's:
  --classes, --min_score, --seed and --top_k)."""

  @classmethod
  def _add_argparse_args(cls, parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tasks", default="",
                        help="Tasks to export, comma-separated; every example must carry "
                        "them. Default: every task of the metadata that has an exporter.")
    parser.add_argument("--formats", default=",".join(FORMATS),
                        help=f"What to write, comma-separated, of {FORMATS}.")
    parser.add_argument("--keep_empty", action="store_true",
                        help="Keep detection images left without boxes.")
    parser.add_argument("--balance_per_class", type=int, default=0,
                        help="Training records per class and task (0: no balancing).")
    parser.add_argument("--holdout_fraction", type=float, default=0.0,
                        help="Fraction of image ids held out (by hash of the id).")


# -- Config ---------------------------------------------------------------------


def run_config(options: pipeline_options.PipelineOptions) -> dict[str, Any]:
  """The resolved, JSON-serializable config of an export run.

  Raises:
    ValueError: a missing option, an unknown task, format or class, or a
      value out of range, each named.
  """
  view = options.view_as(ExportOptions)
  config = shards.resolve(view)
  available = list(config["task_params"])
  tasks = [t.strip() for t in view.tasks.split(",") if t.strip()] or available
  for task in tasks:
    if task not in available:
      raise ValueError(f"--tasks: {task!r} is not exportable from these shards; "
                       f"their tasks: {available}")
  formats = [f.strip() for f in view.formats.split(",") if f.strip()]
  if not formats or set(formats) - set(FORMATS):
    raise ValueError(f"--formats: {view.formats!r}; valid: {FORMATS}")
  if not 0.0 <= view.holdout_fraction <= 1.0:
    raise ValueError(f"--holdout_fraction must be in [0, 1], got {view.holdout_fraction}")
  if view.balance_per_class < 0 or view.top_k < 1:
    raise ValueError("--balance_per_class must be >= 0 and --top_k >= 1")
  config.update({
      "tasks": tasks, "formats": formats,
      "selection": {"min_score": view.min_score,
                    "classes": shards.parse_classes(view.classes, config["categories"]),
                    "keep_empty": view.keep_empty},
      "balance_per_class": view.balance_per_class, "holdout_fraction": view.holdout_fraction,
      "seed": view.seed, "top_k": view.top_k,
      "runner": options.view_as(pipeline_options.StandardOptions).runner})
  return config


def selection_of(config: Mapping[str, Any]) -> base.Selection:
  selection = config["selection"]
  classes = selection["classes"]
  return base.Selection(selection["min_score"], None if classes is None else frozenset(classes),
                        selection["keep_empty"])


def task_of(config: Mapping[str, Any], name: str) -> base.Task:
  """The `must.tasks` object of task `name` with the run's schema parameters."""
  return tasks_lib.build(name, **config["task_params"][name])


# -- Ids ------------------------------------------------------------------------


def split_of(image_id: str, holdout_fraction: float) -> str:
  """HOLDOUT when the id's hash falls under the fraction: stable across runs and
  seeds, and raising the fraction only moves images from TRAIN to HOLDOUT."""
  return HOLDOUT if common.stable_hash(image_id) < holdout_fraction * common.HASH_SPACE else TRAIN


def coco_image_id(image_id: str) -> int:
  """The image id as a COCO integer id (decimal ids as they are)."""
  if image_id.isdigit() and int(image_id) < 2 ** 63:
    return int(image_id)
  return common.stable_hash(image_id)


# -- Steps ----------------------------------------------------------------------


# Shapes Model Garden's stock parsers cannot take (they crash on them): their
# resize to the output size keeps the aspect ratio, so the short side of a
# 1 x 4000 image becomes 0 px; at 32:1 it keeps >= 1 px for outputs of 16 px
# and up. The classification parser's center crop is empty at a 1 px side.
MAX_ASPECT_RATIO = 32
MIN_SIDE = 2
EXTREME_ASPECT_RATIO = "extreme_aspect_ratio"
TOO_SMALL = "too_small"


def check_shape(example: shards.LabeledExample) -> Iterator[Any]:
  """The example, or its dead letter when the stock parsers cannot take its shape."""
  short, long = sorted(example.image_size)
  if long > MAX_ASPECT_RATIO * short:
    reason = EXTREME_ASPECT_RATIO
  elif short < MIN_SIDE:
    reason = TOO_SMALL
  else:
    yield example
    return
  yield beam.pvalue.TaggedOutput(decode.DEAD_LETTERS, decode.dead_letter(
      example.path, reason, f"{example.image_size[0]}x{example.image_size[1]}: Model Garden's "
      f"stock parsers take sides >= {MIN_SIDE} px and aspect ratios <= {MAX_ASPECT_RATIO}"))


@dataclasses.dataclass
class Selected:
  """An image after selection: `example.labels` holds the labels to export."""
  example: shards.LabeledExample
  split: str
  filtered: dict[str, str]  # task -> why it is not exported


def select(example: shards.LabeledExample, config: Mapping[str, Any]) -> Selected:
  """Applies the selection to every task of the run and assigns the split."""
  selection = selection_of(config)
  labels, filtered = {}, {}
  for task in config["tasks"]:
    label, reason = task_of(config, task).select(example.labels[task], selection)
    if label is None:
      filtered[task] = reason
    else:
      labels[task] = label
  return Selected(dataclasses.replace(example, labels=labels),
                  split_of(example.id, config["holdout_fraction"]), filtered)


def image_counts(selected: Selected, tasks: Sequence[str]) -> dict[str, Any]:
  """One image's contribution to the summary's counts."""
  counts = {"images": 1}
  for task in tasks:
    if task in selected.example.labels:
      counts[task] = {"selected": 1, selected.split: 1}
    else:
      counts[task] = {"filtered": {selected.filtered[task]: 1}}
  return counts


def task_record(example: shards.LabeledExample, task: str, schema: schema_lib.Schema) -> bytes:
  """One task's serialized tf.Example: the image (re-encoded where the task's
  `record_image_formats` do not include its format), this task's label and provenance."""
  formats = schema.tasks[task].record_image_formats
  stored = example.image_format in formats
  tf_example = schema.encode(
      example.image, {task: example.labels[task]}, provenance=example.provenance,
      encoded=example.encoded if stored else None,
      image_format=example.image_format if stored else formats[0], source_id=example.id)
  if example.source_path:
    tf_example.features.feature[shards.FILENAME_KEY].bytes_list.value.append(
        example.source_path.encode())
  return tf_example.SerializeToString(deterministic=True)


class TaskRecordsFn(beam.DoFn):
  """Selected image -> (split, (id, serialized task record)) for one task."""

  def __init__(self, task: str, task_params: Mapping[str, Any]):
    self.task, self.task_params = task, dict(task_params)

  def setup(self):
    self.schema = schema_lib.Schema({self.task: self.task_params[self.task]})

  def process(self, selected: Selected) -> Iterator[Any]:
    if self.task in selected.example.labels:
      yield selected.split, (selected.example.id,
                             task_record(selected.example, self.task, self.schema))


def assign_copies(item, target: int, seed: int) -> Iterator[tuple[str, tuple[int, int]]]:
  """(class, its top `target` members (score, tie, id), best first) -> (id, (copies, class)).

  A class with at least `target` images keeps the `target` best once each (the
  others get no entry: no copies). A class with n < target images repeats each
  target // n times, plus once more for the target % n first by a hash of the
  seed and id.
  """
  cls, members = item
  if len(members) >= target:
    for _, _, image_id in members:
      yield image_id, (1, cls)
    return
  order = sorted(members, key=lambda m: common.stable_hash(f"{seed}:{m[2]}"))
  base, extra = divmod(target, len(order))
  for rank, (_, _, image_id) in enumerate(order):
    yield image_id, (base + (rank < extra), cls)


class Balance(beam.PTransform):
  """One task's training images -> (id, (copies, class)) per image that has copies.

  Images whose exporter gives no balance key (class None) get one copy each.

  Args:
    task: the task.
    target: records per class; 0 gives every image one copy.
    seed: decides ties and which rare images get the extra copy.
  """

  def __init__(self, task: base.Task, target: int, seed: int):
    super().__init__()
    self.task, self.target, self.seed = task, target, seed

  def _key(self, selected: Selected) -> tuple[str, tuple[int, float] | None]:
    return selected.example.id, self.task.balance_key(selected.example.labels[self.task.name])

  def expand(self, selected):
    keyed = selected | "Key" >> beam.Map(self._key)
    if not self.target:
      return keyed | "OneEach" >> beam.Map(lambda kv: (kv[0], (1, kv[1] and kv[1][0])))
    unbalanced = (keyed
                  | "WithoutKey" >> beam.Filter(lambda kv: kv[1] is None)
                  | "OneOfEach" >> beam.Map(lambda kv: (kv[0], (1, None))))
    seed = self.seed
    balanced = (keyed
                | "WithKey" >> beam.Filter(lambda kv: kv[1] is not None)
                | "ByClass" >> beam.Map(
                    lambda kv: (kv[1][0], (kv[1][1], common.stable_hash(f"{seed}:{kv[0]}"), kv[0])))
                | "TopPerClass" >> beam.combiners.Top.PerKey(self.target)
                | "Copies" >> beam.FlatMap(assign_copies, self.target, seed))
    return (unbalanced, balanced) | "All" >> beam.Flatten()


def _repeat(item) -> Iterator[bytes]:
  """CoGroupByKey of {'record', 'copies'} by id -> the record, copies times."""
  _, groups = item
  copies = sum(c for c, _ in groups["copies"])
  for record in groups["record"]:
    for _ in range(copies):
      yield record


def _copies_counts(item, task: str) -> dict[str, Any]:
  _, (copies, cls) = item
  counts = {"train_records": copies}
  if cls is not None:
    counts["train_records_per_class"] = {str(cls): copies}
  return {task: counts}


class WriteImageFilesFn(beam.DoFn):
  """Selected image -> (id, manifest entry), after writing its per-image files."""

  def __init__(self, config: Mapping[str, Any]):
    self.config = config

  def setup(self):
    self.files_dir = common.join(self.config["output_dir"], FILES)
    self.write = FILES in self.config["formats"]
    self.written = beam.metrics.Metrics.counter(_NAMESPACE, "files_written")

  def process(self, selected: Selected) -> Iterator[Any]:
    example = selected.example
    entry = {"id": example.id, "source_path": example.source_path, "shard": example.path,
             "split": selected.split, "height": example.image_size[0],
             "width": example.image_size[1], "tasks": {}}
    for task in self.config["tasks"]:
      if task not in example.labels:
        entry["tasks"][task] = {"exported": False, "reason": selected.filtered[task]}
        continue
      exporter = task_of(self.config, task)
      info = {"exported": True, "source": example.provenance[task].source,
              "model": example.provenance[task].model}
      files = exporter.files(example.id, example.labels[task]) if self.write else {}
      for name, data in files.items():
        common.write_bytes(common.join(self.files_dir, task, name), data)
        self.written.inc()
      if files:
        info["files"] = [f"{FILES}/{task}/{name}" for name in files]
      if exporter.writes_coco:
        info["coco_image_id"] = coco_image_id(example.id)
      entry["tasks"][task] = info
    yield example.id, entry


def _with_copies(item, tasks: Sequence[str]) -> dict[str, Any]:
  """CoGroupByKey of {'entry', 'copies': [(task, copies)]} -> the manifest entry."""
  _, groups = item
  entry = groups["entry"][0]
  copies = dict(groups["copies"])
  for task in tasks:
    info = entry["tasks"][task]
    if info["exported"] and entry["split"] == TRAIN:
      info["train_copies"] = copies.get(task, 0)
  return entry


def coco_image(selected: Selected, task: base.Task) -> tuple[dict, list[dict]]:
  """(COCO image entry, its annotations without ids) of one selected image."""
  example = selected.example
  image = {"id": coco_image_id(example.id), "source_id": example.id,
           "file_name": example.source_path or example.id,
           "height": example.image_size[0], "width": example.image_size[1]}
  annotations = task.coco_annotations(example.labels[task.name], example.image_size)
  return image, [{**a, "image_id": image["id"]} for a in annotations]


def coco_json(images: Sequence[tuple[dict, list[dict]]], categories: Sequence[str],
              num_classes: int) -> str:
  """The COCO instances file of the images, annotation ids in image id order."""
  images = sorted(images, key=lambda item: item[0]["id"])
  annotations = []
  for _, image_annotations in images:
    for annotation in image_annotations:
      annotations.append({"id": len(annotations) + 1, **annotation})
  return json.dumps({
      "info": {"description": "MuST pseudo labels (must.beam_pipelines.export)"},
      "images": [image for image, _ in images],
      "annotations": annotations,
      "categories": [{"id": i, "name": categories[i], "supercategory": "object"}
                     for i in range(1, num_classes)],
  }, sort_keys=True)


def make_summary(_, records_in: int, reasons: dict, counts: dict, copies: dict,
                 config: Mapping[str, Any]) -> str:
  """The run summary as JSON text; `balanced` checks every count identity."""
  images, dead = counts.get("images", 0), sum(reasons.values())
  tasks, balanced = {}, records_in == images + dead
  for task in config["tasks"]:
    t = {"selected": 0, TRAIN: 0, HOLDOUT: 0, "filtered": {}, "train_records": 0,
         **counts.get(task, {}), **copies.get(task, {})}
    t["filtered"] = dict(sorted(t["filtered"].items()))
    if "train_records_per_class" in t:
      t["train_records_per_class"] = dict(sorted(t["train_records_per_class"].items(),
                                                 key=lambda kv: int(kv[0])))
    balanced &= t["selected"] + sum(t["filtered"].values()) == images
    balanced &= t[TRAIN] + t[HOLDOUT] == t["selected"]
    tasks[task] = t
  return json.dumps({
      "counts": {"records_in": records_in, "images": images, "dead_letters": dead,
                 "balanced": bool(balanced)},
      "dead_letter_reasons": reasons,
      "tasks": tasks,
      "config": config,
  }, indent=2, sort_keys=True)


class Export(beam.PTransform):
  """The whole export: read, select, split, balance, and every output written.

  Args:
    config: a resolved config (`run_config`).
    write_dir: where the outputs go (default the output dir; `run` gives its
      run dir's staging dir).

  Returns:
    {'selected': Selected elements, 'dead_letters': dicts, 'manifest': dicts,
     'summary': the summary as JSON text}.
  """

  def __init__(self, config: Mapping[str, Any], write_dir: str = ""):
    super().__init__()
    self.config = dict(config)
    self.write_dir = write_dir or self.config["output_dir"]

  def expand(self, pbegin):
    config, output_dir = self.config, self.write_dir
    tasks = config["tasks"]
    read = pbegin | "ReadShards" >> shards.ReadLabeledShards(
        config["input_pattern"], config["task_params"], required_tasks=tasks)
    checked = read["examples"] | "CheckShape" >> beam.FlatMap(check_shape).with_outputs(
        decode.DEAD_LETTERS, main="examples")
    selected = checked.examples | "Select" >> beam.Map(select, config)

    copies, copies_counts = {}, []
    for task in tasks:
      train = selected | f"Train[{task}]" >> beam.Filter(
          lambda s, t=task: s.split == TRAIN and t in s.example.labels)
      copies[task] = train | f"Balance[{task}]" >> Balance(
          task_of(config, task), config["balance_per_class"], config["seed"])
      copies_counts.append(copies[task] | f"CopiesCounts[{task}]" >> beam.Map(
          _copies_counts, task))

    if TFRECORDS in config["formats"]:
      for task in tasks:
        records = selected | f"Records[{task}]" >> beam.ParDo(
            TaskRecordsFn(task, config["task_params"]))
        prefix = common.join(output_dir, TFRECORDS, task)
        train = ({"record": records | f"TrainRecords[{task}]" >> beam.FlatMap(
                      lambda kv: [kv[1]] if kv[0] == TRAIN else []),
                  "copies": copies[task]}
                 | f"JoinCopies[{task}]" >> beam.CoGroupByKey()
                 | f"Repeat[{task}]" >> beam.FlatMap(_repeat))
        holdout = records | f"HoldoutRecords[{task}]" >> beam.FlatMap(
            lambda kv: [kv[1][1]] if kv[0] == HOLDOUT else [])
        train | f"WriteTrain[{task}]" >> beam.io.WriteToTFRecord(
            common.join(prefix, TRAIN), file_name_suffix=".tfrecord",
            num_shards=config["num_shards"])
        holdout | f"WriteHoldout[{task}]" >> beam.io.WriteToTFRecord(
            common.join(prefix, HOLDOUT), file_name_suffix=".tfrecord",
            num_shards=config["num_shards"])

    if COCO in config["formats"]:
      num_classes = len(config["categories"])
      for task in (t for t in tasks if task_of(config, t).writes_coco):
        images = selected | f"CocoImages[{task}]" >> beam.FlatMap(
            lambda s, t=task: [(s.split, coco_image(s, task_of(config, t)))] if t in s.example.labels else [])
        for split in SPLITS:
          (images
           | f"CocoSplit[{task},{split}]" >> beam.FlatMap(
               lambda kv, sp=split: [kv[1]] if kv[0] == sp else [])
           | f"CocoList[{task},{split}]" >> beam.combiners.ToList()
           | f"CocoJson[{task},{split}]" >> beam.Map(coco_json, config["categories"],
                                                     num_classes)
           | f"WriteCoco[{task},{split}]" >> common.WriteSingleFile(
               common.join(output_dir, COCO, f"{task}_{split}.json")))

    entries = selected | "WriteImageFiles" >> beam.ParDo(WriteImageFilesFn(config))
    task_copies = [copies[t] | f"TaskCopies[{t}]" >> beam.Map(
        lambda kv, t=t: (kv[0], (t, kv[1][0]))) for t in tasks]
    manifest = ({"entry": entries,
                 "copies": task_copies | "AllCopies" >> beam.Flatten()}
                | "JoinManifest" >> beam.CoGroupByKey()
                | "ManifestEntry" >> beam.Map(_with_copies, tasks))
    manifest | "WriteManifest" >> common.WriteJsonLines(common.join(output_dir, MANIFEST_FILE))
    if FILES in config["formats"]:
      for task in (t for t in tasks if task_of(config, t).writes_json_lines):
        (selected
         | f"JsonLines[{task}]" >> beam.FlatMap(_json_lines, task, config)
         | f"WriteJsonLines[{task}]" >> common.WriteJsonLines(
             common.join(output_dir, FILES, f"{task}.jsonl")))

    dead_letters = ((read["dead_letters"], checked[decode.DEAD_LETTERS])
                    | "AllDeadLetters" >> beam.Flatten())
    dead_letters | "WriteDeadLetters" >> common.WriteJsonLines(
        common.join(output_dir, DEAD_LETTERS_FILE))
    counts = (selected
              | "ImageCounts" >> beam.Map(image_counts, tasks)
              | "SumImageCounts" >> common.CombineTrees())
    copies_total = (copies_counts | "AllCopiesCounts" >> beam.Flatten()
                    | "SumCopies" >> common.CombineTrees())
    summary = (pbegin
               | "One" >> beam.Create([None])
               | "Summary" >> beam.Map(
                   make_summary, beam.pvalue.AsSingleton(read["count"]),
                   beam.pvalue.AsSingleton(dead_letters | "CountReasons" >> common.CountReasons()),
                   beam.pvalue.AsSingleton(counts), beam.pvalue.AsSingleton(copies_total),
                   config))
    summary | "WriteSummary" >> common.WriteSingleFile(common.join(output_dir, SUMMARY_FILE))
    return {"selected": selected, "dead_letters": dead_letters, "manifest": manifest,
            "summary": summary}


def _json_lines(selected: Selected, task: str, config: Mapping[str, Any]) -> list[dict]:
  if task not in selected.example.labels:
    return []
  line = task_of(config, task).json_line(selected.example.id, selected.example.labels[task],
                                         config["categories"], config["top_k"])
  return [{**line, "split": selected.split}]


def run(argv: Sequence[str] | None = None) -> dict[str, Any]:
  """Checks the flags and input, runs the export into its own output dir
  (`run_dir.RunDir`) and returns the published summary."""
  options, config = common.configure(ExportOptions, argv, run_config)
  return run_dir.run_owned(options, config["output_dir"], config["input_pattern"],
                           lambda p, staging: p | "Export" >> Export(config, staging),
                           _NAMESPACE, SUMMARY_FILE)


def _main(argv: Sequence[str]) -> None:
  logging.getLogger().setLevel(logging.INFO)
  summary = run(argv)
  print(json.dumps({"counts": summary["counts"],
                    "tasks": {t: {k: v for k, v in s.items() if not isinstance(v, dict)}
                              for t, s in summary["tasks"].items()}}, indent=2))
  if not summary["counts"]["balanced"]:
    raise cli.JobFailed("counts do not balance: records in != images + dead letters "
                        f"({summary['counts']})")


def main(argv: Sequence[str] | None = None) -> None:
  cli.run_main("beam_pipelines.export", _main, argv)


if __name__ == "__main__":
  main()
