"""What the Beam pipelines share: options, runner defaults, text and TFRecord I/O.

Every pipeline of the project (pseudo-labeling, export, inspection) takes the
options of `DataOptions` (input pattern, output dir, shards) beside Beam's own,
through its own options class derived from it. Beam registers the flags of
every *direct* subclass of `PipelineOptions` in one parser when it validates
and serializes options (and warns about the rest as unparseable), so each
options class names `PipelineOptions` among its bases too, and no flag is
defined by two classes: shared flags live in a common base.

Beam's own TFRecord source and sink need a crc32c package (python-snappy,
google-crc32c or crcmod), which the pinned stack does not have; TensorFlow's
record reader and writer compute it natively. Beam's file-based sink still does
the sharding, temp files and exactly-once finalize.
"""
import argparse
import hashlib
import json
import logging
import time
from typing import Any, Callable, Iterator, Sequence

import apache_beam as beam
from apache_beam import coders
from apache_beam.io import filebasedsink
from apache_beam.io import fileio
from apache_beam.io import filesystems
from apache_beam.options import pipeline_options
import tensorflow as tf

DEFAULT_RUNNER = "DirectRunner"
HASH_SPACE = 16 ** 15  # stable_hash values are in [0, HASH_SPACE)


def stable_hash(text: str) -> int:
  """A hash of `text` that is the same on every machine, run and Python."""
  return int(hashlib.sha1(text.encode()).hexdigest()[:15], 16)


class DataOptions(pipeline_options.PipelineOptions):
  """Options every pipeline of the project takes (beside Beam's own)."""

  @classmethod
  def _add_argparse_args(cls, parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input_pattern",
                        help="The input files (images or TFRecord shards); any Beam file system.")
    parser.add_argument("--output_dir", help="Where the outputs go.")
    parser.add_argument("--num_shards", type=int, default=0,
                        help="Output TFRecord shards; 0 lets the runner decide.")


def make_options(options_class: type[pipeline_options.PipelineOptions],
                 argv: Sequence[str] | None) -> pipeline_options.PipelineOptions:
  """Parses `argv` into `options_class` with the project's runner defaults.

  The runner defaults to `DEFAULT_RUNNER`, named explicitly: left to Beam, it
  would first try to download the Prism runner, which fails offline.
  """
  options = options_class(argv)
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


# -- TFRecords -------------------------------------------------------------------


class _TFRecordSink(filebasedsink.FileBasedSink):
  """Beam file-based sink whose shard files are written by `tf.io.TFRecordWriter`.

  Shard and temp paths must be on a file system both Beam and TensorFlow
  reach (local, gs://).
  """

  def __init__(self, file_path_prefix: str, file_name_suffix: str = "", num_shards: int = 0):
    super().__init__(file_path_prefix, coder=coders.BytesCoder(),
                     file_name_suffix=file_name_suffix, num_shards=num_shards,
                     mime_type="application/octet-stream")

  def open(self, temp_path):
    return tf.io.TFRecordWriter(temp_path)

  def write_record(self, file_handle, value):
    file_handle.write(value)

  def close(self, file_handle):
    file_handle.close()


class WriteTFRecords(beam.PTransform):
  """Serialized records -> sharded TFRecord files `<prefix>-SSSSS-of-NNNNN<suffix>`."""

  def __init__(self, file_path_prefix: str, file_name_suffix: str = ".tfrecord",
               num_shards: int = 0):
    super().__init__()
    self.sink = _TFRecordSink(file_path_prefix, file_name_suffix, num_shards)

  def expand(self, records):
    return records | "Write" >> beam.io.Write(self.sink)


def _read_tfrecord_file(readable_file) -> Iterator[tuple[str, bytes | str]]:
  """(path, record) per record; a shard that stops reading gives (path, error text)
  as its last element, which decoding turns into a dead letter."""
  path = readable_file.metadata.path
  try:
    for record in tf.data.TFRecordDataset(path):
      yield path, record.numpy()
  except tf.errors.OpError as e:
    yield path, f"{type(e).__name__}: {e.message}"


class ReadTFRecords(beam.PTransform):
  """A file pattern of TFRecord shards -> (shard path, record), one shard per element
  read by TensorFlow, then redistributed.

  A record is bytes; a shard that cannot be read on gives one (path, error
  text) element, a str, where it stops.
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


def _count_reasons(reasons: Sequence[str]) -> dict[str, int]:
  counts = {}
  for reason in reasons:
    counts[reason] = counts.get(reason, 0) + 1
  return dict(sorted(counts.items()))


class CountReasons(beam.PTransform):
  """Dead letters ({path, reason, detail}) -> one {reason: count} dict."""

  def expand(self, dead_letters):
    return (dead_letters
            | "Reason" >> beam.Map(lambda d: d["reason"])
            | "Reasons" >> beam.combiners.ToList()
            | "Count" >> beam.Map(_count_reasons))
