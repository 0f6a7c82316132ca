"""The stock-task teachers: train a few steps, export, reload, serve; bad inputs."""
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

import teachers
from teachers import export
from must import configs
from must import image_codec
from must import training
from official.core import exp_factory
from official.vision.serving import export_saved_model_lib

REPO = pathlib.Path(__file__).resolve().parents[2]
SIZE = 64  # the tiny world's images; divisible by 2**max_level of every teacher
STOCK = ["classification", "detection", "segmentation"]


def _params(task: str, world: str, train_steps: int = 2):
  """The teacher's tiny experiment on the tiny world, at its image size."""
  params = exp_factory.get_exp_config(configs.tiny(teachers.TEACHERS[task].EXPERIMENT))
  return configs.load(params, overrides=[
      ("world", configs.image_size_override(params, SIZE, SIZE)),
      ("test", {"task": {"train_data": {"input_path": f"{world}/labeled/{task}/train-*"},
                         "validation_data": {"input_path": f"{world}/eval/eval-*"}},
                "trainer": {"train_steps": train_steps, "steps_per_loop": 2,
                            "checkpoint_interval": 2, "validation_steps": 1,
                            "validation_interval": 2}})])


@pytest.fixture(scope="module", params=STOCK)
def exported(request, tiny_world, tmp_path_factory):
  """A teacher trained for two steps and exported: (task, model dir, export dir, world)."""
  task = request.param
  model_dir = str(tmp_path_factory.mktemp(task))
  training.run(_params(task, tiny_world), model_dir, "train")
  export_dir = os.path.join(model_dir, "export")
  metadata = export.export_teacher(model_dir, export_dir, world_dir=tiny_world, version="t1")
  return task, model_dir, export_dir, metadata


