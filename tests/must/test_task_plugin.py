"""A task module registered from this test alone goes through the whole engine.

`EdgeMap` (per-pixel object boundaries) lives only here. Without a change to any
other file, the world labels it, the labeling pipeline pseudo-labels it with a
fake teacher, the student trains a head for it, the export writes it and the
inspection draws it: the proof that a task is one module.
"""
import dataclasses
import glob
import json
import os

import apache_beam as beam
import cv2
from apache_beam.options import pipeline_options
from apache_beam.testing import test_pipeline
import numpy as np
import pytest
import tensorflow as tf

from beam_pipelines import export
from beam_pipelines import inspect_labels
from beam_pipelines import pseudo_label
from must import configs
from must import image_codec
from must import schema as schema_lib
from must import serving
from must import tasks
from must import training
from must import visualize
from must.student import config as student_config
from must.tasks import base
from must.tasks import heads
from must.world import writer
from official.core import exp_factory

pytestmark = pytest.mark.slow

NAME = "edge_map"
ENCODED = "image/edge_map/encoded"
UNKNOWN = 255
TEACHER_SIZE = 32


@dataclasses.dataclass
class EdgeLabel:
  """edges: uint8 [H, W]; 1 on a boundary between two regions, 0 off it, 255 unknown."""
  edges: np.ndarray


def boundaries(mask: np.ndarray) -> np.ndarray:
  """1 where a pixel's right or lower neighbour has another id."""
  edges = np.zeros(mask.shape, np.uint8)
  edges[:, :-1] |= mask[:, :-1] != mask[:, 1:]
  edges[:-1] |= mask[:-1] != mask[1:]
  return edges


class EdgeMap(base.Task):
  """Object boundaries as a binary map; F1 of the edge pixels."""

  name = NAME
  primary_metric = "f1"
  student_loss_weight_rule = "fixed"
  served_outputs = {"edge_prob": 3}

  def features(self, label, image_size):
    base.check_dense_shape(self.name, label.edges, image_size)
    return {ENCODED: base.bytes_feature(image_codec.encode_png(label.edges.astype(np.uint8)))}

  def feature_spec(self):
    return {ENCODED: tf.io.FixedLenFeature((), tf.string, default_value="")}

  def decode(self, parsed, image_size, present):
    return {"edges": base.decode_png_or_fill(parsed[ENCODED], present, image_size, 1,
                                             tf.uint8, UNKNOWN)}

  def pseudo_label(self, outputs, image_size, min_probability: float = 0.5):
    prob = np.asarray(outputs["edge_prob"], np.float32)
    base.check_dense_shape(self.name, prob, image_size)
    return EdgeLabel((prob >= min_probability).astype(np.uint8))

  def metric(self):
    return EdgeF1()

  def student_head(self, config, model):
    return EdgeHead(config, model)

  def world_label(self, scene):
    return EdgeLabel(boundaries(scene.semantic))

  def from_decoded(self, decoded):
    return EdgeLabel(np.asarray(decoded["edges"], np.uint8))

  def files(self, image_id, label):
    return {f"{image_id}.png": image_codec.encode_png(label.edges)}

  def label_stats(self, label):
    return {"pixels": int(label.edges.size), "edge_pixels": int(np.sum(label.edges == 1))}

  def draw(self, label, image, names, scale):
    gray = np.where(label.edges == 1, 255, 0).astype(np.uint8)
    return [(visualize.upscale(np.repeat(gray[..., None], 3, axis=-1), scale), "edges")]


class EdgeF1(base.Metric):
  """F1 of predicted edge pixels (edge_prob >= 0.5) against known truth pixels."""

  def __init__(self):
    self.tp = self.fp = self.fn = 0

  def update(self, label, outputs):
    truth = np.asarray(label["edges"])
    predicted = np.asarray(outputs["edge_prob"]) >= 0.5
    known = truth != UNKNOWN
    self.tp += int(np.sum(predicted & (truth == 1) & known))
    self.fp += int(np.sum(predicted & (truth == 0) & known))
    self.fn += int(np.sum(~predicted & (truth == 1) & known))

  def result(self):
    return {"f1": 2 * self.tp / max(2 * self.tp + self.fp + self.fn, 1)}


class EdgeHead(heads.StudentHead):
  """One logit per pixel on the fused level-2 map; sigmoid cross-entropy."""

  def build(self):
    return heads.DenseHead(1, self.config, self.model, name="edge_map_head")

  def targets(self, label, flip, output_size):
    edges = heads.resize_dense(label["edges"][..., None], output_size)[..., 0]
    return {"edges": heads.flip_dense(edges, flip), "present": label["present"]}

  def loss(self, outputs, targets):
    edges = tf.cast(targets["edges"], tf.int32)
    logits = heads.upsample(outputs, tf.shape(edges)[1:3])[..., 0]
    known = tf.cast(edges != UNKNOWN, tf.float32)
    per_pixel = tf.nn.sigmoid_cross_entropy_with_logits(
        labels=tf.cast(edges == 1, tf.float32), logits=logits)
    return tf.reduce_sum(per_pixel * known), tf.reduce_sum(known)

  def serve(self, outputs, image_size):
    return {"edge_prob": tf.sigmoid(heads.upsample(outputs, image_size)[..., 0])}


class FakeEdgeTeacher:
  """Edges where the image's gray level jumps."""

  task = NAME
  input_size = (TEACHER_SIZE, TEACHER_SIZE)

  def predict(self, encoded):
    images = np.stack([cv2.resize(tf.io.decode_image(data, channels=3).numpy(), self.input_size,
                                  interpolation=cv2.INTER_AREA) for data in encoded])
    gray = images.astype(np.float32).mean(axis=-1)
    jump = np.zeros(gray.shape, np.float32)
    jump[:, :, :-1] = np.abs(gray[:, :, 1:] - gray[:, :, :-1])
    jump[:, :-1] = np.maximum(jump[:, :-1], np.abs(gray[:, 1:] - gray[:, :-1]))
    return {"edge_prob": np.clip(jump / 30.0, 0, 1)}


