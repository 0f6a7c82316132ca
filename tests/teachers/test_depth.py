"""The depth teacher: alignment, loss, metrics, input, training, export hook."""
import glob
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
import tf_keras
import yaml

from must import schema as schema_lib
from must.tasks import depth as depth_task
from must.tasks import heads
from must.tasks.depth import DepthLabel
from official.core import exp_factory
from official.core import task_factory
from official.core import train_lib
from official.core import train_utils
from official.modeling import hyperparams
from teachers import depth
from teachers import export

ROOT = pathlib.Path(__file__).parents[2]


@pytest.fixture(scope="module")
def world(tiny_world):
  """The session's tiny world (configs/world/tiny.yaml), written once for every test file."""
  return tiny_world


def _tiny_config(world_dir: str, size: int = 32) -> hyperparams.Config:
  config = exp_factory.get_exp_config(depth.EXPERIMENT)
  config.override({
      "task": {
          "model": {"input_size": [size, size, 3],
                    "backbone": {"resnet": {"depth_multiplier": 0.25}},
                    "decoder": {"fpn": {"num_filters": 32}},
                    "head": {"num_filters": 32, "num_convs": 1}},
          "train_data": {"input_path": os.path.join(world_dir, "labeled/depth/train-*.tfrecord"),
                         "global_batch_size": 4, "output_size": [size, size],
                         "shuffle_buffer_size": 8},
          "validation_data": {"input_path": os.path.join(world_dir, "eval/eval-*.tfrecord"),
                              "global_batch_size": 4, "output_size": [size, size]},
      },
      "trainer": {"train_steps": 3, "steps_per_loop": 3, "summary_interval": 3,
                  "checkpoint_interval": 3, "validation_interval": 3, "validation_steps": 1,
                  "optimizer_config": {"warmup": {"linear": {"warmup_steps": 1}},
                                       "learning_rate": {"cosine": {"decay_steps": 3}}}},
  }, is_strict=True)
  config.validate()
  return config


def _numpy_align(pred, target, valid):
  a = np.stack([pred[valid], np.ones(valid.sum())], axis=1)
  (scale, shift), *_ = np.linalg.lstsq(a, target[valid], rcond=None)
  return scale * pred + shift


# -- Alignment and metric -------------------------------------------------------