def _images(n=3, seed=0):
  """n encoded images of mixed sizes and aspect ratios."""
  rng = np.random.default_rng(seed)
  sizes = [(SIZE, SIZE), (SIZE // 2, SIZE * 2), (SIZE * 3 // 2, SIZE)]
  return tf.constant([image_codec.encode_png(rng.integers(0, 256, (*sizes[i % 3], 3), np.uint8))
                      for i in range(n)])


def _check_outputs(task: str, outputs: dict, n: int):
  if task == "classification":
    probs = outputs["probs"].numpy()
    assert probs.shape == (n, 11)
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-4)
  elif task == "detection":
    boxes, scores = outputs["boxes"].numpy(), outputs["scores"].numpy()
    assert boxes.shape[:1] == (n,) and boxes.shape[2] == 4 and scores.shape == boxes.shape[:2]
    assert boxes.min() >= 0 and boxes.max() <= 1
    assert (boxes[..., 2] >= boxes[..., 0]).all() and (boxes[..., 3] >= boxes[..., 1]).all()
    assert ((scores >= 0) & (scores <= 1)).all()
    assert outputs["classes"].dtype == tf.int32 and outputs["classes"].numpy().max() < 11
    assert outputs["num_detections"].shape == (n,)
  else:
    classes, confidence = outputs["classes"].numpy(), outputs["confidence"].numpy()
    assert classes.shape == confidence.shape == (n, SIZE, SIZE)
    assert classes.min() >= 0 and classes.max() < 11
    assert ((confidence >= 1 / 11 - 1e-4) & (confidence <= 1 + 1e-4)).all()


@pytest.mark.slow
def test_export_reload_and_serve(exported):
  task, model_dir, export_dir, metadata = exported
  assert os.path.exists(os.path.join(model_dir, "params.yaml"))
  assert metadata["task"] == task and metadata["version"] == "t1"
  assert metadata["input_size"] == [SIZE, SIZE] and metadata["class_names"][1] == "sphere"
  assert metadata["train_batch_size"] == 4 and metadata["train_learning_rate"] > 0
  loaded = tf.saved_model.load(export_dir)
  _check_outputs(task, loaded.signatures[export.SIGNATURE](encoded=_images()), 3)


@pytest.mark.slow
def test_model_garden_export_plugs_in_as_teacher(exported, tmp_path):
  task, model_dir, ours_dir, _ = exported
  params = export.load_params(model_dir)
  mg_dir, adapted_dir = str(tmp_path / "mg"), str(tmp_path / "adapted")
  export_saved_model_lib.export_inference_graph(
      input_type="image_tensor", batch_size=None, input_image_size=[SIZE, SIZE],
      params=params, checkpoint_path=tf.train.latest_checkpoint(model_dir), export_dir=mg_dir)
  metadata = export.adapt_model_garden_export(mg_dir, adapted_dir)
  assert metadata["task"] == task and metadata["version"] == "model_garden"
  images = _images(2, seed=1)
  adapted = tf.saved_model.load(adapted_dir).signatures[export.SIGNATURE](encoded=images)
  ours = tf.saved_model.load(ours_dir).signatures[export.SIGNATURE](encoded=images)
  _check_outputs(task, adapted, 2)
  for key in ours:
    np.testing.assert_allclose(adapted[key].numpy(), ours[key].numpy(), atol=1e-4, err_msg=key)


def test_missing_checkpoint_is_named(tmp_path, tiny_world):
  params = _params("classification", tiny_world)
  from official.core import train_utils  # pylint: disable=g-import-not-at-top
  train_utils.serialize_config(params, str(tmp_path))
  with pytest.raises(FileNotFoundError, match=f"no checkpoint in {tmp_path}"):
    export.export_teacher(str(tmp_path), str(tmp_path / "export"))
  with pytest.raises(FileNotFoundError, match="params.yaml does not exist"):
    export.export_teacher(str(tmp_path / "nowhere"), str(tmp_path / "export"))


def test_empty_or_missing_split_is_named(tmp_path):
  empty = tmp_path / "empty-00000-of-00001.tfrecord"
  tf.io.TFRecordWriter(str(empty)).close()
  with pytest.raises(ValueError, match="with no examples"):
    training.check_input(str(empty), "task.train_data.input_path")
  with pytest.raises(ValueError, match="matches no files"):
    training.check_input(str(tmp_path / "none-*"), "task.train_data.input_path")
  with pytest.raises(ValueError, match="is empty"):
    training.check_input("", "task.train_data.input_path")


@pytest.mark.slow
@pytest.mark.parametrize("args,message", [
    (["--experiment=must_detection_techer"], "unknown experiment 'must_detection_techer'"),
    (["--experiment=must_detection_teacher", "--params_override=task.modle.num_classes=3"],
     "modle"),
])
def test_binary_names_bad_experiment_and_key(args, message, tmp_path):
  result = subprocess.run(
      [sys.executable, "-m", "teachers.train", "--mode=train", f"--model_dir={tmp_path}", *args],
      capture_output=True, text=True, cwd=REPO, timeout=120)
  assert result.returncode != 0
  assert message in result.stderr


@pytest.mark.parametrize("path", sorted(
    str(p) for p in (REPO / "configs/teachers").glob("*.yaml")))
def test_shipped_teacher_configs_load_strictly(path):
  task = os.path.basename(path).removesuffix(".yaml").removesuffix("_full")
  configs.load(exp_factory.get_exp_config(teachers.TEACHERS[task].EXPERIMENT), path)


def test_each_teacher_registers_a_tiny_variant_the_binary_trains():
  for module in teachers.TEACHERS.values():
    tiny = exp_factory.get_exp_config(configs.tiny(module.EXPERIMENT))
    full = exp_factory.get_exp_config(module.EXPERIMENT)
    assert tiny.task.model.backbone.resnet.model_id == 10 < full.task.model.backbone.resnet.model_id
    assert tiny.task.model.backbone.resnet.depth_multiplier == 0.25
    assert tiny.task.train_data.global_batch_size == 4
    assert type(tiny.task) is type(full.task) and tiny.trainer == full.trainer
    assert configs.tiny(module.EXPERIMENT) in configs.with_tiny(teachers.experiments())


@pytest.mark.slow
def test_seeded_training_is_reproducible(tiny_world, tmp_path, checkpoint_values,
                                         run_concurrently):
  # The detection teacher: its input pipeline (parallel parsing with random
  # flips and scale jitter) is the one op determinism has to rewrite.
  override = json.dumps(_params("detection", tiny_world).as_dict())
  runs = {"first": 0, "again": 0, "other": 1}  # run at once: determinism holds under load
  results = run_concurrently(
      [[sys.executable, "-m", "teachers.train", "--experiment=must_detection_teacher",
        "--mode=train", f"--model_dir={tmp_path / name}", f"--params_override={override}",
        f"--seed={seed}"] for name, seed in runs.items()], cwd=REPO, timeout=300)
  for result in results:
    assert result.returncode == 0, result.stderr[-3000:]
  first, again, other = (checkpoint_values(tmp_path / name) for name in runs)
  assert first.keys() == again.keys() and len(first) > 100
  for name, value in first.items():
    np.testing.assert_array_equal(again[name], value, err_msg=name)
  assert any(not np.array_equal(other[name], value) for name, value in first.items())


@pytest.mark.slow
def test_restarted_training_resumes_from_its_checkpoint(tiny_world, tmp_path):
  params = _params("classification", tiny_world)
  training.run(params, str(tmp_path), "train")
  first = tf.train.latest_checkpoint(str(tmp_path))
  weights = {name: tf.train.load_variable(first, name)
             for name, _ in tf.train.list_variables(first) if "kernel" in name}
  training.run(params, str(tmp_path), "train")  # Same schedule: nothing left to do.
  assert tf.train.latest_checkpoint(str(tmp_path)) == first
  for name, value in weights.items():
    np.testing.assert_array_equal(tf.train.load_variable(first, name), value)
  training.run(_params("classification", tiny_world, train_steps=4), str(tmp_path),
               "train")  # Two more steps from step 2.
  assert tf.train.latest_checkpoint(str(tmp_path)).endswith("ckpt-4")
