"""The inspection pipeline: a deterministic sample on a contact sheet, filters,
statistics plots equal to the labeling run's statistics, malformed input."""
import glob
import json
import os
import shutil

import apache_beam as beam
from apache_beam.options import pipeline_options
from apache_beam.testing import test_pipeline
from apache_beam.testing import util
import numpy as np
from PIL import Image
import pytest
import tensorflow as tf

from beam_pipelines import common
from beam_pipelines import export
from beam_pipelines import inspect_labels
from beam_pipelines import pseudo_label
from beam_pipelines import run_dir
from beam_pipelines import shards
from must import cli
from must import schema as schema_lib
from must import visualize
from must.tasks import classification
from must.tasks import depth
from must.tasks import detection
from must.tasks import segmentation
from tests.beam_pipelines import labeled_shards


@pytest.fixture(scope="module")
def corpus(fake_labeled, tmp_path_factory) -> str:
  """The labeled shards and their summary, plus a shard of two malformed records:
  garbage, and another schema version of a good example's image (same id)."""
  root = tmp_path_factory.mktemp("inspect_corpus")
  for path in glob.glob(os.path.join(fake_labeled, "*")):
    shutil.copy(path, root)
  good = tf.data.TFRecordDataset(glob.glob(str(root / "pseudo_labeled-*"))[:1]).take(1)
  other_version = tf.train.Example.FromString(next(iter(good)).numpy())
  other_version.features.feature[schema_lib.VERSION_KEY].int64_list.value[:] = [7]
  with tf.io.TFRecordWriter(str(root / "bad.tfrecord")) as writer:
    writer.write(other_version.SerializeToString())
    writer.write(b"\x00garbage")
  return str(root)


def _ids(corpus: str) -> list[str]:
  ids = []
  for path in glob.glob(os.path.join(corpus, "pseudo_labeled-*")):
    for record in tf.data.TFRecordDataset(path):
      feature = tf.train.Example.FromString(record.numpy()).features.feature
      ids.append(feature["image/source_id"].bytes_list.value[0].decode())
  return ids


def _run(corpus: str, output_dir: str, *flags: str) -> dict:
  return inspect_labels.run(["--runner=DirectRunner", f"--input_pattern={corpus}/*.tfrecord",
                             f"--metadata={corpus}/summary.json", f"--output_dir={output_dir}",
                             *flags])


def _png(path: str) -> np.ndarray:
  return np.asarray(Image.open(path).convert("RGB"))


@pytest.fixture(scope="module")
def sheets(corpus, tmp_path_factory) -> dict:
  """Reports of three runs: (seed 0, 4 images), (seed 0, 2 images), (seed 1, 4 images)."""
  runs = {}
  for seed, n in ((0, 4), (0, 2), (1, 4)):
    output_dir = str(tmp_path_factory.mktemp(f"inspect_{seed}_{n}"))
    runs[seed, n] = _run(corpus, output_dir, f"--seed={seed}", f"--num_images={n}")
  return runs


def test_sample_is_the_smallest_hashes_of_seed_and_id(corpus, sheets):
  ids = _ids(corpus)
  for (seed, n), report in sheets.items():
    expected = sorted(ids, key=lambda i: common.stable_hash(f"{seed}:{i}"))[:n]
    assert report["sampled_ids"] == expected
  assert sheets[0, 2]["sampled_ids"] == sheets[0, 4]["sampled_ids"][:2]
  assert sheets[0, 4]["sampled_ids"] != sheets[1, 4]["sampled_ids"]


def test_contact_sheet_has_a_row_of_panels_per_image(sheets):
  four = _png(os.path.join(sheets[0, 4]["config"]["output_dir"], "contact_sheet.png"))
  two = _png(os.path.join(sheets[0, 2]["config"]["output_dir"], "contact_sheet.png"))
  # Every row: a caption line, then image, boxes, mask and depth at 2x the 64-pixel images.
  row = (four.shape[0] - two.shape[0]) // 2
  assert row == 14 + 14 + 128 + 2 + 4
  assert four.shape[1] == two.shape[1] >= 4 * 128
  assert four.std() > 20  # pictures, not a blank sheet
  np.testing.assert_array_equal(four[16:two.shape[0]], two[16:])  # the same first rows


