"""Reading pseudo-labeled shards back: per-example decoding with dead letters.

The export and inspection pipelines read the TFRecord shards the labeling
pipeline writes (or any shards in `must.schema` form). `ReadLabeledShards`
turns them into `LabeledExample`s, one per distinct image id, with each task's
label as that task's label dataclass (`Task.from_decoded`). What cannot be used is
a dead letter {path, reason, detail}, never an error:

  unreadable_shard  a shard that stops reading (corrupt or truncated file)
  bad_example       a record that is not a tf.Example with an image
  schema_version    an example of another `must/schema_version` (or none)
  missing_task      an example without a label for a task the run needs
  bad_label         a label that does not decode (e.g. a broken mask PNG)
  duplicate_id      a second record of an image id already read

Where the shards came from is described by a metadata file, by default the
labeling run's `summary.json` beside them: the schema's task parameters and
the category names (from the teachers' `teacher.json`). A world's
`world.json` works too.
"""
import argparse
import dataclasses
import json
import posixpath
from typing import Any, Iterator, Mapping, Sequence

import apache_beam as beam
from apache_beam.options import pipeline_options
import numpy as np
import tensorflow as tf

from beam_pipelines import common
from beam_pipelines import decode
from must import image_codec
from must import schema as schema_lib

UNREADABLE_SHARD = "unreadable_shard"
BAD_EXAMPLE = decode.BAD_EXAMPLE
SCHEMA_VERSION = "schema_version"
MISSING_TASK = "missing_task"
BAD_LABEL = "bad_label"
DUPLICATE_ID = "duplicate_id"
SUMMARY_FILE = "summary.json"
FILENAME_KEY = "image/filename"
_NAMESPACE = "labeled_shards"
_GLOB_CHARS = "*?["


class LabeledShardsOptions(common.DataOptions, pipeline_options.PipelineOptions):
  """Options of the pipelines that read labeled shards (beside `common.DataOptions`).

  Flags both the export and the inspection take live here: Beam parses the
  flags of every options class together, and a flag defined twice is an error.
  """

  @classmethod
  def _add_argparse_args(cls, parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--metadata", default="",
        help="The labeling run's summary.json (default: the one beside the shards) or a "
        "world.json: the schema's task parameters and the category names.")
    parser.add_argument(
        "--categories", default="",
        help="Category names by id, comma-separated, background (id 0) first; overrides "
        "the metadata's names.")
    parser.add_argument("--classes", default="",
                        help="Category names or ids to keep, comma-separated (default all).")
    parser.add_argument("--min_score", type=float, default=0.0,
                        help="Lowest detection score / top-1 class probability kept.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of random choices.")
    parser.add_argument("--top_k", type=int, default=3,
                        help="Classes named per image (classification.jsonl, contact sheet).")


@dataclasses.dataclass
class LabeledExample:
  """One image of the shards with its labels.

  Attributes:
    id: the image id (`image/source_id`).
    path: where the record came from, `shard#id`.
    source_path: the image's original path (`image/filename`), '' if unknown.
    image: uint8 [H, W, 3] RGB pixels as TensorFlow decodes them.
    encoded: the stored image bytes.
    image_format: their format ('jpeg' or 'png').
    labels: task -> that task's label dataclass, for the tasks it carries.
    provenance: task -> `must.schema.Provenance` of that label.
  """
  id: str
  path: str
  source_path: str
  image: np.ndarray
  encoded: bytes
  image_format: str
  labels: dict[str, Any]
  provenance: dict[str, schema_lib.Provenance]

  @property
  def image_size(self) -> tuple[int, int]:
    return tuple(self.image.shape[:2])


# -- Metadata -------------------------------------------------------------------


def default_metadata_path(pattern: str) -> str:
  """`summary.json` in the shards' folder; '' when the folder is itself a pattern."""
  folder = posixpath.dirname(pattern)
  if not folder or any(c in folder for c in _GLOB_CHARS):
    return ""
  return common.join(folder, SUMMARY_FILE)


def load_metadata(path: str) -> dict[str, Any]:
  """Task parameters and category names from a labeling summary or a world.json.

  Returns:
    {'task_params': {task: params}, 'categories': [names] or None}.

  Raises:
    ValueError: the file is neither kind.
  """
  try:
    data = json.loads(common.read_text(path))
  except Exception as e:  # pylint: disable=broad-except  (any file system's error)
    raise ValueError(f"cannot read the metadata file {path}: {e}") from None
  config = data.get("config") if isinstance(data, dict) else None
  if isinstance(config, dict) and "task_params" in config:  # a labeling run's summary
    names = [t.get("class_names") for t in config.get("teachers", []) if t.get("class_names")]
    return {"task_params": config["task_params"], "categories": names[0] if names else None}
  if isinstance(data, dict) and "task_params" in data:  # a world.json
    return {"task_params": data["task_params"], "categories": data.get("categories")}
  raise ValueError(f"{path} is neither a labeling run's summary.json nor a world.json "
                   "(no task_params)")


