"""Pseudo-labeling on Apache Beam: every teacher over a corpus, one multi-task data set out.

  python -m beam_pipelines.pseudo_label --runner=DirectRunner \\
      --input_pattern 'out/world/corpus/images/*/*' \\
      --teachers_config configs/pipelines/pseudo_label_demo.yaml \\
      --output_dir out/pseudo_labeled

  python -m beam_pipelines.pseudo_label --runner DataflowRunner \\
      --project PROJECT --region REGION --temp_location gs://BUCKET/tmp \\
      --setup_file ./setup.py \\
      --input_pattern 'gs://BUCKET/corpus/*/*' --teachers_config CONFIG.yaml \\
      --output_dir gs://BUCKET/pseudo_labeled

Input is a file pattern of images (JPEG, PNG, GIF, BMP, WebP, TIFF; any Beam
file system) or of TFRecord shards of tf.Examples in `must.schema` form, which
may carry ground truth for some tasks (`--input_format`). Steps, each a
labelled composite transform, with the image id as the key throughout:

  ReadCorpus      match files / read records, decode per element; undecodable
                  inputs go to the dead letters with their path and a reason
  RunTeachers     `RunInference` with `inference.TeachersModelHandler`: one
                  fused handler running every teacher on each batch (default),
                  or one RunInference per teacher joined by id (`--inference_mode
                  per_teacher`)
  MakeExamples    each task's `pseudo_label` (the paper's recipe, thresholds
                  from the config), ground truth of the input kept where present,
                  encoded with `must.schema.Schema`
  WriteOutputs    sharded TFRecords (`pseudo_labeled-*.tfrecord`), dead letters
                  (`dead_letters.jsonl`), and `summary.json`: counts per stage,
                  per-task label statistics, dead-letter reasons, the resolved
                  config and the teacher versions

Identical image content at several paths (the same id) is one record, of the
first path, listing every path in `must/source_paths`; the summary counts the
other copies as duplicates. Images in = examples out + dead letters +
duplicates, and the summary says whether it holds. The run owns its output dir
(`run_dir`: a lock, `--overwrite`, files published when complete, the summary
listing them).

The teachers config (YAML):

  teachers:                  # one per task
    - {task: classification, path: out/teachers/classification/export, batch_size: 16}
  thresholds:                # keyword arguments of each task's pseudo_label
    detection: {min_score: 0.5}
    segmentation: {min_confidence: 0.5}
  task_params:               # optional: schema parameters per task; by default
    classification: {num_classes: 11}   # num_classes from each teacher.json
"""
import argparse
import dataclasses
import hashlib
import inspect
import itertools
import json
import logging
import types as types_lib
import uuid
import typing
from typing import Any, Callable, Iterator, List, Mapping, Optional, Sequence

import apache_beam as beam
from apache_beam.io import fileio
from apache_beam.ml.inference import base as inference_base
from apache_beam.options import pipeline_options
import tensorflow as tf
import yaml

import must  # noqa: F401  (legacy Keras switch before TensorFlow loads)
from beam_pipelines import common
from beam_pipelines import decode
from beam_pipelines import inference
from beam_pipelines import quality
from beam_pipelines import run_dir
from must import cli
from must import configs
from must import schema as schema_lib
from must import serving
from must import tasks as tasks_lib
from official.modeling import hyperparams

IMAGES = "images"
TFRECORD = "tfrecord"
FUSED = "fused"
PER_TEACHER = "per_teacher"
EXAMPLES_PREFIX = "pseudo_labeled"
DEAD_LETTERS_FILE = "dead_letters.jsonl"
SUMMARY_FILE = "summary.json"
LABELING_FAILED = "labeling_failed"
FILENAME_KEY = "image/filename"
SOURCE_PATHS_KEY = "must/source_paths"  # every path of an image found at several
DUPLICATES = "duplicates"
REUSED = "reused"
CHECKPOINT_CONFIG = "config.json"  # beside a checkpoint dir's records: the config they follow
_NAMESPACE = "pseudo_label"


class PseudoLabelOptions(common.DataOptions, pipeline_options.PipelineOptions):
  """Options of the pseudo-labeling pipeline (beside Beam's own and `common.DataOptions`:
  --input_pattern of images or TFRecord shards, --output_dir, --num_shards)."""

  @classmethod
  def _add_argparse_args(cls, parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input_format", default=IMAGES, choices=(IMAGES, TFRECORD),
                        help="Image files, or TFRecords of tf.Examples in the schema.")
    parser.add_argument("--teachers_config",
                        help="YAML: teachers (task, path, batch_size), thresholds.")
    parser.add_argument("--max_pixels", type=int, default=decode.DEFAULT_MAX_PIXELS,
                        help="Images with more pixels go to the dead letters.")
    parser.add_argument("--max_failure_fraction", type=float, default=0.05,
                        help="Exit non-zero (after writing the summary and dead letters) "
                        "when more than this fraction of the inputs fail (dead letters but "
                        "deliberate filters such as --max_pixels). 0.05: a crawled corpus "
                        "holds a few percent of broken files; more means something "
                        "systematic (a wrong format, threshold or teacher).")
    parser.add_argument("--inference_mode", default=FUSED, choices=(FUSED, PER_TEACHER),
                        help="One handler running every teacher per batch, or one "
                        "RunInference per teacher joined by image id.")
    parser.add_argument("--large_model", action="store_true",
                        help="Load the teachers once per worker machine, shared by its "
                        "processes, not once per process (GPU workers, big teachers).")
    parser.add_argument("--model_copies", type=int, default=None,
                        help="Shared copies of the teachers per worker machine (e.g. one "
                        "per GPU); implies --large_model.")
    parser.add_argument("--previous_output", default="",
                        help="A published run's output dir: its labels of images of the "
                        "same content id are reused for every task whose teacher, version, "
                        "thresholds and parameters are unchanged; the rest is labeled.")
    parser.add_argument("--quality", default=quality.AUTO,
                        choices=(quality.AUTO, quality.ON, quality.OFF),
                        help="Score the teachers' outputs against the ground truth of the "
                        "input (before it replaces them) into quality.json and quality.png; "
                        "auto: with --input_format tfrecord (images carry no ground truth).")
    parser.add_argument("--resume", action="store_true",
                        help="Keep and reuse the checkpoints a killed run into --output_dir "
                        "committed, labeling only what it had not finished.")
    parser.add_argument("--checkpoint_every", type=int, default=500,
                        help="Commit newly labeled records to <output_dir>/.checkpoints "
                        "every this many per worker bundle (and at its end), for --resume; "
                        "0: no checkpoints.")