def test_align_recovers_an_affine_prediction_and_ignores_invalid_pixels():
  rng = np.random.default_rng(0)
  target = rng.uniform(0.05, 1.0, (2, 12, 10)).astype(np.float32)
  valid = rng.random((2, 12, 10)) < 0.7
  # Per image: pred = a * target + b on valid pixels, garbage elsewhere.
  a, b = np.array([2.5, -0.4]), np.array([0.3, 7.0])
  pred = (a[:, None, None] * target + b[:, None, None]).astype(np.float32)
  pred[~valid] = rng.normal(0, 100, (~valid).sum())
  target_with_holes = np.where(valid, target, np.nan).astype(np.float32)
  aligned, scale, shift = depth_task.align_scale_shift_batch(pred, target_with_holes, valid)
  np.testing.assert_allclose(scale, 1 / a, rtol=1e-4)
  np.testing.assert_allclose(shift, -b / a, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(aligned.numpy()[valid], target[valid], atol=1e-4)


def test_align_matches_numpy_least_squares():
  rng = np.random.default_rng(1)
  pred = rng.normal(size=(3, 9, 9)).astype(np.float32)
  target = rng.normal(size=(3, 9, 9)).astype(np.float32)
  valid = rng.random((3, 9, 9)) < 0.5
  aligned, _, _ = depth_task.align_scale_shift_batch(pred, target, valid)
  for i in range(3):
    np.testing.assert_allclose(aligned[i].numpy()[valid[i]],
                               _numpy_align(pred[i], target[i], valid[i])[valid[i]],
                               rtol=1e-4, atol=1e-5)


def test_align_of_constant_or_empty_images_is_finite():
  pred = np.ones((2, 4, 4), np.float32)
  target = np.arange(32, dtype=np.float32).reshape(2, 4, 4)
  valid = np.stack([np.ones((4, 4), bool), np.zeros((4, 4), bool)])
  aligned, scale, shift = depth_task.align_scale_shift_batch(pred, target, valid)
  np.testing.assert_allclose(scale, [0, 0])
  np.testing.assert_allclose(shift, [target[0].mean(), 0])
  assert np.isfinite(aligned.numpy()).all()


def _depth_metric(pred_inverse, depth_gt, valid) -> dict:
  metric = depth_task.Depth().metric()
  for pred, truth, ok in zip(pred_inverse, depth_gt, valid):
    metric.update({"depth": truth, "valid": ok, "kind": b"metric"}, {"depth": pred})
  return metric.result()


def test_metric_of_a_prediction_correct_up_to_scale_and_shift():
  rng = np.random.default_rng(2)
  depth_gt = rng.uniform(1.0, 30.0, (2, 16, 16)).astype(np.float32)
  valid = rng.random((2, 16, 16)) < 0.8
  metrics = _depth_metric(3.0 / depth_gt + 0.5, depth_gt, valid)
  assert metrics["abs_rel"] < 1e-4
  assert metrics["delta_1.25"] == 1.0


def test_metric_matches_a_numpy_reference_for_a_wrong_prediction():
  rng = np.random.default_rng(3)
  depth_gt = rng.uniform(1.0, 10.0, (2, 8, 8)).astype(np.float32)
  valid = np.ones((2, 8, 8), bool)
  valid[1, :3] = False
  depth_gt[1, :3] = np.nan  # pixels outside `valid` never count
  pred_inverse = (1.0 / depth_gt + rng.normal(0, 0.3, depth_gt.shape)).astype(np.float32)
  metrics = _depth_metric(pred_inverse, depth_gt, valid)
  abs_rel, delta = [], []
  for i in range(2):
    gt = depth_gt[i][valid[i]]
    # Aligned predictions are capped at 10x the image's farthest depth.
    aligned = np.maximum(_numpy_align(pred_inverse[i], 1 / depth_gt[i], valid[i])[valid[i]],
                         0.1 / gt.max())
    d = 1 / aligned
    abs_rel.append(np.abs(d - gt) / gt)
    delta.append(np.maximum(d / gt, gt / d) < 1.25)
  abs_rel, delta = np.concatenate(abs_rel), np.concatenate(delta)
  assert 0.05 < abs_rel.mean() and delta.mean() < 0.95  # really wrong
  np.testing.assert_allclose(metrics["abs_rel"], abs_rel.mean(), rtol=1e-3)
  np.testing.assert_allclose(metrics["delta_1.25"], delta.mean(), atol=1.5 / delta.size)


# -- Loss -----------------------------------------------------------------------


def test_loss_is_zero_for_a_scaled_and_shifted_target_and_positive_otherwise():
  rng = np.random.default_rng(4)
  target = rng.uniform(0.05, 0.5, (2, 16, 16)).astype(np.float32)
  valid = rng.random((2, 16, 16)) < 0.9
  aligned_pred = -7.0 * target + 3.0
  assert depth_task.scale_shift_invariant_loss(aligned_pred, target, valid) < 1e-6
  noisy = aligned_pred + rng.normal(0, 0.5, target.shape).astype(np.float32)
  assert depth_task.scale_shift_invariant_loss(noisy, target, valid) > 0.01
  with_gradients = depth_task.scale_shift_invariant_loss(noisy, target, valid,
                                                    gradient_matching_weight=0.5)
  assert with_gradients > depth_task.scale_shift_invariant_loss(noisy, target, valid)


def test_images_without_valid_pixels_contribute_zero_loss_and_finite_gradients():
  rng = np.random.default_rng(5)
  pred = tf.Variable(rng.normal(size=(2, 8, 8)).astype(np.float32))
  target = rng.uniform(0.1, 1.0, (2, 8, 8)).astype(np.float32)
  valid = np.stack([np.ones((8, 8), bool), np.zeros((8, 8), bool)])
  with tf.GradientTape() as tape:
    both = depth_task.scale_shift_invariant_loss(pred, target, valid)
  first_only = depth_task.scale_shift_invariant_loss(pred[:1], target[:1], valid[:1])
  none = depth_task.scale_shift_invariant_loss(pred[1:], target[1:], valid[1:])
  assert first_only > 0
  assert none == 0
  np.testing.assert_allclose(both, first_only / 2, rtol=1e-5)
  gradient = tape.gradient(both, pred).numpy()
  assert np.isfinite(gradient).all() and not gradient[1].any() and gradient[0].any()


# -- Input ----------------------------------------------------------------------


def test_input_pipeline_reads_the_world_with_inverse_depth_targets(world):
  config = _tiny_config(world, size=64)  # the tiny world's own size: no resizing
  shard = sorted(glob.glob(os.path.join(world, "eval/eval-*.tfrecord")))[0]
  config.task.validation_data.input_path = shard
  task = task_factory.get_task(config.task)
  images, labels = next(iter(task.build_inputs(config.task.validation_data)))
  assert images.shape == (4, 64, 64, 3) and images.dtype == tf.float32
  assert labels["target"].shape == (4, 64, 64) and labels["target"].dtype == tf.float32
  assert labels["valid"].dtype == tf.bool

  first = next(iter(tf.data.TFRecordDataset(shard)))
  decoded = schema_lib.Schema({"depth": {}}).decode(first)
  metric_depth = decoded["depth"]["depth"].numpy()
  ok = decoded["depth"]["valid"].numpy()
  np.testing.assert_array_equal(labels["valid"][0].numpy(), ok)
  np.testing.assert_allclose(labels["target"][0].numpy()[ok], 1.0 / metric_depth[ok], rtol=1e-6)
  np.testing.assert_allclose(images[0], heads.normalize_images(decoded["image"]), atol=1e-6)
  assert abs(float(tf.reduce_mean(images))) < 2.0  # normalized, not 0..255


def test_training_input_is_resized_and_flipped_consistently(world):
  config = _tiny_config(world, size=32)
  task = task_factory.get_task(config.task)
  images, labels = next(iter(task.build_inputs(config.task.train_data)))
  assert images.shape == (4, 32, 32, 3) and labels["target"].shape == (4, 32, 32)
  valid = labels["valid"].numpy()
  assert valid.any() and (labels["target"].numpy()[valid] > 0).all()

  shard = sorted(glob.glob(config.task.train_data.input_path))[0]
  record = next(iter(tf.data.TFRecordDataset(shard)))
  decoded = schema_lib.Schema({"depth": {}}).decode(record)
  parser = depth.Parser([32, 32], aug_rand_hflip=True)
  reference_image, reference = parser._parse_eval_data(decoded)  # pylint: disable=protected-access
  flips = set()
  tf.random.set_seed(0)
  for _ in range(16):
    image, label = parser._parse_train_data(decoded)  # pylint: disable=protected-access
    flipped = not np.allclose(label["target"], reference["target"])
    expected = reference["target"].numpy()[:, ::-1] if flipped else reference["target"].numpy()
    expected_image = reference_image.numpy()[:, ::-1] if flipped else reference_image.numpy()
    np.testing.assert_allclose(label["target"], expected)
    np.testing.assert_allclose(image, expected_image)
    flips.add(flipped)
  assert flips == {True, False}


def test_relative_inverse_pseudo_labels_are_used_as_they_are():
  values = np.linspace(0.0, 2.0, 64, dtype=np.float32).reshape(8, 8)
  values[0, 0] = np.nan
  schema = schema_lib.Schema({"depth": {}})
  example = schema.encode(np.zeros((8, 8, 3), np.uint8),
                          {"depth": DepthLabel(values, kind="relative_inverse")},
                          image_format="png")
  decoded = schema.decode(example.SerializeToString())
  _, labels = depth.Parser([8, 8])._parse_eval_data(decoded)  # pylint: disable=protected-access
  assert not labels["valid"][0, 0] and labels["valid"].numpy().sum() == 63
  np.testing.assert_allclose(labels["target"].numpy()[1:], values[1:], atol=2.0 / 65534)


# -- Task, experiment, export hook ----------------------------------------------


def test_a_few_training_steps_checkpoint_evaluate_and_serve(world, tmp_path):
  config = _tiny_config(world, size=32)
  task = task_factory.get_task(config.task, logging_dir=str(tmp_path))
  assert isinstance(task, depth.DepthTask)
  model, logs = train_lib.run_experiment(
      distribution_strategy=tf.distribute.get_strategy(), task=task, mode="train_and_eval",
      params=config, model_dir=str(tmp_path), run_post_eval=True)
  assert tf.train.latest_checkpoint(str(tmp_path)).endswith("ckpt-3")
  assert np.isfinite(logs["validation_loss"])
  assert np.isfinite(logs["abs_rel"]) and logs["abs_rel"] >= 0
  assert 0 <= logs["delta_1.25"] <= 1

  images = tf.constant(np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3)), tf.uint8)
  outputs = depth.serve(model, images, config)
  assert set(outputs) == {"depth"}
  assert outputs["depth"].shape == (2, 32, 32) and outputs["depth"].dtype == tf.float32
  expected = depth.outputs_to_inverse_depth(
      model(heads.normalize_images(images), training=False), [32, 32])
  np.testing.assert_allclose(outputs["depth"], expected, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_in_training_delta_equals_teachers_evaluate_on_the_same_checkpoint(world, tmp_path):
  # At the world's size: teachers.evaluate feeds the stored images to the export.
  config = _tiny_config(world, size=64)
  config.override({"task": {"validation_data": {"drop_remainder": False}},
                   "trainer": {"validation_steps": -1}})
  model_dir = str(tmp_path / "model")
  train_utils.serialize_config(config, model_dir)
  _, logs = train_lib.run_experiment(
      distribution_strategy=tf.distribute.get_strategy(), mode="train_and_eval",
      task=task_factory.get_task(config.task, logging_dir=model_dir), params=config,
      model_dir=model_dir, run_post_eval=True)
  export_dir = str(tmp_path / "export")
  export.export_teacher(model_dir, export_dir)
  subprocess.run([sys.executable, "-m", "teachers.evaluate", f"--world_dir={world}",
                  f"--teacher_dirs={export_dir}"], cwd=ROOT, check=True, timeout=300,
                 capture_output=True)
  with open(os.path.join(export_dir, "eval_metrics.json")) as f:
    offline = json.load(f)["metrics"]["depth"]
  assert 0 < offline["delta_1.25"] < 1  # a score the old capping would have changed
  assert logs["delta_1.25"] == pytest.approx(offline["delta_1.25"], abs=1e-6)
  assert logs["abs_rel"] == pytest.approx(offline["abs_rel"], rel=1e-5)


def test_experiment_is_registered_and_sized_for_the_world():
  config = exp_factory.get_exp_config("must_depth_teacher")
  assert isinstance(config.task, depth.DepthTaskConfig)
  assert depth.TASK == "depth" and depth.EXPERIMENT == "must_depth_teacher"
  model = config.task.model
  assert model.backbone.type == "resnet" and model.backbone.resnet.model_id == 18
  assert model.decoder.type == "fpn"
  assert model.input_size[0] % 2**model.max_level == 0
  assert config.task.train_data.output_size == model.input_size[:2]
  assert not config.task.train_data.input_path
  config.validate()


@pytest.mark.parametrize("name", ["depth.yaml", "depth_full.yaml"])
def test_yaml_configs_override_the_experiment_strictly(name):
  config = exp_factory.get_exp_config(depth.EXPERIMENT)
  with open(ROOT / "configs/teachers" / name) as f:
    config = hyperparams.override_params_dict(config, yaml.safe_load(f), is_strict=True)
  config.validate()
  model = config.task.model
  assert model.input_size[0] % 2**model.max_level == 0
  assert config.task.train_data.input_path and config.task.validation_data.input_path
  if name == "depth_full.yaml":
    assert model.backbone.resnet.model_id == 50 and model.input_size[:2] == [384, 384]


def test_input_size_must_divide_by_the_coarsest_level():
  config = exp_factory.get_exp_config(depth.EXPERIMENT)
  config.task.model.input_size = [72, 72, 3]
  with pytest.raises(ValueError, match="divisible"):
    task_factory.get_task(config.task).build_model()


def test_panoptic_fusion_head_predicts_one_channel_at_its_level():
  config = exp_factory.get_exp_config(depth.EXPERIMENT).task.model
  config.override({"input_size": [64, 64, 3], "backbone": {"resnet": {"depth_multiplier": 0.25}},
                   "decoder": {"fpn": {"num_filters": 32}},
                   "head": {"feature_fusion": "panoptic_fpn_fusion", "num_filters": 32}})
  model = depth.build_depth_model(tf_keras.layers.InputSpec(shape=[None, 64, 64, 3]), config)
  outputs = model(tf.zeros([2, 64, 64, 3]), training=False)
  assert outputs["logits"].shape == (2, 16, 16, 1)
  assert depth.outputs_to_inverse_depth(outputs, [64, 64]).shape == (2, 64, 64)
  config.head.level = 6
  with pytest.raises(ValueError, match="head.level"):
    depth.build_depth_model(tf_keras.layers.InputSpec(shape=[None, 64, 64, 3]), config)
