"""What the Beam pipelines share: options, runner defaults, text and TFRecord I/O.

Every pipeline of the project (pseudo-labeling, export, inspection) takes the
options of `DataOptions` (input pattern, output dir, shards) beside Beam's own,
through its own options class derived from it. Beam registers the flags of
every *direct* subclass of `PipelineOptions` in one parser when it validates
and serializes options (and warns about the rest as unparseable), so each
options class names `PipelineOptions` among its bases too, and no flag is
defined by two classes: shared flags live in a common base.

TFRecords are Beam's own (`beam.io.WriteToTFRecord`, `tfrecordio`); their
checksums use the pinned `google-crc32c`. Counts are keyed combiners.
"""
import argparse
import json
import logging
import time
from typing import Any, Callable, Iterator, Mapping, Sequence

import apache_beam as beam
from apache_beam.io import fileio
from apache_beam.io import filesystems
from apache_beam.io import tfrecordio
from apache_beam.options import pipeline_options

from must import cli
from must import image_codec

DEFAULT_RUNNER = "DirectRunner"
HASH_SPACE = image_codec.HASH_SPACE
stable_hash = image_codec.stable_hash


class DataOptions(pipeline_options.PipelineOptions):
  """Options every pipeline of the project takes (beside Beam's own)."""

  @classmethod
  def _add_argparse_args(cls, parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input_pattern",
                        help="The input files (images or TFRecord shards); any Beam file system.")
    parser.add_argument("--output_dir", help="Where the outputs go.")
    parser.add_argument("--num_shards", type=int, default=0,
                        help="Output TFRecord shards; 0 lets the runner decide.")
    parser.add_argument("--overwrite", action="store_true",
                        help="Replace another run's output in --output_dir (removed first).")


def make_options(options_class: type[pipeline_options.PipelineOptions],
                 argv: Sequence[str] | None) -> pipeline_options.PipelineOptions:
  """Parses `argv` into `options_class` with the project's runner defaults.

  A flag that neither the pipeline nor Beam defines is a user error (Beam
  would only warn). The runner defaults to `DEFAULT_RUNNER`, named explicitly: left to Beam, it
  would first try to download the Prism runner, which fails offline.
  """
  options = options_class(argv)
  parsers = []
  options.get_all_options(add_extra_args_fn=parsers.append)  # Beam's parser of every option
  _, unknown = parsers[0].parse_known_args(list(argv or []))
  if unknown:
    raise cli.UserError(f"unknown flags {unknown}: neither this pipeline's nor Beam's "
                        "(--help lists them)")
  standard = options.view_as(pipeline_options.StandardOptions)
  if standard.runner is None:
    standard.runner = DEFAULT_RUNNER
  options.view_as(pipeline_options.SetupOptions).save_main_session = False
  return options


class Progress:
  """Logs how many elements a worker has done, and how fast, while the job runs.

  Beam's counters are only complete when the job ends; this logs every
  `interval` seconds from inside a DoFn, e.g. 'pseudo_label: 1,200 images
  (9.8/s), 3 dead letters'.
  """

  def __init__(self, what: str, *keys: str, interval: float = 10.0):
    self.what = what
    self.interval = interval
    self.counts = dict.fromkeys(keys, 0)
    self.start = self.last = None

  def add(self, key: str, n: int = 1) -> None:
    """Counts `n` more under `key`, one of the keys given (the first is rated)."""
    now = time.monotonic()
    if self.start is None:
      self.start = self.last = now
    self.counts[key] = self.counts.get(key, 0) + n
    if now - self.last >= self.interval:
      self.last = now
      self.log()

  def log(self) -> None:
    if self.start is None:
      return
    (main, count), *rest = self.counts.items()
    rate = count / max(time.monotonic() - self.start, 1e-9)
    others = "".join(f", {n:,} {key}" for key, n in rest)
    logging.info("%s: %s %s (%.1f/s)%s", self.what, f"{count:,}", main, rate, others)


def require(view: Any, names: Sequence[str]) -> None:
  """Raises ValueError naming the flags among `names` that `view` lacks."""
  missing = [f"--{name}" for name in names if not getattr(view, name)]
  if missing:
    raise ValueError(f"missing options: {', '.join(missing)}")


def configure(options_class: type[pipeline_options.PipelineOptions],
              argv: Sequence[str] | None, run_config: Callable[[Any], dict]
              ) -> tuple[pipeline_options.PipelineOptions, dict]:
  """`make_options`, then `run_config(options)`, before any work: a bad flag or
  value (a ValueError or OSError of the config) becomes a `cli.UserError`."""
  options = make_options(options_class, argv)
  try:
    return options, run_config(options)
  except (ValueError, OSError) as e:
    raise cli.UserError(str(e)) from e


def require_files(pattern: str, flag: str = "--input_pattern") -> None:
  """Raises `cli.UserError` when `pattern` (a path or glob, any Beam file system)
  matches no file."""
  try:
    found = filesystems.FileSystems.match([pattern])[0].metadata_list
  except Exception:  # pylint: disable=broad-except  (each file system's own "not found")
    found = []
  if not found:
    raise cli.UserError(f"{flag} {pattern}: matches no file")


def run_pipeline(options: pipeline_options.PipelineOptions,
                 build: Callable[[beam.Pipeline], Any], namespace: str) -> None:
  """Builds a pipeline with `build(pipeline)`, runs it to the end, and logs the
  counters of `namespace`."""
  pipeline = beam.Pipeline(options=options)
  build(pipeline)
  result = pipeline.run()
  result.wait_until_finish()
  for counter in result.metrics().query()["counters"]:
    if counter.key.metric.namespace == namespace:
      logging.info("%s: %s", counter.key.metric.name, counter.committed)


