"""trainer.gradient_accumulation_steps: k micro-batches make one big-batch step."""
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

import must.student  # noqa: F401  (registers the student)
import teachers
import tf_keras
from teachers import export as teacher_export
from must import configs
from must import serving
from must import training
from must.student import config as student_config
from official.core import base_task
from official.core import base_trainer
from official.core import config_definitions as cfg
from official.core import exp_factory
from official.core import train_utils

EXAMPLES, FEATURES, OUTPUTS = 16, 6, 3
SIZE = 64  # the tiny world's images
TWO_STEPS = {"train_steps": 2, "steps_per_loop": 2, "checkpoint_interval": 2,
             "validation_interval": 2, "validation_steps": 1}


def _tiny(experiment: str, world: str, task_data: dict, k: int):
  """`experiment`'s tiny variant at the tiny world's size, 2 steps of k micro-batches."""
  params = exp_factory.get_exp_config(configs.tiny(experiment))
  return configs.load(params, overrides=[
      ("world", configs.image_size_override(params, SIZE, SIZE)),
      ("test", {"task": task_data,
                "trainer": {**TWO_STEPS, "gradient_accumulation_steps": k}})]).replace()


def _student(world: str, k: int = 1):
  data = {"input_path": os.path.join(world, "eval", "*.tfrecord")}
  return _tiny(student_config.EXPERIMENT, world, {"train_data": data, "validation_data": data}, k)


class _DenseTask(base_task.Task):
  """Regression with a two-layer dense model: no batch norm, fixed example order."""

  def build_model(self):
    tf_keras.utils.set_random_seed(0)
    inputs = tf_keras.Input([FEATURES])
    hidden = tf_keras.layers.Dense(8, activation="tanh")(inputs)
    return tf_keras.Model(inputs, tf_keras.layers.Dense(OUTPUTS)(hidden))

  def build_inputs(self, params, input_context=None):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(EXAMPLES, FEATURES)).astype(np.float32)
    y = rng.normal(size=(EXAMPLES, OUTPUTS)).astype(np.float32)
    batch = (input_context.get_per_replica_batch_size(params.global_batch_size)
             if input_context else params.global_batch_size)
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(batch).repeat()

  def train_step(self, inputs, model, optimizer, metrics=None):
    x, y = inputs
    loss = training.train_step(model, optimizer, x,
                               lambda out: tf.reduce_mean(tf.square(out - y)))
    return {self.loss: loss}


def _weights_after(steps: int, batch: int, k: int,
                   strategy: tf.distribute.Strategy | None = None) -> list[np.ndarray]:
  """The dense model's weights after `steps` optimizer steps of k micro-batches."""
  params = cfg.ExperimentConfig(
      task=cfg.TaskConfig(train_data=cfg.DataConfig(global_batch_size=batch)),
      trainer=configs.TrainerConfig(gradient_accumulation_steps=k, optimizer_config={
          "optimizer": {"type": "sgd", "sgd": {"momentum": 0.9}},
          "learning_rate": {"type": "constant", "constant": {"learning_rate": 0.3}}}))
  with (strategy or tf.distribute.get_strategy()).scope():
    trainer = train_utils.create_trainer(
        params, _DenseTask(params.task), train=True, evaluate=False,
        trainer_cls=training.AccumulatingTrainer if k > 1 else base_trainer.Trainer)
  initial = [w.numpy() for w in trainer.model.weights]
  trainer.train(tf.constant(steps))
  assert int(trainer.global_step.numpy()) == steps
  assert int(trainer.optimizer.iterations.numpy()) == steps
  weights = [w.numpy() for w in trainer.model.weights]
  assert not any(np.allclose(a, b) for a, b in zip(initial, weights))
  return weights


def test_an_accumulated_step_equals_the_step_of_a_batch_k_times_larger():
  # Two optimizer steps: the second checks the sums are zeroed in between; SGD
  # with momentum is sensitive to the gradient's scale.
  big = _weights_after(steps=2, batch=8, k=1)
  accumulated = _weights_after(steps=2, batch=2, k=4)
  for a, b in zip(accumulated, big):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  # Not the same as steps on the micro-batch alone.
  micro = _weights_after(steps=2, batch=2, k=1)
  assert not all(np.allclose(a, b, atol=1e-4) for a, b in zip(micro, big))


MIRRORED_CHECK = """
import sys
sys.path.insert(0, sys.argv[1])
import numpy as np
import tensorflow as tf
from must import training
mirrored = training.cpu_strategy(2)
from tests.must import test_accumulation as t
big = t._weights_after(steps=2, batch=8, k=1, strategy=tf.distribute.OneDeviceStrategy("/cpu:0"))
accumulated = t._weights_after(steps=2, batch=2, k=4, strategy=mirrored)
print(max(float(np.abs(a - b).max()) for a, b in zip(accumulated, big)))
"""


