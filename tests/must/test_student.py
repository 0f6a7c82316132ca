"""The multi-task student: heads and losses, training, distribution, export."""
import argparse
import json
import os
import pathlib
import re
import signal
import socket
import subprocess
import sys
import time

import numpy as np
from absl import app
import pytest
import tensorflow as tf

import must.student  # noqa: F401  (registers the student)
import tf_keras
from must import cli
from must import configs
from must import image_codec
from must import serving
from must import tasks
from must import training
from must.student import config as student_config
from must.student import export
from must.student import model as model_lib
from must.student import task as task_lib
from must.tasks import heads
from official.core import exp_factory
from official.core import train_utils
from official.modeling import optimization

REPO = pathlib.Path(__file__).parents[2]
SIZE = 64


DEFAULT_TASKS = [head.task for head in student_config.default_heads()]


def tiny_override(world_dir: str, **trainer) -> dict:
  """Inputs (the tiny world's eval split) and 2 steps for must_student_tiny."""
  data = {"input_path": os.path.join(world_dir, "eval", "*.tfrecord")}
  return {
      "task": {"model": {"input_size": [SIZE, SIZE, 3]},
               "train_data": data, "validation_data": {**data, "global_batch_size": 8}},
      "trainer": {"train_steps": 2, "steps_per_loop": 1, "checkpoint_interval": 1,
                  "validation_interval": 2, "validation_steps": 1, **trainer},
  }


def tiny_params(world_dir: str, **trainer):
  """must_student_tiny with `tiny_override`, unlocked (tests change it)."""
  return configs.load(exp_factory.get_exp_config(student_config.TINY_EXPERIMENT),
                      params_override=tiny_override(world_dir, **trainer)).replace()


def _head(name: str, **config):
  spec = heads.ModelSpec(input_size=[SIZE, SIZE], min_level=2, max_level=7,
                         norm_activation=configs.norm_activation())
  config = heads.HeadConfig(task=name, **config)
  params = {"num_classes": config.num_classes} if config.num_classes else {}
  return tasks.build(name, **params).student_head(config, spec)


# -- Heads and losses ----------------------------------------------------------


def _value(head, outputs, targets) -> float:
  total, normalizer = head.loss(outputs, targets)
  return float(total / tf.maximum(normalizer, 1.0))


def test_classification_loss_is_low_for_a_perfect_prediction_and_zero_when_absent():
  head = _head("classification", num_classes=4)
  probs = tf.constant([[0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]])
  targets = {"probs": probs, "present": tf.constant([True, True])}
  assert _value(head, 50.0 * probs, targets) < 1e-6
  assert _value(head, -50.0 * probs, targets) > 10
  absent = {**targets, "present": tf.constant([False, False])}
  assert head.loss(-50.0 * probs, absent)[0] == 0 and head.loss(-50.0 * probs, absent)[1] == 0


def test_segmentation_loss_ignores_ignored_pixels():
  head = _head("segmentation", num_classes=3)
  mask = np.full([1, 8, 8], 255, np.uint8)
  mask[0, :4] = 1
  logits = np.zeros([1, 8, 8, 3], np.float32)
  logits[0, :4, :, 1] = 30.0            # right where labeled
  logits[0, 4:, :, 2] = 30.0            # wildly "wrong" where ignored
  total, normalizer = head.loss(tf.constant(logits), {"mask": tf.constant(mask)})
  assert float(normalizer) == 32 and float(total) < 1e-6
  logits[0, :4, :, 1] = -30.0
  assert _value(head, tf.constant(logits), {"mask": tf.constant(mask)}) > 10


def test_depth_loss_is_scale_and_shift_invariant_and_zero_without_labels():
  head = _head("depth")
  rng = np.random.default_rng(0)
  target = rng.uniform(0.1, 1.0, (2, 16, 16)).astype(np.float32)
  valid = np.ones_like(target, bool)
  targets = {"inverse_depth": tf.constant(target), "valid": tf.constant(valid)}
  affine = (3.0 * target - 0.5)[..., None]
  assert _value(head, tf.constant(affine), targets) < 1e-6
  noise = rng.normal(size=affine.shape).astype(np.float32)
  assert _value(head, tf.constant(noise), targets) > 0.5
  empty = {**targets, "valid": tf.zeros_like(valid)}
  assert head.loss(tf.constant(noise), empty) == (0, 0)