# -- Config ---------------------------------------------------------------------


@dataclasses.dataclass
class TeacherEntry(hyperparams.Config):
  """One teacher of the teachers config: its task, export path, batch size."""
  task: str = ""
  path: str = ""
  batch_size: int = 8


@dataclasses.dataclass
class TeachersConfig(hyperparams.Config):
  """The teachers config (module docstring); loaded strictly by `must.configs`."""
  teachers: List[TeacherEntry] = dataclasses.field(default_factory=list)
  thresholds: Optional[dict] = None
  task_params: Optional[dict] = None


def resolve_config(raw: Mapping[str, Any], where: str = "teachers config",
                   metadata_fn: Callable[[str], serving.TeacherMetadata] = (
                       serving.TeacherMetadata.read)) -> dict:
  """Checks a teachers config and fills in what the teachers' metadata says.

  Args:
    raw: the parsed YAML.
    where: named in error messages.
    metadata_fn: teacher path -> its `teacher.json`.

  Returns:
    {'teachers': [{task, path, batch_size, name, version, input_size, num_classes,
                   class_names}],
     'thresholds': {task: kwargs}, 'task_params': {task: params}}.

  Raises:
    ValueError: unknown keys, unknown tasks, duplicate teachers, a teacher
      whose metadata names another task, or thresholds the task does not take.
  """
  config = configs.load(TeachersConfig(), params_override=dict(raw), override_name=where)
  teachers, seen = [], set()
  for entry in config.teachers:
    entry = entry.as_dict()
    if not entry["task"] or not entry["path"]:
      raise ValueError(f"{where}: teacher {entry} needs task and path")
    task = entry["task"]
    tasks_lib.get(task)
    if task in seen:
      raise ValueError(f"{where}: two teachers for {task}")
    seen.add(task)
    batch_size = entry["batch_size"]
    if batch_size < 1:
      raise ValueError(f"{where}: {task} batch_size must be >= 1, got {batch_size}")
    metadata = metadata_fn(entry["path"]).for_task(task, where=entry["path"])
    if metadata.task != task:
      raise ValueError(f"{where}: {entry['path']} is a {metadata.task} teacher, "
                       f"listed as {task}")
    teachers.append({"task": task, "path": entry["path"], "batch_size": batch_size,
                     "name": metadata.experiment or task, "version": str(metadata.version),
                     "input_size": list(metadata.input_size),
                     "num_classes": metadata.num_classes,
                     "class_names": metadata.class_names})
  if not teachers:
    raise ValueError(f"{where}: lists no teachers")
  thresholds = {k: dict(v or {}) for k, v in _mapping(config.thresholds).items()}
  for task in thresholds:
    if task not in seen:
      raise ValueError(f"{where}: thresholds for {task}, which has no teacher")
  task_params = {t["task"]: ({"num_classes": t["num_classes"]} if t["num_classes"] else {})
                 for t in teachers}
  for task, params in _mapping(config.task_params).items():
    tasks_lib.get(task)
    task_params[task] = dict(params or {})
  schema = schema_lib.Schema(task_params)
  for task, kwargs in thresholds.items():  # Bad names and types fail here, not on workers.
    _check_thresholds(schema.tasks[task], kwargs, f"{where}: thresholds.{task}")
  return {"teachers": teachers, "thresholds": thresholds, "task_params": task_params}


def _check_thresholds(task: tasks_lib.Task, kwargs: Mapping[str, Any], where: str) -> None:
  """Raises unless every threshold is a keyword of the task's `pseudo_label`
  with a value of its annotated type (an int where a float is expected is fine)."""
  hints = typing.get_type_hints(task.pseudo_label)
  accepted = set(inspect.signature(task.pseudo_label).parameters) - {"outputs", "image_size"}
  for key, value in kwargs.items():
    if key not in accepted:
      raise ValueError(f"{where}: unknown threshold {key!r}; valid: {sorted(accepted)}")
    expected = hints.get(key)
    if expected is None:
      continue
    union = typing.get_origin(expected) in (typing.Union, types_lib.UnionType)
    allowed = typing.get_args(expected) if union else (expected,)
    numeric = (int, float) if float in allowed else ()
    if isinstance(value, bool) and bool not in allowed or not isinstance(value, (*allowed, *numeric)):
      name = getattr(expected, "__name__", str(expected))
      raise ValueError(f"{where}.{key} must be {name}, got {value!r} "
                       f"({type(value).__name__})")