def read_text(path: str) -> str:
  """A text file through Beam's file systems."""
  with filesystems.FileSystems.open(path) as f:
    return f.read().decode()


def write_bytes(path: str, data: bytes) -> None:
  """Writes one whole file through Beam's file systems (replacing it)."""
  with filesystems.FileSystems.create(path) as f:
    f.write(data)


def join(*parts: str) -> str:
  """Joins path parts the way the path's own file system does."""
  return filesystems.FileSystems.join(*parts)


class WriteSingleFile(beam.PTransform):
  """Text elements -> one file at exactly `path`, one element a line."""

  def __init__(self, path: str):
    super().__init__()
    self.path = path

  def expand(self, lines):
    return lines | "Write" >> beam.io.WriteToText(self.path, num_shards=1,
                                                   shard_name_template="")


class WriteJsonLines(beam.PTransform):
  """Dicts -> one JSON lines file at exactly `path` (keys sorted)."""

  def __init__(self, path: str):
    super().__init__()
    self.path = path

  def expand(self, dicts):
    return (dicts
            | "ToJson" >> beam.Map(lambda d: json.dumps(d, sort_keys=True))
            | "WriteFile" >> WriteSingleFile(self.path))


# -- TFRecords and counts ----------------------------------------------------------


def _read_tfrecord_file(readable_file) -> Iterator[tuple[str, bytes | str]]:
  """(path, record) per record; a shard that stops reading gives (path, error text)
  as its last element, which decoding turns into a dead letter."""
  path = readable_file.metadata.path
  try:
    with readable_file.open() as f:
      while (record := tfrecordio._TFRecordUtil.read_record(f)) is not None:  # pylint: disable=protected-access
        yield path, record
  except (ValueError, OSError) as e:  # a bad length, checksum or short record
    yield path, f"{type(e).__name__}: {e}"[:200]  # (Beam's message quotes the bytes)


class ReadTFRecords(beam.PTransform):
  """A file pattern of TFRecord shards -> (shard path, record), one shard per element
  read by Beam's TFRecord reader, then redistributed.

  A record is bytes; a shard that cannot be read on gives one (path, error
  text) element, a str, where it stops (`ReadFromTFRecord` would fail the job).
  """

  def __init__(self, pattern: str):
    super().__init__()
    self.pattern = pattern

  def expand(self, pbegin):
    return (pbegin
            | "MatchShards" >> fileio.MatchFiles(self.pattern)
            | "ReadMatches" >> fileio.ReadMatches()
            | "ReadRecords" >> beam.FlatMap(_read_tfrecord_file)
            | "Redistribute" >> beam.Reshuffle())


class CountReasons(beam.PTransform):
  """Dead letters ({path, reason, detail}) -> one {reason: count} dict."""

  def expand(self, dead_letters):
    return (dead_letters
            | "Reason" >> beam.Map(lambda d: d["reason"])
            | "Count" >> beam.combiners.Count.PerElement()
            | "ToDict" >> beam.combiners.ToDict()
            | "Sort" >> beam.Map(lambda counts: dict(sorted(counts.items()))))


_EXTREMES = {"min": min, "max": max}


def _leaves(tree: Mapping[str, Any], path: tuple = ()) -> Iterator[tuple[tuple, Any]]:
  """(key path, number) per leaf of nested dicts (str keys) and lists (int keys)."""
  items = enumerate(tree) if isinstance(tree, (list, tuple)) else (
      (str(k), v) for k, v in tree.items())
  for key, value in items:
    if isinstance(value, (Mapping, list, tuple)):
      yield from _leaves(value, (*path, key))
    else:
      yield (*path, key), value


def _order(key) -> tuple:
  """List indices, then dict keys, digit strings (class ids) in numeric order."""
  if isinstance(key, int):
    return 0, key, ""
  return (1, int(key), "") if key.isdigit() else (2, 0, key)


def _nest(leaves: Sequence[tuple[tuple, Any]]) -> dict[str, Any]:
  """`_leaves` pairs, in any order -> the nested dicts and lists again, keys ordered."""
  tree = {}
  for path, value in sorted(leaves, key=lambda kv: [_order(k) for k in kv[0]]):
    node = tree
    for key, child in zip(path[:-1], path[1:]):
      node = node.setdefault(key, [] if isinstance(child, int) else {})
    if isinstance(node, list):
      node.append(value)
    else:
      node[path[-1]] = value
  return tree


class CombineTrees(beam.PTransform):
  """Nested dicts (and lists) of numbers -> one such tree: each leaf is summed over
  the inputs, except leaves named `min` or `max`, which keep the extreme.

  The trees are flattened to (key path, number) and combined per key
  (`CombinePerKey(sum)`, `min`, `max`); an empty input gives {}.
  """

  def expand(self, trees):
    leaves = trees | "Leaves" >> beam.FlatMap(_leaves)
    ops = [("sum", sum), *_EXTREMES.items()]
    parts = leaves | "ByOp" >> beam.Partition(
        lambda kv, n: list(_EXTREMES).index(kv[0][-1]) + 1 if kv[0][-1] in _EXTREMES else 0,
        len(ops))
    return ([part | f"Combine[{name}]" >> beam.CombinePerKey(fn)
             for part, (name, fn) in zip(parts, ops)]
            | "AllLeaves" >> beam.Flatten()
            | "ToList" >> beam.combiners.ToList()
            | "Nest" >> beam.Map(_nest))