def test_detection_loss_is_low_for_its_own_targets_and_zero_when_absent():
  head = _head("detection", num_classes=4)
  label = {"boxes": tf.constant([[0.1, 0.1, 0.6, 0.5]]), "classes": tf.constant([2]),
           "scores": tf.constant([1.0]), "present": tf.constant(True)}
  targets = head.targets(label, tf.constant(False), [SIZE, SIZE])
  batch = tf.nest.map_structure(lambda t: t[None], targets)
  assert float(tf.reduce_sum(batch["box_weights"])) > 0  # some anchors match
  perfect = {
      "cls_outputs": {k: 30.0 * tf.one_hot(v, 4, on_value=1.0, off_value=-1.0)[None]
                      for k, v in targets["cls_targets"].items()},
      "box_outputs": batch["box_targets"]}
  perfect["cls_outputs"] = {k: tf.reshape(v, [1, *v.shape[1:3], -1])
                            for k, v in perfect["cls_outputs"].items()}
  assert _value(head, perfect, batch) < 1e-3
  wrong = {"cls_outputs": tf.nest.map_structure(lambda t: -t, perfect["cls_outputs"]),
           "box_outputs": tf.nest.map_structure(lambda t: t + 1.0, perfect["box_outputs"])}
  assert _value(head, wrong, batch) > 1.0
  absent = head.targets({**label, "present": tf.constant(False)}, tf.constant(False),
                        [SIZE, SIZE])
  absent = tf.nest.map_structure(lambda t: t[None], absent)
  assert head.loss(wrong, absent) == (0, 0)


def test_flip_moves_boxes_masks_and_normals_with_the_image():
  box = {"boxes": tf.constant([[0.1, 0.1, 0.6, 0.3]]), "classes": tf.constant([2]),
         "scores": tf.constant([1.0]), "present": tf.constant(True)}
  flipped = _head("detection", num_classes=4).targets(box, tf.constant(True), [SIZE, SIZE])
  np.testing.assert_allclose(flipped["boxes"][0], [0.1, 0.7, 0.6, 0.9], atol=1e-6)
  mask = np.zeros([SIZE, SIZE], np.uint8)
  mask[:, :8] = 3
  seg = _head("segmentation", num_classes=4).targets(
      {"mask": tf.constant(mask), "present": tf.constant(True)}, tf.constant(True), [SIZE, SIZE])
  assert (seg["mask"].numpy()[:, -8:] == 3).all() and (seg["mask"].numpy()[:, :-8] == 0).all()
  normals = np.zeros([SIZE, SIZE, 3], np.float32)
  normals[..., 0] = 1.0  # pointing right
  out = _head("surface_normals").targets(
      {"normals": tf.constant(normals), "valid": tf.ones([SIZE, SIZE], bool),
       "present": tf.constant(True)}, tf.constant(True), [SIZE, SIZE])
  np.testing.assert_allclose(out["normals"].numpy()[..., 0], -1.0)


def test_loss_weights_follow_the_paper_rule_and_keep_overrides(tmp_path):
  for task, batch, lr in (("classification", 64, 0.004), ("detection", 16, 0.002)):
    (tmp_path / task).mkdir()
    (tmp_path / task / "teacher.json").write_text(json.dumps(
        {"format_version": serving.FORMAT_VERSION, "task": task, "train_batch_size": batch,
         "train_learning_rate": lr}))
  params = tiny_params(str(tmp_path))
  params.task.teachers = [str(tmp_path / "classification"), str(tmp_path / "detection")]
  next(head for head in params.task.model.heads
       if head.task == "segmentation").loss_weight = 0.3  # set by hand
  student_lr = configs.initial_learning_rate(params.trainer)
  weights = student_config.resolve_loss_weights(params)
  assert weights["classification"] == pytest.approx(4 * 0.004 / (64 * student_lr))
  assert weights["detection"] == pytest.approx(4 * 0.002 / (16 * student_lr))
  assert weights["segmentation"] == 0.3
  assert weights["depth"] == 1.0  # weighed on its own