def _mapping(config: hyperparams.Config | None) -> dict:
  return config.as_dict() if config else {}


def load_config(path: str, **kwargs) -> dict:
  """Reads and resolves a teachers config YAML (any Beam file system)."""
  return resolve_config(yaml.safe_load(common.read_text(path)) or {}, where=path, **kwargs)


# -- Incremental runs -------------------------------------------------------------


def task_fingerprint(config: Mapping[str, Any], task: str) -> str | None:
  """What a task's labels depend on in a resolved config (JSON text): its
  teacher's name, version, input size and classes, its thresholds and schema
  parameters. None when the config has no teacher for it."""
  teacher = next((t for t in config.get("teachers", []) if t.get("task") == task), None)
  if teacher is None:
    return None
  return json.dumps({
      "teacher": f"{teacher['name']}@{teacher['version']}",
      "input_size": list(teacher["input_size"]), "num_classes": teacher.get("num_classes"),
      "class_names": teacher.get("class_names"),
      "thresholds": (config.get("thresholds") or {}).get(task, {}),
      "task_params": (config.get("task_params") or {}).get(task, {}),
      "schema_version": schema_lib.SCHEMA_VERSION}, sort_keys=True)


def reusable_tasks(previous: Mapping[str, Any], config: Mapping[str, Any]) -> tuple[str, ...]:
  """The tasks of `config` whose labels a run of the `previous` config made alike."""
  return tuple(sorted(t["task"] for t in config["teachers"]
                      if task_fingerprint(previous, t["task"]) == task_fingerprint(
                          config, t["task"])))


def task_keys(task: tasks_lib.Task, name: str) -> tuple[str, ...]:
  """Every feature key of one task's label, provenance included."""
  return (*task.feature_spec(), schema_lib.source_key(name), schema_lib.model_key(name))


def _first_bytes(feature, key: str) -> str:
  values = feature[key].bytes_list.value if key in feature else []
  return values[0].decode() if values else ""


@dataclasses.dataclass(frozen=True)
class Previous:
  """Records an earlier run wrote: where (named in the summary), their file
  pattern, and the tasks whose labels there still hold."""
  where: str
  pattern: str
  tasks: tuple[str, ...]


def checkpoint_dir(config: Mapping[str, Any]) -> str:
  """Where this run commits its records as it goes: one folder per labeling
  config under `<output_dir>/.checkpoints`."""
  key = json.dumps({t["task"]: task_fingerprint(config, t["task"]) for t in config["teachers"]},
                   sort_keys=True)
  return common.join(config["options"]["output_dir"], run_dir.CHECKPOINTS,
                     hashlib.sha256(key.encode()).hexdigest()[:16])


def previous_sources(config: Mapping[str, Any]) -> list[Previous]:
  """The earlier labels a run reuses: --previous_output's published records,
  and with --resume the checkpoints of killed runs into the output dir.

  Raises:
    cli.UserError: --previous_output is no published run, or is the output dir.
  """
  options, sources = config["options"], []
  previous = options.get("previous_output")
  if previous:
    if previous.rstrip("/") == options["output_dir"].rstrip("/"):
      raise cli.UserError(f"--previous_output {previous} is the --output_dir; write the new "
                          "run elsewhere")
    path = common.join(previous, SUMMARY_FILE)
    try:
      previous_config = json.loads(common.read_text(path))["config"]
    except Exception as e:  # pylint: disable=broad-except  (any file system's error)
      raise cli.UserError(f"--previous_output {previous}: no published pseudo_label run "
                          f"there ({path}: {type(e).__name__}: {e})") from None
    sources.append(Previous(previous, common.join(previous, f"{EXAMPLES_PREFIX}-*.tfrecord"),
                            reusable_tasks(previous_config, config)))
  if options.get("resume"):
    pattern = common.join(options["output_dir"], run_dir.CHECKPOINTS, "*", CHECKPOINT_CONFIG)
    for path in sorted(tf.io.gfile.glob(pattern)):
      folder = path[:-len(CHECKPOINT_CONFIG) - 1]
      sources.append(Previous(folder, common.join(folder, "*.tfrecord"), reusable_tasks(
          json.loads(common.read_text(path)), config)))
  return sources


def write_checkpoint_config(config: Mapping[str, Any]) -> str:
  """Creates this run's checkpoint folder with the config its records follow."""
  folder = checkpoint_dir(config)
  tf.io.gfile.makedirs(folder)
  common.write_bytes(common.join(folder, CHECKPOINT_CONFIG), json.dumps(
      {k: config[k] for k in ("teachers", "thresholds", "task_params")}, sort_keys=True).encode())
  return folder


def _key_previous(element, index: int) -> Iterator[tuple[str, tuple[int, bytes]]]:
  """(shard, record) of an earlier run -> (image id, (source index, record));
  what does not read is left out (its image is labeled again)."""
  _, record = element
  try:
    image_id = _first_bytes(tf.train.Example.FromString(record).features.feature,
                            "image/source_id")
  except Exception:  # pylint: disable=broad-except  (an unreadable tail, a malformed proto)
    image_id = ""
  if image_id:
    yield image_id, (index, record)
  else:
    beam.metrics.Metrics.counter(_NAMESPACE, "previous_records_unusable").inc()


@dataclasses.dataclass
class Pending(decode.Decoded):
  """A decoded image with the labels earlier runs made for it that still hold:
  `reused`, a serialized tf.Example of those tasks' features (b'': none)."""
  reused: bytes = b""