def test_report_counts_the_malformed_records(sheets):
  report = sheets[0, 4]
  assert report["counts"] == {"records_in": 26, "images": 24, "dead_letters": 2,
                              "matching": 24, "sampled": 4, "balanced": True}
  assert report["dead_letter_reasons"] == {"bad_example": 1, "schema_version": 1}


def test_statistics_equal_the_labeling_runs_and_are_plotted(corpus, sheets):
  with open(os.path.join(corpus, "summary.json")) as f:
    labeling = json.load(f)["tasks"]
  stats = sheets[0, 4]["tasks"]
  for task in ("classification", "detection", "segmentation"):
    for key in ("class_histogram", "score_histogram", "boxes_per_image_histogram",
                "ignored_pixels", "ignored_fraction_histogram", "pseudo"):
      assert stats[task].get(key) == labeling[task].get(key), (task, key)
  assert stats["detection"]["class_histogram"] == {"1": 24, "2": 24, "3": 24}
  plots = {title: dict(zip(labels, values)) for title, labels, values in
           visualize.label_stats_panels(stats, labeled_shards.CATEGORIES)}
  assert plots["detection: boxes per class"] == {"sphere": 24, "cube": 24, "cylinder": 24}
  assert plots["detection: boxes per image (3.0 mean)"] == {"3": 24}
  assert sum(plots["classification: images (top-1) per class"].values()) == 24
  assert plots["segmentation: ignored-pixel fraction per image (0.50 overall)"]["0.5"] == 24
  assert "detection: scores" in plots
  figure = _png(os.path.join(sheets[0, 4]["config"]["output_dir"], "label_stats.png"))
  assert figure.shape[0] > 300 and figure.shape[1] > 600 and figure.std() > 10


def _example(**labels) -> shards.LabeledExample:
  return shards.LabeledExample(
      id="1", path="s#1", source_path="", image=np.zeros([8, 8, 3], np.uint8), encoded=b"",
      image_format="png", labels=labels,
      provenance={t: schema_lib.Provenance.pseudo("t", "1") for t in labels})


def test_filters_by_class_and_score():
  probs = np.full([11], 0.03, np.float32)
  probs[4] = 0.7
  mask = np.zeros([8, 8], np.uint8)
  mask[:4] = 6
  example = _example(
      classification=classification.ClassificationLabel(probs),
      detection=detection.DetectionLabel(np.float32([[0, 0, 1, 1], [0, 0, .5, .5]]),
                                         np.int64([2, 3]), np.float32([0.9, 0.4])),
      segmentation=segmentation.SegmentationLabel(mask),
      depth=depth.DepthLabel(np.ones([8, 8], np.float32)))

  def passes(classes=None, min_score=0.0, max_score=1.0):
    return inspect_labels.matches(example, {"classes": classes, "min_score": min_score,
                                            "max_score": max_score},
                                  schema_lib.Schema(labeled_shards.TASK_PARAMS).tasks)

  assert passes()
  assert passes(classes=[4]) and passes(classes=[3]) and passes(classes=[6])
  assert not passes(classes=[1, 5])
  assert passes(min_score=0.35, max_score=0.45)  # the 0.4 box
  assert not passes(min_score=0.75, max_score=0.85)
  assert passes(classes=[2], min_score=0.8) and not passes(classes=[3], min_score=0.8)
  assert not passes(classes=[6], min_score=0.1)  # mask pixels have no score


def test_a_filtered_sheet_shows_only_matching_images(corpus, tmp_path):
  schema = schema_lib.Schema(labeled_shards.TASK_PARAMS)
  top = {}
  for path in glob.glob(os.path.join(corpus, "pseudo_labeled-*")):
    for record in tf.data.TFRecordDataset(path):
      decoded = schema.decode(record)
      top[decoded["source_id"].numpy().decode()] = int(np.argmax(
          decoded["classification"]["probs"]))
  # A top-1 class no box (1-3) or mask pixel (1) of the fake teachers has.
  cls = max((c for c in set(top.values()) if c >= 4), key=list(top.values()).count)
  wanted = sorted(i for i, c in top.items() if c == cls)
  options = pipeline_options.PipelineOptions([
      "--runner=DirectRunner", f"--input_pattern={corpus}/*.tfrecord",
      f"--output_dir={tmp_path}", f"--classes={labeled_shards.CATEGORIES[cls]}",
      "--num_images=50"])
  config = inspect_labels.run_config(options)
  with test_pipeline.TestPipeline(
      options=pipeline_options.PipelineOptions(["--runner=DirectRunner"])) as p:
    outputs = p | inspect_labels.Inspect(config)
    util.assert_that(outputs["sample"] | beam.Map(lambda s: sorted(e.id for _, e in s)),
                     util.equal_to([wanted]))
  with open(tmp_path / "inspect.json") as f:
    assert json.load(f)["counts"]["matching"] == len(wanted)
  empty = inspect_labels.draw_sheet([], {**config, "filters": {**config["filters"],
                                                               "min_score": 0.95}})
  assert empty.shape == (14 + 16, 400, 3)  # a line saying that nothing passes