@pytest.mark.parametrize("path", sorted(str(p) for p in (REPO / "configs/student").glob("*.yaml")))
def test_shipped_student_configs_load_strictly(path):
  params = configs.load(exp_factory.get_exp_config(student_config.EXPERIMENT), path)
  student_config.check_heads(params.task.model)


def _schedule(config_file=None, override=None):
  """(decay steps, warm-up steps, learning rate at the last step / at the peak)."""
  params = configs.load(exp_factory.get_exp_config(student_config.EXPERIMENT), config_file,
                        override)
  optimizer = params.trainer.optimizer_config
  rate = optimization.OptimizerFactory(optimizer).build_learning_rate()
  warmup = optimizer.warmup.linear.warmup_steps
  return (optimizer.learning_rate.cosine.decay_steps, warmup,
          float(rate(params.trainer.train_steps)) / float(rate(warmup)))


def test_the_schedule_follows_train_steps_unless_it_is_set(tmp_path):
  default = exp_factory.get_exp_config(student_config.EXPERIMENT).trainer
  assert default.train_steps == 2000 and default.optimizer_config.warmup.linear.warmup_steps == 100
  # Only the steps: the cosine reaches zero at the new last step, the warm-up keeps its share.
  decay, warmup, last = _schedule(override="trainer.train_steps=400")
  assert (decay, warmup) == (400, 20) and last == pytest.approx(0.0, abs=1e-6)
  # A decay or warm-up set in a file or an override is kept.
  explicit = tmp_path / "student.yaml"
  explicit.write_text("trainer:\n  train_steps: 400\n  optimizer_config:\n"
                      "    learning_rate: {cosine: {decay_steps: 2000}}\n")
  decay, warmup, last = _schedule(str(explicit))
  assert (decay, warmup) == (2000, 20) and last > 0.9
  decay, warmup, _ = _schedule(override={"trainer": {"train_steps": 400, "optimizer_config": {
      "warmup": {"linear": {"warmup_steps": 7}}}}})
  assert (decay, warmup) == (400, 7)
  assert _schedule()[:2] == (2000, 100)


def test_the_training_flags_load_through_one_loader_that_names_bad_keys():
  flags = argparse.Namespace(
      experiment=student_config.TINY_EXPERIMENT, params_override="trainer.train_steps=5",
      config_file=[str(REPO / "configs/student/student.yaml")], tpu="", tf_data_service="",
      seed=7)
  params = training.parse_params(flags, [student_config.EXPERIMENT])
  assert params.trainer.train_steps == 5 and params.task.train_data.seed == 7
  assert params.trainer.optimizer_config.learning_rate.cosine.decay_steps == 5
  for override, message in (
      ("trainer.train_stepz=5",
       "--params_override: unknown keys ['trainer.train_stepz']: 'train_stepz' does not exist"),
      ("trainer.train_steps=many",
       "--params_override: trainer.train_steps must be int, got 'many'")):
    with pytest.raises(app.UsageError, match=re.escape(message)):
      training.parse_params(argparse.Namespace(**{**vars(flags), "params_override": override}),
                            [student_config.EXPERIMENT])
  with pytest.raises(app.UsageError, match="unknown experiment"):
    training.parse_params(argparse.Namespace(**{**vars(flags), "experiment": "must_studnt"}),
                          [student_config.EXPERIMENT])


def test_training_refuses_a_model_dir_that_holds_another_model(tiny_world, tmp_path):
  params = tiny_params(tiny_world)
  train_utils.serialize_config(params, str(tmp_path))
  training.check_same_model(params, str(tmp_path))  # no checkpoint yet: nothing to restore
  tf.train.Checkpoint(step=tf.Variable(1)).save(str(tmp_path / "ckpt"))
  training.check_same_model(params, str(tmp_path))  # the same model resumes
  params.task.model.heads = params.task.model.heads[:-1]
  with pytest.raises(cli.UserError, match=r"holds a checkpoint of another model .*task\.model\.heads"):
    training.check_same_model(params, str(tmp_path))