def teacher_groups(tasks: Sequence[str], sources: Sequence[Previous]) -> list[frozenset]:
  """The sets of teachers an image may still need: every teacher first (a new
  image), then every teacher but those some of the sources supply."""
  groups = [frozenset(tasks)]
  for n in range(1, len(sources) + 1):
    for chosen in itertools.combinations(sources, n):
      group = frozenset(tasks) - {t for source in chosen for t in source.tasks}
      if group and group not in groups:
        groups.append(group)
  return groups


class PlanFn(beam.DoFn):
  """(id, {'element': [Decoded], 'previous': [(source, record)]}) -> a `Pending`
  per element: on 'reused' when earlier runs supply every task, else on the
  index (str) of the `teacher_groups` group it still needs (0, every teacher,
  when its need is no group). A task is supplied by a record of a source
  reusing it whose label is a pseudo label of the current teacher."""

  def __init__(self, config: Mapping[str, Any], sources: Sequence[Previous],
               groups: Sequence[frozenset]):
    self.config, self.sources, self.groups = config, list(sources), list(groups)

  def setup(self):
    schema = schema_lib.Schema(self.config["task_params"])
    self.models = {t["task"]: f"{t['name']}@{t['version']}" for t in self.config["teachers"]}
    self.keys = {task: task_keys(schema.tasks[task], task) for task in self.models}
    self.reused = beam.metrics.Metrics.counter(_NAMESPACE, "images_reused")

  def process(self, item) -> Iterator[Any]:
    _, groups = item
    supplied, have = tf.train.Example(), set()
    into = supplied.features.feature
    for index, record in sorted(groups["previous"]):
      feature = tf.train.Example.FromString(record).features.feature
      for task in self.sources[index].tasks:
        if (task in have or _first_bytes(feature, schema_lib.source_key(task)) != schema_lib.PSEUDO
            or _first_bytes(feature, schema_lib.model_key(task)) != self.models[task]):
          continue
        have.add(task)
        for key in self.keys[task]:
          if key in feature:
            into[key].CopyFrom(feature[key])
    needed = frozenset(self.models) - have
    reused = supplied.SerializeToString(deterministic=True) if have else b""
    tag = REUSED if not needed else str(self.groups.index(needed) if needed in self.groups else 0)
    for element in groups["element"]:
      if tag == REUSED:
        self.reused.inc()
      yield beam.pvalue.TaggedOutput(tag, Pending(
          **{f.name: getattr(element, f.name) for f in dataclasses.fields(decode.Decoded)},
          reused=reused))


class CheckpointFn(beam.DoFn):
  """Passes (id, (path, record, stats)) through, committing the records
  labeled now to `folder`: a TFRecord file every `every` records and at the end
  of each bundle, written under a temporary name and renamed, so a file there
  is whole. A retried bundle may commit a record twice; readers keep one per id."""

  def __init__(self, folder: str, every: int):
    self.folder, self.every = folder, every

  def start_bundle(self):
    self.buffer = []

  def process(self, item) -> Iterator[Any]:
    if not all_reused(item[1][2]):
      self.buffer.append(item[1][1])
      if len(self.buffer) >= self.every:
        self._commit()
    yield item

  def finish_bundle(self):
    self._commit()

  def _commit(self) -> None:
    if not self.buffer:
      return
    path = common.join(self.folder, f"{uuid.uuid4().hex}.tfrecord")
    with tf.io.TFRecordWriter(path + ".tmp") as writer:
      for record in self.buffer:
        writer.write(record)
    tf.io.gfile.rename(path + ".tmp", path, overwrite=True)
    beam.metrics.Metrics.counter(_NAMESPACE, "records_committed").inc(len(self.buffer))
    self.buffer = []


class PlanReuse(beam.PTransform):
  """Decoded elements -> {group index (str): `Pending` elements still needing that
  `teacher_groups` group, 'reused': those needing none}, joined by id with the
  records of `sources`."""

  def __init__(self, config: Mapping[str, Any], sources: Sequence[Previous],
               groups: Sequence[frozenset]):
    super().__init__()
    self.config, self.sources, self.groups = config, list(sources), list(groups)

  def expand(self, decoded):
    previous = [decoded.pipeline
                | f"ReadPrevious[{i}]" >> common.ReadTFRecords(source.pattern)
                | f"KeyPrevious[{i}]" >> beam.FlatMap(_key_previous, i)
                for i, source in enumerate(self.sources)]
    return ({"element": decoded | "KeyById" >> beam.Map(lambda e: (e.id, e)),
             "previous": previous | "AllPrevious" >> beam.Flatten(pipeline=decoded.pipeline)}
            | "JoinById" >> beam.CoGroupByKey()
            | "Plan" >> beam.ParDo(PlanFn(self.config, self.sources, self.groups)).with_outputs(
                REUSED, *map(str, range(len(self.groups)))))


# -- Steps ----------------------------------------------------------------------


