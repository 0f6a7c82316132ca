"""What the Beam pipelines share: progress logging, TFRecord I/O, keyed counts."""
import json
import logging
import os

import apache_beam as beam
from apache_beam.options import pipeline_options
from apache_beam.testing import test_pipeline
from apache_beam.testing import util

from beam_pipelines import common


def test_progress_logs_counts_and_rate_every_interval(caplog):
  progress = common.Progress("job", "images", "failures", interval=0.0)
  with caplog.at_level(logging.INFO):
    progress.add("images")
    progress.add("failures")
    progress.add("images", 2)
  lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("job:")]
  assert len(lines) == 3
  assert lines[-1].startswith("job: 3 images (") and lines[-1].endswith(", 1 failures")


def test_progress_is_quiet_between_intervals_and_before_any_element(caplog):
  progress = common.Progress("job", "images", interval=3600.0)
  with caplog.at_level(logging.INFO):
    progress.log()
    for _ in range(5):
      progress.add("images")
  assert not [r for r in caplog.records if r.getMessage().startswith("job:")]



def _run(build, check) -> None:
  """Runs `build(pipeline)` and asserts `check` of its one output element."""
  with test_pipeline.TestPipeline(
      options=pipeline_options.PipelineOptions(["--runner=DirectRunner"])) as p:
    util.assert_that(build(p) | beam.combiners.ToList(), lambda got: check(*got))


def _equal(expected):
  def check(got):
    assert got == [expected] and json.dumps(got[0]) == json.dumps(expected), got
  return check


def test_combine_trees_sums_leaves_key_by_key_and_keeps_extremes():
  trees = [{"a": {"pseudo": 1, "hist": {"10": 2, 2: 1}, "bins": [1, 0, 2], "min": 0.5,
                  "max": 1.0}, "images": 1},
           {"a": {"pseudo": 1, "hist": {"2": 3}, "bins": [0, 1, 1], "min": -1.0,
                  "max": 4.0}, "b": {"ground_truth": 1}, "images": 1},
           {"images": 1}]
  # Class ids in numeric order, lists as lists, dict keys as str.
  _run(lambda p: p | beam.Create(trees) | common.CombineTrees(),
       _equal({"a": {"bins": [1, 1, 3], "hist": {"2": 4, "10": 2}, "max": 4.0, "min": -1.0,
                     "pseudo": 2}, "b": {"ground_truth": 1}, "images": 3}))


def test_combine_trees_of_nothing_is_empty_and_reasons_are_counted():
  _run(lambda p: p | beam.Create([]) | common.CombineTrees(), _equal({}))
  letters = [{"reason": r} for r in ("b", "a", "b")]
  _run(lambda p: p | beam.Create(letters) | common.CountReasons(), _equal({"a": 1, "b": 2}))


def test_read_tfrecords_reads_what_beam_writes_and_dead_letters_a_cut_shard(tmp_path):
  records = [b"record-%d" % i for i in range(5)]
  with test_pipeline.TestPipeline() as p:
    _ = p | beam.Create(records) | beam.io.WriteToTFRecord(
        str(tmp_path / "part"), file_name_suffix=".tfrecord", num_shards=2)
  shards = sorted(os.listdir(tmp_path))
  assert shards == ["part-00000-of-00002.tfrecord", "part-00001-of-00002.tfrecord"]
  data = (tmp_path / shards[0]).read_bytes()
  first = data[12:12 + len(records[0])]  # after the length and its checksum
  (tmp_path / "cut.tfrecord").write_bytes(data[:16 + len(first) + 5])  # one record and a bit

  def check(read):
    got = sorted(r for _, r in read if isinstance(r, bytes))
    assert got == sorted(records + [first])  # and the cut shard's whole record
    cut = [(os.path.basename(path), r) for path, r in read if isinstance(r, str)]
    assert len(cut) == 1 and cut[0][0] == "cut.tfrecord" and "ValueError" in cut[0][1], cut

  _run(lambda p: p | common.ReadTFRecords(str(tmp_path / "*.tfrecord")), check)