@pytest.fixture(scope="module")
def edge_task():
  tasks.register(EdgeMap)
  yield EdgeMap
  tasks.unregister(NAME)


@pytest.fixture(scope="module")
def world(edge_task, tmp_path_factory):
  del edge_task
  output_dir = str(tmp_path_factory.mktemp("edge_world"))
  sizes = {name: 0 for name in writer.SplitSizes().as_dict()}
  config = configs.load(writer.WorldConfig(), params_override={
      "render": {"height": 64, "width": 64}, "num_workers": 0, "preview_scenes": 1,
      "examples_per_shard": 16, "corpus_files_per_folder": 16,
      "sizes": {**sizes, "corpus": 16, "eval": 8}})
  writer.write_world(config, output_dir, progress=lambda line: None)
  return output_dir


def test_the_world_labels_a_task_registered_at_run_time(world):
  metadata = writer.load_metadata(world)
  assert metadata["task_params"][NAME] == {}
  assert NAME in metadata["splits"]["eval"]["tasks"]
  schema = schema_lib.Schema(metadata["task_params"])
  for record in tf.data.TFRecordDataset(glob.glob(metadata["splits"]["eval"]["pattern"])):
    decoded = schema.decode(record)
    edges = decoded[NAME]["edges"].numpy()
    np.testing.assert_array_equal(
        edges, boundaries(decoded["segmentation"]["mask"].numpy()))
    assert decoded[NAME]["present"] and 0 < edges.sum() < edges.size


@pytest.fixture(scope="module")
def pseudo_labeled(world, tmp_path_factory):
  root = tmp_path_factory.mktemp("edge_labels")
  teacher_dir = root / "teacher"
  teacher_dir.mkdir()
  (teacher_dir / "teacher.json").write_text(json.dumps({
      "format_version": serving.FORMAT_VERSION,
      "task": NAME, "experiment": "fake_edges", "version": "v1",
      "input_size": [TEACHER_SIZE, TEACHER_SIZE], "num_classes": None}))
  config = pseudo_label.resolve_config(
      {"teachers": [{"task": NAME, "path": str(teacher_dir), "batch_size": 4}]})
  config["options"] = {"input_pattern": f"{world}/corpus/images/*/*",
                       "input_format": pseudo_label.IMAGES, "output_dir": str(root / "out"),
                       "num_shards": 1, "max_pixels": 1_000_000,
                       "inference_mode": pseudo_label.FUSED}
  with test_pipeline.TestPipeline(options=pipeline_options.PipelineOptions(
      ["--runner=DirectRunner"])) as p:
    _ = p | pseudo_label.PseudoLabel(config, loader=lambda path, task=None: FakeEdgeTeacher())
  return str(root / "out")


def test_the_pipeline_pseudo_labels_it_and_counts_its_statistics(pseudo_labeled):
  with open(os.path.join(pseudo_labeled, "summary.json")) as f:
    summary = json.load(f)
  assert summary["counts"]["examples_out"] == 16 and summary["counts"]["balanced"]
  assert summary["tasks"][NAME]["pseudo"] == 16
  assert 0 < summary["tasks"][NAME]["edge_pixels"] < summary["tasks"][NAME]["pixels"]


def test_the_student_trains_a_head_for_it(world, pseudo_labeled, tmp_path):
  data = {"global_batch_size": 4, "shuffle_buffer_size": 8}
  params = configs.load(exp_factory.get_exp_config(student_config.TINY_EXPERIMENT), params_override={
      "task": {"model": {"input_size": [64, 64, 3], "heads": [{"task": NAME}]},
               "train_data": {**data, "input_path": f"{pseudo_labeled}/*.tfrecord"},
               "validation_data": {**data, "input_path": f"{world}/eval/*.tfrecord"}},
      "trainer": {"train_steps": 4, "steps_per_loop": 2, "checkpoint_interval": 4,
                  "validation_interval": 4, "validation_steps": -1}})
  _, logs = training.run(params, str(tmp_path), mode="train_and_post_eval", seed=0)
  assert 0.0 < logs[f"{NAME}/f1"] <= 1.0
  assert np.isfinite(logs["training_loss" if "training_loss" in logs else "validation_loss"])


def test_the_export_writes_it_and_the_inspection_draws_it(pseudo_labeled, tmp_path):
  summary = export.run(["--runner=DirectRunner", f"--input_pattern={pseudo_labeled}/*.tfrecord",
                        f"--output_dir={tmp_path / 'export'}", "--formats=tfrecords,files"])
  assert summary["tasks"][NAME]["selected"] == summary["tasks"][NAME]["train_records"] == 16
  files = glob.glob(str(tmp_path / "export" / "files" / NAME / "*.png"))
  assert len(files) == 16
  edges = image_codec.decode_png(open(files[0], "rb").read())
  assert set(np.unique(edges)) <= {0, 1}
  report = inspect_labels.run(["--runner=DirectRunner",
                               f"--input_pattern={pseudo_labeled}/*.tfrecord",
                               f"--output_dir={tmp_path / 'inspect'}", "--num_images=2"])
  assert report["tasks"][NAME]["edge_pixels"] > 0
  sheet = np.asarray(visualize.Image.open(tmp_path / "inspect" / inspect_labels.CONTACT_SHEET_FILE))
  assert sheet.shape[1] >= 2 * 64  # the image panel and the edge panel side by side