class ReadCorpus(beam.PTransform):
  """Matches and decodes the corpus.

  Returns:
    {'decoded': `decode.Decoded` elements, 'dead_letters': dicts,
     'count': one int, the number of inputs}.
  """

  def __init__(self, pattern: str, input_format: str = IMAGES,
               max_pixels: int = decode.DEFAULT_MAX_PIXELS):
    super().__init__()
    self.pattern, self.input_format, self.max_pixels = pattern, input_format, max_pixels

  def expand(self, pbegin):
    if self.input_format == IMAGES:
      raw = (pbegin
             | "MatchFiles" >> fileio.MatchFiles(self.pattern)
             | "ReadMatches" >> fileio.ReadMatches())
      dofn = decode.DecodeImageFiles(self.max_pixels)
    elif self.input_format == TFRECORD:
      raw = pbegin | "ReadTFRecords" >> common.ReadTFRecords(self.pattern)
      dofn = decode.DecodeExamples(self.max_pixels)
    else:
      raise ValueError(f"unknown input format {self.input_format!r}; valid: {(IMAGES, TFRECORD)}")
    counted = raw | "CountInputs" >> beam.Map(_count, "images_in")
    outputs = counted | "Decode" >> beam.ParDo(dofn).with_outputs(
        decode.DEAD_LETTERS, main="decoded")
    return {"decoded": outputs.decoded, "dead_letters": outputs[decode.DEAD_LETTERS],
            "count": counted | "Count" >> beam.combiners.Count.Globally()}


def _count(element, name: str):
  beam.metrics.Metrics.counter(_NAMESPACE, name).inc()
  return element


def _handler(specs, loader, sharing):
  return inference.TeachersModelHandler(specs, **({"loader": loader} if loader else {}),
                                        **sharing)


def _merge_by_id(item) -> Iterator[tuple[Any, dict]]:
  """CoGroupByKey result -> (element, {task: outputs}) per element of that id."""
  _, groups = item
  outputs = {}
  for task, results in groups.items():
    if task != "element" and results:
      outputs.update(results[0])  # Same id = same bytes = same outputs.
  for element in groups["element"]:
    yield element, outputs


class RunTeachers(beam.PTransform):
  """Decoded elements -> (element, {task: raw outputs at the teacher's size}).

  Args:
    specs: the teachers.
    loader: path -> teacher (default `must.serving.load`).
    mode: FUSED (one RunInference, every teacher per batch) or PER_TEACHER
      (one RunInference per teacher, joined by image id with CoGroupByKey).
    large_model, model_copies: how workers share the teachers
      (`inference.TeachersModelHandler`).
  """

  def __init__(self, specs: Sequence[inference.TeacherSpec], loader=None, mode: str = FUSED,
               large_model: bool = False, model_copies: int | None = None):
    super().__init__()
    self.specs, self.loader, self.mode = list(specs), loader, mode
    self.sharing = {"large_model": large_model, "model_copies": model_copies}

  def expand(self, decoded):
    if self.mode == FUSED:
      return decoded | "RunInference" >> inference_base.RunInference(
          _handler(self.specs, self.loader, self.sharing))
    if self.mode != PER_TEACHER:
      raise ValueError(f"unknown inference mode {self.mode!r}; valid: {(FUSED, PER_TEACHER)}")
    branches = {"element": decoded | "KeyById" >> beam.Map(lambda e: (e.id, e))}
    for spec in self.specs:
      branches[spec.task] = (
          decoded
          | f"RunInference[{spec.task}]" >> inference_base.RunInference(
              _handler([spec], self.loader, self.sharing))
          | f"KeyOutputs[{spec.task}]" >> beam.Map(lambda r: (r[0].id, r[1])))
    return (branches
            | "JoinById" >> beam.CoGroupByKey()
            | "Merge" >> beam.FlatMap(_merge_by_id))