def test_head_options_are_typed_by_their_task_and_checked_at_load(tiny_world):
  params = tiny_params(tiny_world)
  heads_config = [head.as_dict() for head in params.task.model.heads]
  detection = next(i for i, head in enumerate(heads_config) if head["task"] == "detection")
  other = next(i for i, head in enumerate(heads_config) if head["task"] != "detection")
  heads_config[detection]["options"] = {"max_boxes": 7, "anchor": {"num_scales": 2}}
  model = configs.load(student_config.StudentModel(), params_override={"heads": heads_config})
  built = student_config.build_heads(model)["detection"]
  assert built.options.max_boxes == 7 and built.num_anchors == 2 * 3
  assert built.options.min_score == 0.0  # the defaults fill in the rest
  assert "max_boxes" not in model.heads[other].as_dict()  # no union of every head's fields
  for index, options, message in (
      (detection, {"max_box": 7}, "unknown keys ['max_box']"),
      (detection, {"max_boxes": "many"}, "max_boxes must be int"),
      (other, {"max_boxes": 7}, "head takes no options")):
    bad = [dict(head) for head in heads_config]
    bad[index] = {**bad[index], "options": options}
    with pytest.raises(configs.ConfigError, match=re.escape(message)):
      configs.load(student_config.StudentModel(), params_override={"heads": bad},
                   resolve=student_config.check_heads)


def test_unknown_head_task_lists_the_registered_ones(tiny_world):
  params = tiny_params(tiny_world)
  params.task.model.heads[0].task = "clasification"
  with pytest.raises(KeyError, match="registered tasks"):
    student_config.build_heads(params.task.model)