def category_names(task_params: Mapping[str, Mapping[str, Any]],
                   names: Sequence[str] | None = None, override: str = "") -> list[str]:
  """Category names by id (0 = background).

  Args:
    task_params: the schema's task parameters; the largest `num_classes`
      sizes the id space.
    names: names from the metadata, if any.
    override: comma-separated names from the command line, if any.

  Returns:
    At least `num_classes` names; ids without a name are called `class_<id>`.
  """
  if override:
    names = [n.strip() for n in override.split(",")]
  num_classes = max([int(p.get("num_classes", 0)) for p in task_params.values()] + [1])
  names = list(names or ["background"])
  return names + [f"class_{i}" for i in range(len(names), num_classes)]


def parse_classes(spec: str, names: Sequence[str]) -> list[int] | None:
  """A comma-separated list of category names or ids -> sorted ids (None if empty).

  Raises:
    ValueError: a name that is not a category, listing the valid names.
  """
  if not spec:
    return None
  ids = set()
  for item in (s.strip() for s in spec.split(",") if s.strip()):
    if item.isdigit():
      ids.add(int(item))
    elif item in names:
      ids.add(list(names).index(item))
    else:
      raise ValueError(f"unknown class {item!r}; categories: {list(names)}")
  return sorted(ids)


def resolve(view: LabeledShardsOptions) -> dict[str, Any]:
  """The shard-reading part of a run's config from its options.

  Returns:
    {'input_pattern', 'output_dir', 'num_shards', 'metadata', 'task_params',
     'categories'}.
  """
  common.require(view, ("input_pattern", "output_dir"))
  metadata_path = view.metadata or default_metadata_path(view.input_pattern)
  if not metadata_path:
    raise ValueError("--metadata is needed when the shards' folder is a pattern")
  metadata = load_metadata(metadata_path)
  return {"input_pattern": view.input_pattern, "output_dir": view.output_dir,
          "num_shards": view.num_shards, "metadata": metadata_path,
          "task_params": metadata["task_params"],
          "categories": category_names(metadata["task_params"], metadata["categories"],
                                       view.categories)}


# -- Reading --------------------------------------------------------------------


def _feature_bytes(feature, key: str) -> bytes:
  values = feature[key].bytes_list.value if key in feature else []
  return values[0] if values else b""


class KeyByIdFn(beam.DoFn):
  """(shard, record) -> (image id, (shard, record)), or a dead letter.

  Checks what the proto alone tells (an image, the schema version, the
  required tasks) before duplicates are dropped, so a malformed record never
  shadows a good one of the same image.

  Args:
    required_tasks: tasks every example must carry a label for.
  """

  def __init__(self, required_tasks: Sequence[str] = ()):
    self.required_tasks = list(required_tasks)

  def process(self, element) -> Iterator[Any]:
    shard, record = element
    if isinstance(record, str):  # The shard could not be read on from here.
      yield beam.pvalue.TaggedOutput(decode.DEAD_LETTERS,
                                     decode.dead_letter(shard, UNREADABLE_SHARD, record))
      return
    try:
      feature = tf.train.Example.FromString(record).features.feature
      encoded = feature["image/encoded"].bytes_list.value[0]
    except Exception as e:  # pylint: disable=broad-except  (malformed protos)
      yield beam.pvalue.TaggedOutput(decode.DEAD_LETTERS, decode.dead_letter(
          shard, BAD_EXAMPLE, f"{type(e).__name__}: {e}"))
      return
    image_id = _feature_bytes(feature, "image/source_id").decode() or image_codec.content_id(
        encoded)
    path = f"{shard}#{image_id}"
    versions = feature[schema_lib.VERSION_KEY].int64_list.value \
        if schema_lib.VERSION_KEY in feature else []
    if list(versions) != [schema_lib.SCHEMA_VERSION]:
      found = f"version {versions[0]}" if versions else f"no {schema_lib.VERSION_KEY}"
      yield beam.pvalue.TaggedOutput(decode.DEAD_LETTERS, decode.dead_letter(
          path, SCHEMA_VERSION,
          f"{found}; this reader takes version {schema_lib.SCHEMA_VERSION}"))
      return
    missing = [t for t in self.required_tasks
               if not _feature_bytes(feature, schema_lib.source_key(t))]
    if missing:
      yield beam.pvalue.TaggedOutput(decode.DEAD_LETTERS, decode.dead_letter(
          path, MISSING_TASK, f"no label for {', '.join(missing)}"))
      return
    yield image_id, (shard, record)