class MakeExamplesFn(beam.DoFn):
  """(element, outputs) -> (id, (path, serialized tf.Example, its task stats)).

  Tasks with ground truth in the input example keep it; tasks an earlier run
  labeled (a `Pending` element's `reused` features) keep that label, their
  stats saying `reused`: 1; every other task with a teacher gets the pseudo
  label. Every other feature of the input (ground truth of tasks without a
  teacher in this run included, with provenance) passes through untouched. A failure goes to the dead letters, keeping the counts
  balanced.
  """

  def __init__(self, config: Mapping[str, Any]):
    self.config = config

  def setup(self):
    self.scores = self.config.get("options", {}).get("quality") == quality.ON
    self.truth_decoder = quality.TruthDecoder(self.config["task_params"])
    self.schema = schema_lib.Schema(self.config["task_params"])
    self.teachers = {t["task"]: t for t in self.config["teachers"]}
    self.provenance = {t["task"]: schema_lib.Provenance.pseudo(t["name"], t["version"])
                       for t in self.config["teachers"]}
    self.out = beam.metrics.Metrics.counter(_NAMESPACE, "examples_out")
    self.kept = beam.metrics.Metrics.counter(_NAMESPACE, "ground_truth_kept")
    self.failed = beam.metrics.Metrics.counter(_NAMESPACE, "dead_letters")
    self.progress = common.Progress(_NAMESPACE, "images labeled", "labeling failures")
    self.decoders = {}

  def teardown(self):
    self.progress.log()

  def process(self, item) -> Iterator[Any]:
    element, outputs = item
    try:
      record, stats = self._make(element, outputs)
      scored = self._scored(element, outputs) if self.scores else []
    except Exception as e:  # pylint: disable=broad-except  (one image never fails the job)
      self.failed.inc()
      self.progress.add("labeling failures")
      yield beam.pvalue.TaggedOutput(decode.DEAD_LETTERS, decode.dead_letter(
          element.path, LABELING_FAILED, f"{type(e).__name__}: {e}"))
      return
    self.out.inc()
    self.progress.add("images labeled")
    for item in scored:
      yield beam.pvalue.TaggedOutput(quality.QUALITY, item)
    yield element.id, (element.path, record, stats)

  def _scored(self, element: decode.Decoded, outputs: Mapping[str, Any]) -> list:
    """(task, (ground truth, teacher outputs with dense maps at the image size)) of
    each task with both, for `quality.LabelQuality`."""
    tasks = [t for t in decode.ground_truth_tasks(element.example) if t in outputs]
    if not tasks:
      return []
    truths = self.truth_decoder(element.example, tasks, element.image_size)
    return [(task, (truths[task], inference.resize_outputs(
        outputs[task], self.teachers[task]["input_size"], element.image_size)))
            for task in tasks]

  def _stats_of(self, example: tf.train.Example, tasks: frozenset) -> dict[str, dict]:
    """The label stats of reused labels, decoded from the example."""
    if tasks not in self.decoders:
      schema = schema_lib.Schema({t: self.config["task_params"][t] for t in tasks})
      self.decoders[tasks] = schema, tf.function(
          schema.decode, input_signature=[tf.TensorSpec([], tf.string)])
    schema, decoder = self.decoders[tasks]
    decoded = decoder(tf.constant(example.SerializeToString()))
    return {task: {"source": schema_lib.PSEUDO, REUSED: 1, **schema.tasks[task].label_stats(
        schema.tasks[task].from_decoded(tf.nest.map_structure(lambda t: t.numpy(),
                                                              decoded[task])))}
            for task in sorted(tasks)}

  def _make(self, element: decode.Decoded, outputs: Mapping[str, Any]):
    truth = decode.ground_truth_tasks(element.example)
    previous = tf.train.Example.FromString(getattr(element, "reused", b""))
    kept = previous.features.feature
    reused = frozenset(t for t in self.teachers if t not in truth
                       and _first_bytes(kept, schema_lib.source_key(t)) == schema_lib.PSEUDO)
    labels, stats = {}, {}
    for task, task_outputs in outputs.items():
      if task in truth or task in reused:
        continue
      resized = inference.resize_outputs(
          task_outputs, self.teachers[task]["input_size"], element.image_size,
          keep=self.schema.tasks[task].outputs_at_teacher_size)
      labels[task] = self.schema.tasks[task].pseudo_label(
          resized, element.image_size, **self.config["thresholds"].get(task, {}))
      stats[task] = {"source": schema_lib.PSEUDO,
                     **self.schema.tasks[task].label_stats(labels[task])}
    example = self.schema.encode(
        element.image, labels, provenance={t: self.provenance[t] for t in labels},
        encoded=element.encoded, image_format=element.image_format, source_id=element.id)
    feature = example.features.feature
    for task in reused:
      for key in task_keys(self.schema.tasks[task], task):
        if key in kept:
          feature[key].CopyFrom(kept[key])
    if element.example is not None:  # Every input feature but the new labels' passes through.
      replaced = {key for task in (*labels, *reused) for key in (
          *self.schema.tasks[task].feature_spec(), schema_lib.source_key(task),
          schema_lib.model_key(task))}
      for key, value in element.example.features.feature.items():
        if key not in feature and key not in replaced and key != FILENAME_KEY:
          feature[key].CopyFrom(value)
      for task in truth:
        stats[task] = {"source": schema_lib.GROUND_TRUTH}
        self.kept.inc()
    feature[FILENAME_KEY].bytes_list.value.append(element.path.encode())
    if reused:
      stats.update(self._stats_of(example, reused))
    return example.SerializeToString(deterministic=True), stats


def all_reused(stats: Mapping[str, Mapping[str, Any]]) -> bool:
  """Whether a record's task stats say every pseudo label of it was reused."""
  return (any(REUSED in s for s in stats.values())
          and all(REUSED in s for s in stats.values() if s["source"] == schema_lib.PSEUDO))


def _one_per_id(item) -> Iterator[Any]:
  """(id, [(path, record, stats)]) -> the record of the first path, with every
  path in `SOURCE_PATHS_KEY` when there are several; its stats on 'stats', the
  number of other copies on 'duplicates', and a 1 on 'reused' when no label is new."""
  _, copies = item
  copies = sorted(copies, key=lambda copy: copy[0])
  path, record, stats = copies[0]
  if all_reused(stats):
    yield beam.pvalue.TaggedOutput(REUSED, 1)
  if len(copies) > 1:
    example = tf.train.Example.FromString(record)
    example.features.feature[SOURCE_PATHS_KEY].bytes_list.value.extend(
        copy[0].encode() for copy in copies)
    record = example.SerializeToString(deterministic=True)
    yield beam.pvalue.TaggedOutput(DUPLICATES, len(copies) - 1)
  yield record
  yield beam.pvalue.TaggedOutput("stats", stats)


class OnePerImage(beam.PTransform):
  """(id, (path, record, stats)) -> {'records': one per image content,
  'stats': theirs, 'duplicates': one int, the copies dropped, 'reused': one
  int, the records with no new label}.

  Identical content (the same id) at several paths becomes one record of the
  first path that lists every path (`SOURCE_PATHS_KEY`).
  """

  def expand(self, made):
    kept = (made
            | "ById" >> beam.GroupByKey()
            | "First" >> beam.FlatMap(_one_per_id).with_outputs(
                DUPLICATES, "stats", REUSED, main="records"))
    return {"records": kept.records, "stats": kept.stats,
            "duplicates": kept[DUPLICATES] | "Sum" >> beam.CombineGlobally(sum),
            REUSED: kept[REUSED] | "SumReused" >> beam.CombineGlobally(sum)}