def test_labels_panels_draw_every_task():
  image = np.full([16, 16, 3], 100, np.uint8)
  mask = np.zeros([16, 16], np.uint8)
  mask[:, :8] = 1
  values = np.linspace(1, 2, 256, dtype=np.float32).reshape(16, 16)
  values[0, 0] = np.nan
  probs = np.zeros([11], np.float32)
  probs[2] = 1.0
  panels = visualize.labels_panels(image, {
      "classification": classification.ClassificationLabel(probs),
      "detection": detection.DetectionLabel(np.float32([[0.25, 0.25, 0.75, 0.75]]),
                                            np.int64([1]), np.float32([0.8])),
      "segmentation": segmentation.SegmentationLabel(mask),
      "depth": depth.DepthLabel(values)}, schema_lib.Schema(labeled_shards.TASK_PARAMS).tasks,
      labeled_shards.CATEGORIES, scale=2)
  assert len(panels) == 4 and all(p.shape == (14 + 32, 32, 3) for p in panels)
  picture, boxes, masked, depth_map = (p[14:] for p in panels)
  assert (picture == 100).all()
  assert (boxes != picture).any(axis=-1).sum() > 20  # the box outline
  assert (masked[:, :16] != 100).any() and (masked[:, 16:] == 100).all()
  assert (depth_map[0:2, 0:2] == 0).all() and depth_map[2:].std() > 10  # NaN is black
  sheet = visualize.contact_sheet([("row one", panels), ("row two", panels[:2])], "title")
  assert sheet.shape[0] == 16 + 2 * (14 + 46 + 2 + 4)


def test_every_pipelines_flags_parse_together():
  # Beam parses the flags of every imported options class in one parser.
  assert {pseudo_label.PseudoLabelOptions, export.ExportOptions,
          inspect_labels.InspectOptions} <= set(pipeline_options.PipelineOptions.__subclasses__())
  flags = pipeline_options.PipelineOptions([
      "--top_k=4", "--teachers_config=t.yaml", "--holdout_fraction=0.5", "--num_images=3",
      "--metadata=m.json", "--input_pattern=p"]).get_all_options()
  assert (flags["top_k"], flags["teachers_config"], flags["holdout_fraction"],
          flags["num_images"], flags["metadata"], flags["input_pattern"]) == \
      (4, "t.yaml", 0.5, 3, "m.json", "p")


def test_bad_options_are_named(corpus, tmp_path):
  with pytest.raises(ValueError, match="min_score"):
    _run(corpus, str(tmp_path), "--min_score=0.8", "--max_score=0.5")
  with pytest.raises(ValueError, match="unknown class"):
    _run(corpus, str(tmp_path), "--classes=unicorn")


def test_a_second_run_into_a_locked_dir_refuses_at_once(corpus, tmp_path):
  with run_dir.RunDir(str(tmp_path)) as running:
    with pytest.raises(cli.UserError, match=f"locked by .*held by run {running.run_id}"):
      _run(corpus, str(tmp_path), "--overwrite")
  report = _run(corpus, str(tmp_path), "--num_images=2")
  assert sorted(report["files"]) == sorted([inspect_labels.CONTACT_SHEET_FILE,
                                            inspect_labels.DEAD_LETTERS_FILE,
                                            inspect_labels.LABEL_STATS_FILE])
  assert sorted(os.listdir(tmp_path)) == sorted([*report["files"], inspect_labels.REPORT_FILE])