def _first_of_each_id(item) -> Iterator[Any]:
  """(id, [(shard, record)]) -> the first record by (shard, bytes); the others are
  dead letters."""
  image_id, copies = item
  first, *rest = sorted(copies)
  yield image_id, first
  for shard, _ in rest:
    yield beam.pvalue.TaggedOutput(decode.DEAD_LETTERS, decode.dead_letter(
        f"{shard}#{image_id}", DUPLICATE_ID, f"image id {image_id} was read before "
        f"(kept from {first[0]})"))


class DecodeLabeledFn(beam.DoFn):
  """(id, (shard, record)) -> `LabeledExample`, or a dead letter when a label
  does not decode.

  Args:
    task_params: the schema's task parameters.
  """

  def __init__(self, task_params: Mapping[str, Mapping[str, Any]]):
    self.task_params = dict(task_params)

  def setup(self):
    self.schema = schema_lib.Schema(self.task_params)
    # One traced graph per worker: eager decoding op by op costs about 4x more.
    self.decode = tf.function(self.schema.decode,
                              input_signature=[tf.TensorSpec([], tf.string)])
    self.decoded = beam.metrics.Metrics.counter(_NAMESPACE, "examples_decoded")
    self.dead = beam.metrics.Metrics.counter(_NAMESPACE, "dead_letters")

  def process(self, item) -> Iterator[Any]:
    image_id, (shard, record) = item
    feature = tf.train.Example.FromString(record).features.feature
    try:
      decoded = tf.nest.map_structure(lambda t: t.numpy(),
                                      self.decode(tf.constant(record)))
      labels, provenance = {}, {}
      for task_name, task in self.schema.tasks.items():
        if decoded[task_name]["present"]:
          labels[task_name] = task.from_decoded(decoded[task_name])
          provenance[task_name] = schema_lib.Provenance(
              decoded[task_name]["source"].decode(), decoded[task_name]["model"].decode())
    except Exception as e:  # pylint: disable=broad-except  (one example never fails the job)
      self.dead.inc()
      yield beam.pvalue.TaggedOutput(decode.DEAD_LETTERS, decode.dead_letter(
          f"{shard}#{image_id}", BAD_LABEL, f"{type(e).__name__}: {e}"))
      return
    self.decoded.inc()
    yield LabeledExample(
        id=image_id, path=f"{shard}#{image_id}",
        source_path=_feature_bytes(feature, FILENAME_KEY).decode(),
        image=decoded["image"], encoded=feature["image/encoded"].bytes_list.value[0],
        image_format=decoded["format"].decode() or image_codec.JPEG, labels=labels,
        provenance=provenance)


class ReadLabeledShards(beam.PTransform):
  """A file pattern of labeled shards -> `LabeledExample`s, one per image id.

  Args:
    pattern: the shards (local or gs://).
    task_params: the schema's task parameters.
    required_tasks: tasks every example must carry (others are dead letters).

  Returns:
    {'examples': LabeledExample elements, 'dead_letters': dicts,
     'count': one int, the records (and unreadable shard ends) read}.
  """

  def __init__(self, pattern: str, task_params: Mapping[str, Mapping[str, Any]],
               required_tasks: Sequence[str] = ()):
    super().__init__()
    self.pattern, self.task_params = pattern, dict(task_params)
    self.required_tasks = list(required_tasks)

  def expand(self, pbegin):
    records = pbegin | "ReadTFRecords" >> common.ReadTFRecords(self.pattern)
    keyed = records | "KeyById" >> beam.ParDo(KeyByIdFn(self.required_tasks)).with_outputs(
        decode.DEAD_LETTERS, main="keyed")
    unique = (keyed.keyed
              | "GroupById" >> beam.GroupByKey()
              | "FirstOfEachId" >> beam.FlatMap(_first_of_each_id).with_outputs(
                  decode.DEAD_LETTERS, main="unique"))
    decoded = unique.unique | "Decode" >> beam.ParDo(
        DecodeLabeledFn(self.task_params)).with_outputs(decode.DEAD_LETTERS, main="examples")
    dead_letters = ((keyed[decode.DEAD_LETTERS], unique[decode.DEAD_LETTERS],
                     decoded[decode.DEAD_LETTERS])
                    | "AllDeadLetters" >> beam.Flatten())
    return {"examples": decoded.examples, "dead_letters": dead_letters,
            "count": records | "Count" >> beam.combiners.Count.Globally()}