def test_a_new_task_needs_no_model_change(tiny_world):
  # Surface normals is not a default head: adding it is a config line.
  params = tiny_params(tiny_world)
  params.task.model.heads = params.task.model.heads + [heads.HeadConfig(
      task="surface_normals", num_convs=1, num_filters=16)]
  model, _ = model_lib.build_model(params.task.model)
  outputs = model(tf.zeros([1, SIZE, SIZE, 3]), training=False)
  assert outputs["surface_normals"].shape == (1, SIZE // 4, SIZE // 4, 3)


# -- Training ------------------------------------------------------------------


def test_a_previous_rounds_student_sets_each_tasks_weight_by_its_own_learning_rate(tmp_path):
  """A multi-task teacher (round r's student) trained task i at lr * its loss weight w_i."""
  (tmp_path / "teacher.json").write_text(json.dumps(
      {"format_version": serving.FORMAT_VERSION, "train_batch_size": 8,
       "train_learning_rate": 0.01,
       "tasks": {"classification": {"loss_weight": 0.5}, "detection": {"loss_weight": 2.0},
                 "depth": {"loss_weight": 1.0}}}))
  params = tiny_params(str(tmp_path))
  params.task.teachers = [str(tmp_path)] * 3  # listed once per task, as in a teachers config
  student_lr = configs.initial_learning_rate(params.trainer)
  weights = student_config.resolve_loss_weights(params)
  assert weights["classification"] == pytest.approx(4 * 0.01 * 0.5 / (8 * student_lr))
  assert weights["detection"] == pytest.approx(4 * 0.01 * 2.0 / (8 * student_lr))
  assert weights["segmentation"] == 1.0 and weights["depth"] == 1.0  # no teacher; own rule


def _randaug(**randaug):
  from official.vision.configs import common  # pylint: disable=g-import-not-at-top
  return common.Augmentation(type="randaug", randaug=common.RandAugment(**randaug))


def test_noise_is_photometric_randaugment_of_the_image_alone_in_training(tiny_world):
  augmenter = task_lib.build_augmenter(_randaug(num_layers=2, magnitude=10,
                                                exclude_ops=["Invert"]))
  assert not set(augmenter.available_ops) & {*student_config.GEOMETRIC_OPS, "Invert"}
  assert "Contrast" in augmenter.available_ops
  assert task_lib.build_augmenter(None) is None
  with pytest.raises(ValueError, match="takes 'randaug'"):
    from official.vision.configs import common  # pylint: disable=g-import-not-at-top
    task_lib.build_augmenter(common.Augmentation(type="autoaug"))

  params = tiny_params(tiny_world)
  task = task_lib.StudentTask(params.task)
  plain = task_lib.Parser(task.heads, task.input_size)
  noisy = task_lib.Parser(task.heads, task.input_size, augmenter=augmenter)
  records = tf.data.TFRecordDataset(tf.io.gfile.glob(params.task.train_data.input_path))
  changed = 0
  tf.random.set_seed(0)
  for record in records.take(4):
    decoded = task.schema.decode(record)
    image, labels = plain.parse_fn(True)(decoded)
    noisy_image, noisy_labels = noisy.parse_fn(True)(decoded)
    tf.nest.map_structure(np.testing.assert_array_equal, labels, noisy_labels)
    changed += int(not np.allclose(image, noisy_image))
    np.testing.assert_array_equal(plain.parse_fn(False)(decoded)[0],
                                  noisy.parse_fn(False)(decoded)[0])  # eval: no noise
  assert changed >= 3, changed


def test_stochastic_depth_makes_training_passes_random_and_inference_exact(tiny_world):
  params = tiny_params(tiny_world)
  params.task.model.backbone.resnet.stochastic_depth_drop_rate = 0.5
  model = task_lib.StudentTask(params.task).build_model()
  images = tf.random.stateless_uniform([2, SIZE, SIZE, 3], [0, 1])
  depth = lambda training: model(images, training=training)["depth"].numpy()
  tf.random.set_seed(0)
  assert not np.allclose(depth(True), depth(True))  # blocks dropped at random
  np.testing.assert_array_equal(depth(False), depth(False))


def test_a_few_steps_lower_the_loss_on_partially_labeled_batches(tiny_world):
  params = tiny_params(tiny_world)
  task = task_lib.StudentTask(params.task)
  model = task.build_model()
  images, labels = next(iter(task.build_inputs(params.task.train_data)))
  labels["classification"]["present"] = tf.constant([True, False, True, False])
  optimizer = tf_keras.optimizers.Adam(3e-3)
  metrics = task.build_metrics()
  losses = [float(task.train_step((images, labels), model, optimizer, metrics)["loss"])
            for _ in range(8)]
  assert losses[-1] < 0.7 * losses[0]
  outputs = model(images, training=False)
  assert set(outputs) == set(DEFAULT_TASKS)
  half = task.task_losses(labels, outputs)["classification"]
  labels["classification"]["present"] = tf.constant([True, True, True, True])
  labels["classification"]["probs"] = tf.tensor_scatter_nd_update(
      labels["classification"]["probs"], [[1], [3]], tf.fill([2, 11], 1 / 11))
  assert task.task_losses(labels, outputs)["classification"] != half


def test_a_nan_loss_stops_with_the_task_named(tiny_world):
  params = tiny_params(tiny_world)
  task = task_lib.StudentTask(params.task)
  model = task.build_model()
  images, labels = next(iter(task.build_inputs(params.task.train_data)))
  labels["depth"]["inverse_depth"] = tf.fill(labels["depth"]["inverse_depth"].shape, np.nan)
  with pytest.raises(tf.errors.InvalidArgumentError, match="the depth loss is NaN or Inf"):
    task.train_step((images, labels), model, tf_keras.optimizers.Adam(1e-3), [])


MIRRORED_CHECK = """
import json, sys
import tensorflow as tf
tf.config.set_logical_device_configuration(
    tf.config.list_physical_devices("CPU")[0],
    [tf.config.LogicalDeviceConfiguration()] * 2)
sys.path.insert(0, sys.argv[1])
from tests.must import test_student as t
from must.student import task as task_lib
params = t.tiny_params(sys.argv[2])
task = task_lib.StudentTask(params.task)
tf.keras.utils.set_random_seed(0)
model = task.build_model()
batch = next(iter(task.build_inputs(params.task.validation_data)))  # 8 examples, no shuffle
one = float(task.build_losses(batch[1], model(batch[0], training=False)))
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
with strategy.scope():
  mirrored = task.build_model()
  mirrored.set_weights(model.get_weights())
dist = strategy.experimental_distribute_dataset(tf.data.Dataset.from_tensors(batch).unbatch().batch(8))
def step(inputs):
  return task.build_losses(inputs[1], mirrored(inputs[0], training=False))
per_replica = strategy.run(step, args=(next(iter(dist)),))
two = float(strategy.reduce("MEAN", per_replica, axis=None))
print(json.dumps({"one": one, "two": two, "replicas": strategy.num_replicas_in_sync}))
"""


@pytest.mark.slow
def test_mirrored_two_devices_give_the_one_device_loss(tiny_world):
  result = subprocess.run([sys.executable, "-c", MIRRORED_CHECK, str(REPO), tiny_world],
                          capture_output=True, text=True, cwd=REPO, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  losses = json.loads(result.stdout.strip().splitlines()[-1])
  assert losses["replicas"] == 2
  assert losses["two"] == pytest.approx(losses["one"], rel=1e-4)


def _train_command(model_dir, tiny_world, strategy: str = "", mode: str = "train", **trainer):
  params = tiny_params(tiny_world, **trainer)
  params.runtime.distribution_strategy = strategy or params.runtime.distribution_strategy
  override = params.as_dict()
  return [sys.executable, "-m", "must.train", f"--experiment={student_config.TINY_EXPERIMENT}",
          f"--mode={mode}",
          f"--model_dir={model_dir}", f"--params_override={json.dumps(override)}"]


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


@pytest.mark.slow
def test_seeded_runs_train_the_same_weights(tiny_world, tmp_path, checkpoint_values,
                                           run_concurrently):
  for result in run_concurrently(  # at once: determinism holds under load
      [_train_command(tmp_path / name, tiny_world) + ["--seed=3"] for name in ("first", "again")],
      cwd=REPO, timeout=300):
    assert result.returncode == 0, result.stderr[-3000:]
  first, again = checkpoint_values(tmp_path / "first"), checkpoint_values(tmp_path / "again")
  assert first.keys() == again.keys() and len(first) > 100
  for name, value in first.items():
    np.testing.assert_array_equal(again[name], value, err_msg=name)


@pytest.mark.slow
def test_multi_worker_mirrored_trains_two_local_workers(tiny_world, tmp_path):
  ports = [_free_port() for _ in range(2)]
  cluster = {"worker": [f"localhost:{port}" for port in ports]}
  command = _train_command(tmp_path / "model", tiny_world, strategy="multi_worker_mirrored")
  logs = [open(tmp_path / f"worker{i}.log", "w") for i in range(2)]
  workers = [subprocess.Popen(
      command, cwd=REPO, stdout=logs[i], stderr=subprocess.STDOUT,
      env={**os.environ, "TF_CONFIG": json.dumps(
          {"cluster": cluster, "task": {"type": "worker", "index": i}})})
      for i in range(2)]
  codes = [worker.wait(timeout=400) for worker in workers]
  for log in logs:
    log.close()
  outputs = [(tmp_path / f"worker{i}.log").read_text()[-3000:] for i in range(2)]
  assert codes == [0, 0], outputs
  assert tf.train.latest_checkpoint(str(tmp_path / "model")).endswith("ckpt-2")


@pytest.mark.slow
def test_killed_run_resumes_at_its_last_checkpoint(tiny_world, tmp_path):
  model_dir = tmp_path / "model"
  command = _train_command(model_dir, tiny_world, train_steps=400, checkpoint_interval=2)
  run = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  deadline = time.time() + 300
  while tf.train.latest_checkpoint(str(model_dir)) is None and time.time() < deadline:
    time.sleep(0.5)
  run.send_signal(signal.SIGKILL)
  run.wait()
  killed_at = tf.train.latest_checkpoint(str(model_dir))
  assert killed_at is not None, "no checkpoint before the kill"
  step = int(killed_at.rsplit("-", 1)[1])
  assert step < 400
  resumed = subprocess.run(_train_command(model_dir, tiny_world, train_steps=step + 2,
                                          checkpoint_interval=2),
                           cwd=REPO, capture_output=True, text=True, timeout=300)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert tf.train.latest_checkpoint(str(model_dir)).endswith(f"ckpt-{step + 2}")
  shown = resumed.stdout + resumed.stderr  # orbit's progress lines are printed (stdout)
  assert "restored" in shown.lower() and killed_at.rsplit("/", 1)[1] in shown


# -- Export ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def exported_student(tiny_world, tmp_path_factory):
  """A student trained for 2 steps and evaluated with the real binary, then exported."""
  root = tmp_path_factory.mktemp("student")
  result = subprocess.run(_train_command(root / "model", tiny_world, mode="train_and_eval"),
                          cwd=REPO, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  # Model Garden's eval loop scored every task with its registry metric.
  for metric in ("classification/top1", "detection/AP", "segmentation/miou", "depth/delta_1.25"):
    assert f"'{metric}'" in result.stderr + result.stdout, metric
  export.export_student(str(root / "model"), str(root / "export"), world_dir=tiny_world)
  return str(root / "export")


@pytest.mark.slow
def test_export_serves_every_task_with_the_teacher_signature(exported_student):
  rng = np.random.default_rng(0)
  images = [image_codec.encode_png(rng.integers(0, 255, size, np.uint8))
            for size in ((SIZE, SIZE, 3), (SIZE // 2, SIZE * 2, 3))]
  served = {model.task: model.predict(images) for model in serving.load_all(exported_student)}
  assert set(served) == set(DEFAULT_TASKS)
  probs = served["classification"]["probs"]
  assert probs.shape == (2, 11) and np.allclose(probs.sum(-1), 1, atol=1e-5)
  assert served["segmentation"]["classes"].shape == (2, SIZE, SIZE)
  assert served["segmentation"]["classes"].max() < 11
  assert served["depth"]["depth"].shape == (2, SIZE, SIZE)
  detections = served["detection"]
  assert detections["boxes"].shape[-1] == 4 and detections["num_detections"].shape == (2,)
  assert ((detections["boxes"] >= 0) & (detections["boxes"] <= 1)).all()
  with pytest.raises(ValueError, match="multi-task model serving"):
    serving.load(exported_student, "surface_normals")


@pytest.mark.slow
def test_exported_backbone_loads_into_a_fresh_backbone(exported_student, tiny_world):
  params = tiny_params(tiny_world)
  fresh, _ = model_lib.build_model(params.task.model)
  before = [w.numpy().copy() for w in fresh.backbone.weights]
  status = tf.train.Checkpoint(backbone=fresh.backbone).read(
      tf.train.latest_checkpoint(os.path.join(exported_student, export.BACKBONE_DIR)))
  status.assert_existing_objects_matched()
  after = [w.numpy() for w in fresh.backbone.weights]
  assert any(not np.array_equal(a, b) for a, b in zip(before, after))


@pytest.mark.slow
def test_export_from_a_checkpoint_without_the_student_fails_naming_it(exported_student, tmp_path):
  wrong = tf.train.latest_checkpoint(os.path.join(exported_student, export.BACKBONE_DIR))
  with pytest.raises(ValueError, match=f"checkpoint {wrong} does not hold the model"):
    export.export_student(os.path.join(os.path.dirname(exported_student), "model"),
                          str(tmp_path / "export"), checkpoint_path=wrong)
  assert not (tmp_path / "export").exists()  # nothing exported with random weights


@pytest.mark.slow
def test_exported_student_is_a_teacher_of_the_pipeline(exported_student, tiny_world, tmp_path):
  from beam_pipelines import pseudo_label  # pylint: disable=g-import-not-at-top
  teachers = {"teachers": [{"task": task, "path": exported_student, "batch_size": 4}
                           for task in DEFAULT_TASKS]}
  config_path = tmp_path / "teachers.yaml"
  config_path.write_text(json.dumps(teachers))
  summary = pseudo_label.run([
      "--runner=DirectRunner",
      f"--input_pattern={os.path.join(tiny_world, 'corpus', 'images', '*', '*')}",
      f"--teachers_config={config_path}", f"--output_dir={tmp_path / 'labeled'}"])
  images = len(tf.io.gfile.glob(os.path.join(tiny_world, "corpus", "images", "*", "*")))
  assert summary["counts"] == {"images_in": images, "examples_out": images, "dead_letters": 0,
                               "duplicates": 0, "balanced": True}
  assert set(summary["teachers"]) == set(DEFAULT_TASKS)
  assert all(name.startswith("must_student@") for name in summary["teachers"].values())