@pytest.mark.slow
def test_two_cpu_replicas_accumulate_the_same_step():
  # Each replica sums its own gradients; the optimizer all-reduces them once.
  repo = pathlib.Path(__file__).parents[2]
  result = subprocess.run([sys.executable, "-c", MIRRORED_CHECK, str(repo)], cwd=repo,
                          capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert float(result.stdout.strip().splitlines()[-1]) < 1e-5


@pytest.mark.parametrize("value", ["0", "-2", "true"])
def test_accumulation_steps_below_one_stop_naming_the_key(value):
  with pytest.raises(configs.ConfigError,
                     match=r"--params_override: invalid config: "
                           r"trainer\.gradient_accumulation_steps must be an integer >= 1"):
    configs.load(exp_factory.get_exp_config(student_config.EXPERIMENT),
                 params_override=f"trainer.gradient_accumulation_steps={value}")
  with pytest.raises(configs.ConfigError, match="gradient_accumulation_steps must be int"):
    configs.load(exp_factory.get_exp_config(student_config.EXPERIMENT),
                 params_override="trainer.gradient_accumulation_steps=many")


def test_every_experiment_takes_the_option_and_reports_the_effective_batch():
  for name in (student_config.EXPERIMENT, *teachers.experiments()):
    params = configs.load(exp_factory.get_exp_config(name),
                          params_override="trainer.gradient_accumulation_steps=4")
    assert configs.effective_batch_size(params) == 4 * params.task.train_data.global_batch_size
    assert configs.accumulation_steps(exp_factory.get_exp_config(name)) == 1


def test_a_teacher_records_its_effective_batch(tmp_path):
  teacher = teachers.TEACHERS["classification"]
  params = configs.load(exp_factory.get_exp_config(teacher.EXPERIMENT),
                        params_override="trainer.gradient_accumulation_steps=4")
  metadata = teacher_export._write_metadata(  # pylint: disable=protected-access
      str(tmp_path), teacher, params, "v1", None, "test", "pad")
  assert metadata["train_batch_size"] == 4 * params.task.train_data.global_batch_size
  assert serving.TeacherMetadata.read(str(tmp_path)).train_batch_size == (
      4 * params.task.train_data.global_batch_size)


def test_the_loss_weight_rule_uses_the_effective_batch(tmp_path):
  (tmp_path / "classification").mkdir()
  (tmp_path / "classification" / "teacher.json").write_text(json.dumps(
      {"format_version": serving.FORMAT_VERSION, "task": "classification",
       "train_batch_size": 64, "train_learning_rate": 0.004}))
  weights = {}
  for k in (1, 3):
    params = _student(str(tmp_path), k)
    params.task.teachers = [str(tmp_path / "classification")]
    weights[k] = student_config.resolve_loss_weights(params)["classification"]
    student_lr = configs.initial_learning_rate(params.trainer)
  assert weights[3] == pytest.approx(3 * 4 * 0.004 / (64 * student_lr))
  assert weights[3] == pytest.approx(3 * weights[1])


def _check_trained(model_dir: str, steps: int) -> None:
  assert training.read_train_timing(model_dir)["steps"] == steps
  checkpoint = tf.train.latest_checkpoint(model_dir)
  assert int(tf.train.load_variable(checkpoint, "global_step/.ATTRIBUTES/VARIABLE_VALUE")) == steps
  iterations = [name for name, _ in tf.train.list_variables(checkpoint)
                if name.startswith("optimizer/iter")]
  assert iterations and int(tf.train.load_variable(checkpoint, iterations[0])) == steps
  saved = configs.read_yaml(os.path.join(model_dir, configs.PARAMS_FILE))
  assert saved["trainer"]["gradient_accumulation_steps"] == 2


@pytest.mark.slow
def test_the_student_and_a_teacher_train_with_accumulation(tiny_world, tmp_path):
  params = _student(tiny_world, k=2)
  student_config.resolve_loss_weights(params)
  training.run(params, str(tmp_path / "student"), "train")
  _check_trained(str(tmp_path / "student"), 2)
  task = "segmentation"
  teacher = _tiny(teachers.TEACHERS[task].EXPERIMENT, tiny_world, {
      "train_data": {"input_path": f"{tiny_world}/labeled/{task}/train-*"},
      "validation_data": {"input_path": f"{tiny_world}/eval/eval-*"}}, k=2)
  training.run(teacher, str(tmp_path / "teacher"), "train")
  _check_trained(str(tmp_path / "teacher"), 2)