def _counted(stats: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
  """One example's task stats with its label's source as a count of one."""
  return {task: {schema_lib.PSEUDO: 0, schema_lib.GROUND_TRUTH: 0,
                 **{k: v for k, v in s.items() if k != "source"}, s["source"]: 1}
          for task, s in stats.items()}


def _summarize(totals: dict[str, dict[str, Any]],
               task_params: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
  # Tasks passed through without parameters (no teacher, no task_params) get their counts only.
  schema = schema_lib.Schema({task: task_params[task] for task in totals if task in task_params})
  for task, task_totals in totals.items():
    if task in schema.tasks:
      task_totals.update(schema.tasks[task].stats_summary(task_totals))
    if "min" in task_totals:
      task_totals["range"] = [task_totals.pop("min"), task_totals.pop("max")]
  return totals


class LabelStats(beam.PTransform):
  """Per-example task stats (`Task.label_stats` plus 'source') -> one dict of
  per-task totals (`common.CombineTrees`), with each task's `stats_summary` added.

  Args:
    task_params: the schema's task parameters (which task objects summarize).
  """

  def __init__(self, task_params: Mapping[str, Mapping[str, Any]]):
    super().__init__()
    self.task_params = dict(task_params)

  def expand(self, stats):
    return (stats
            | "Counted" >> beam.Map(_counted)
            | "Totals" >> common.CombineTrees()
            | "Summarize" >> beam.Map(_summarize, self.task_params))


def make_summary(_, images_in: int, examples_out: int, reasons: dict, task_stats: dict,
                 config: Mapping[str, Any], duplicates: int = 0, reused: int | None = None,
                 sources: Sequence[Mapping[str, Any]] = ()) -> str:
  """The run summary as JSON text; an incremental run's (`reused` given) counts
  split the examples out into reused and newly labeled, and name its sources."""
  dead = sum(reasons.values())
  counts = {"images_in": images_in, "examples_out": examples_out,
            "dead_letters": dead, DUPLICATES: duplicates,
            "balanced": images_in == examples_out + dead + duplicates}
  extra = {}
  if reused is not None:
    counts.update({REUSED: reused, "newly_labeled": examples_out - reused})
    extra["reused_from"] = list(sources)
  return json.dumps({
      "counts": counts, **extra,
      "dead_letter_reasons": reasons,
      "tasks": task_stats,
      "teachers": {t["task"]: f"{t['name']}@{t['version']}" for t in config["teachers"]},
      "config": config,
  }, indent=2, sort_keys=True)


class PseudoLabel(beam.PTransform):
  """The whole pipeline after the input: teachers, labels, and the written outputs.

  Args:
    config: a resolved config (`resolve_config`) plus the run's options under
      'options' (input pattern and format, output dir, shards, ...).
    loader: path -> teacher, for tests (default `must.serving.load`).
    write_dir: where the outputs go (default the output dir; `run` gives its
      run dir's staging dir).

  Returns:
    {'records', 'dead_letters', 'summary'} PCollections (the summary as JSON
    text), after they are written under `write_dir`.
  """

  def __init__(self, config: Mapping[str, Any], loader=None, write_dir: str = "",
               sources: Sequence[Previous] = (), checkpoints: str = ""):
    super().__init__()
    self.config, self.loader = dict(config), loader
    self.write_dir = write_dir or self.config["options"]["output_dir"]
    self.sources, self.checkpoints = list(sources), checkpoints

  def expand(self, pbegin):
    options = self.config["options"]
    output_dir = self.write_dir
    read = pbegin | "ReadCorpus" >> ReadCorpus(
        options["input_pattern"], options["input_format"], options["max_pixels"])
    specs = [inference.TeacherSpec(t["task"], t["path"], t["batch_size"])
             for t in self.config["teachers"]]

    def run_teachers(decoded, group, label="RunTeachers"):
      return decoded | label >> RunTeachers(
          [s for s in specs if s.task in group], self.loader, options["inference_mode"],
          options.get("large_model", False), options.get("model_copies"))

    incremental = options.get("previous_output") or options.get("resume")
    if incremental:
      groups = teacher_groups([s.task for s in specs], self.sources)
      plan = read["decoded"] | "PlanReuse" >> PlanReuse(self.config, self.sources, groups)
      inferred = ([run_teachers(plan[str(i)], group, "RunTeachers" if i == 0 else
                                f"RunTeachers[{'+'.join(sorted(group))}]")
                   for i, group in enumerate(groups)]
                  + [plan[REUSED] | "NoTeachers" >> beam.Map(lambda e: (e, {}))]
                  ) | "AllInferred" >> beam.Flatten()
    else:
      inferred = run_teachers(read["decoded"], {s.task for s in specs})
    made = inferred | "MakeExamples" >> beam.ParDo(MakeExamplesFn(self.config)).with_outputs(
        decode.DEAD_LETTERS, quality.QUALITY, main="records")
    if options.get("quality") == quality.ON:
      made[quality.QUALITY] | "LabelQuality" >> quality.LabelQuality(
          self.config["task_params"], output_dir)
    made_records = made.records
    if self.checkpoints and options.get("checkpoint_every"):
      made_records = made_records | "Checkpoint" >> beam.ParDo(
          CheckpointFn(self.checkpoints, options["checkpoint_every"]))
    kept = made_records | "OnePerImage" >> OnePerImage()
    records = kept["records"]
    dead_letters = ((read["dead_letters"], made[decode.DEAD_LETTERS])
                    | "AllDeadLetters" >> beam.Flatten())

    records | "WriteExamples" >> beam.io.WriteToTFRecord(
        common.join(output_dir, EXAMPLES_PREFIX),
        file_name_suffix=".tfrecord", num_shards=options["num_shards"])
    dead_letters | "WriteDeadLetters" >> common.WriteJsonLines(
        common.join(output_dir, DEAD_LETTERS_FILE))

    examples_out = records | "CountOut" >> beam.combiners.Count.Globally()
    reasons = dead_letters | "CountReasons" >> common.CountReasons()
    task_stats = kept["stats"] | "TaskStats" >> LabelStats(self.config["task_params"])
    summary = (pbegin
               | "One" >> beam.Create([None])
               | "Summary" >> beam.Map(
                   make_summary, beam.pvalue.AsSingleton(read["count"]),
                   beam.pvalue.AsSingleton(examples_out), beam.pvalue.AsSingleton(reasons),
                   beam.pvalue.AsSingleton(task_stats), self.config,
                   beam.pvalue.AsSingleton(kept["duplicates"]),
                   beam.pvalue.AsSingleton(kept[REUSED]) if incremental else None,
                   [{"from": s.where, "tasks": list(s.tasks)} for s in self.sources]))
    summary | "WriteSummary" >> common.WriteSingleFile(common.join(output_dir, SUMMARY_FILE))
    return {"records": records, "dead_letters": dead_letters, "summary": summary}


def run_config(options: PseudoLabelOptions) -> dict:
  """The resolved config of a run: the teachers config plus the run's options."""
  view = options.view_as(PseudoLabelOptions)
  common.require(view, ("input_pattern", "teachers_config", "output_dir"))
  if view.model_copies is not None and view.model_copies < 1:
    raise ValueError(f"--model_copies must be >= 1, got {view.model_copies}")
  if view.checkpoint_every < 0:
    raise ValueError(f"--checkpoint_every must be >= 0, got {view.checkpoint_every}")
  config = load_config(view.teachers_config)
  config["options"] = {
      "input_pattern": view.input_pattern, "input_format": view.input_format,
      "output_dir": view.output_dir, "num_shards": view.num_shards,
      "max_pixels": view.max_pixels, "inference_mode": view.inference_mode,
      "large_model": view.large_model, "model_copies": view.model_copies,
      "max_failure_fraction": view.max_failure_fraction,
      "previous_output": view.previous_output, "resume": view.resume,
      "checkpoint_every": view.checkpoint_every,
      "teachers_config": view.teachers_config,
      "quality": resolve_quality(view.quality, view.input_format),
      "runner": options.view_as(pipeline_options.StandardOptions).runner,
  }
  return config


def resolve_quality(flag: str, input_format: str) -> str:
  """--quality as run: auto is on for TFRecord input, off for image files.

  Raises:
    cli.UserError: --quality on with image files, which carry no ground truth.
  """
  if flag == quality.ON and input_format != TFRECORD:
    raise cli.UserError("--quality on needs --input_format tfrecord: image files carry no "
                        "ground truth to score the pseudo labels against")
  if flag == quality.AUTO:
    return quality.ON if input_format == TFRECORD else quality.OFF
  return flag


def failure_budget_error(summary: Mapping[str, Any], max_fraction: float) -> str | None:
  """One line naming the failures when they exceed `max_fraction` of the inputs, else None.

  Failures are the dead letters of every reason but the deliberate filters
  (`decode.FILTERS`).
  """
  reasons = {r: n for r, n in summary["dead_letter_reasons"].items() if r not in decode.FILTERS}
  failed, images_in = sum(reasons.values()), summary["counts"]["images_in"]
  if failed <= max_fraction * images_in:
    return None
  top = ", ".join(f"{r}: {n}" for r, n in sorted(reasons.items(), key=lambda kv: -kv[1])[:3])
  return (f"{failed} of {images_in} inputs failed ({failed / images_in:.1%} > "
          f"--max_failure_fraction {max_fraction}); top reasons: {top}")


def run(argv: Sequence[str] | None = None, loader=None) -> dict:
  """Checks the flags and input, runs the pipeline into its own output dir
  (`run_dir.RunDir`) and returns the published summary.

  Raises:
    cli.UserError: a bad flag or config value, input matching no file, or an
      output dir that is locked or holds another run's output.
    cli.JobFailed: more failures than --max_failure_fraction, after the summary
      and the dead letters are published.
  """
  options, config = common.configure(PseudoLabelOptions, argv, run_config)
  output_dir = config["options"]["output_dir"]
  sources = previous_sources(config)

  def build(p, staging):  # inside the run dir: a new run's checkpoints follow its _clear
    checkpoints = (write_checkpoint_config(config) if config["options"]["checkpoint_every"]
                   else "")
    return p | "PseudoLabel" >> PseudoLabel(config, loader, staging, sources, checkpoints)

  summary = run_dir.run_owned(options, output_dir, config["options"]["input_pattern"], build,
                              _NAMESPACE, SUMMARY_FILE, config["options"]["resume"])
  error = failure_budget_error(summary, config["options"]["max_failure_fraction"])
  if error:
    raise cli.JobFailed(f"{error} (see {common.join(output_dir, SUMMARY_FILE)} and its "
                        "dead letters)")
  return summary


def _main(argv: Sequence[str]) -> None:
  logging.getLogger().setLevel(logging.INFO)
  summary = run(argv)
  print(json.dumps(summary["counts"], indent=2))
  if not summary["counts"]["balanced"]:
    raise cli.JobFailed("counts do not balance: images in != examples out + dead letters + "
                        "duplicates "
                        f"({summary['counts']})")


def main(argv: Sequence[str] | None = None) -> None:
  cli.run_main("beam_pipelines.pseudo_label", _main, argv)


if __name__ == "__main__":
  main()
