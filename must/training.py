"""What the training binaries share: config parsing and Model Garden's driver.

`teachers/train.py` and `must/train.py` are thin absl binaries over these: they
parse Model Garden's flags (`--experiment`, `--config_file`,
`--params_override`, `--mode`, `--model_dir`, `--tpu`, plus `--seed`), save
the final config as `params.yaml`, build the strategy from the runtime config
and hand over to `train_lib.run_experiment`, which restores the latest
checkpoint in the model dir, so a restarted run resumes.
`--mode=train_and_post_eval` (train, then evaluate once) leaves the final eval
logs in `<model_dir>/eval_metrics.json`. Every mode that trains leaves
`<model_dir>/train_timing.json`: the global steps this process trained and the
seconds spent inside orbit's train loops.
`train_step` is the optimizer step of the project's own Model Garden tasks
(the student, the depth teacher). With `trainer.gradient_accumulation_steps`
k > 1 every task, stock or not, trains through `AccumulatingTrainer`: one
optimizer step per k micro-batches.
"""
import functools
import json
import os
import time
from typing import Sequence

from absl import app
from absl import flags
import numpy as np
import tensorflow as tf

import must  # noqa: F401  (legacy Keras switch before Model Garden loads)
import tf_keras
from must import cli
from must import configs
from official.common import distribute_utils
from official.common import flags as tfm_flags
from official.core import base_trainer
from official.core import exp_factory
from official.core import task_factory
from official.core import train_lib
from official.core import train_utils
from official.modeling import performance
import orbit
from orbit import controller as orbit_controller


def train_step(model, optimizer, images, compute_loss) -> tf.Tensor:
  """One optimizer step the way Model Garden's stock tasks take it.

  Args:
    model: the Keras model.
    optimizer: its optimizer (a `LossScaleOptimizer` under mixed precision).
    images: the model's input batch (this replica's).
    compute_loss: model outputs -> this replica's loss (regularization included).

  Returns:
    The replica's loss. Gradients are summed over replicas, so the loss is
    divided by the replica count before differentiating.
  """
  num_replicas = tf.distribute.get_strategy().num_replicas_in_sync
  scaled = isinstance(optimizer, tf_keras.mixed_precision.LossScaleOptimizer)
  with tf.GradientTape() as tape:
    loss = compute_loss(model(images, training=True))
    scaled_loss = loss / num_replicas
    if scaled:
      scaled_loss = optimizer.get_scaled_loss(scaled_loss)
  variables = model.trainable_variables
  grads = tape.gradient(scaled_loss, variables)
  if scaled:
    grads = optimizer.get_unscaled_gradients(grads)
  optimizer.apply_gradients(list(zip(grads, variables)))
  return loss


class GradientAccumulator:
  """Stands in for the optimizer in a task's `train_step` and adds its gradients up.

  `apply_gradients` adds this replica's gradients into sums (sync-on-read
  variables: each replica keeps its own, no all-reduce per micro-batch);
  `apply` hands their mean over the k micro-batches to the real optimizer (which
  all-reduces over replicas, clips and steps once) and zeroes them. Variables
  that got no gradient stay out of the step, as the optimizer would leave them.
  Every other attribute is the real optimizer's. The sums are not checkpointed:
  they are zero between optimizer steps.
  """

  def __init__(self, optimizer, variables, steps: int):
    self._optimizer = optimizer
    self._steps = steps
    self._variables = list(variables)
    self._index = {v.ref(): i for i, v in enumerate(self._variables)}
    self._sums = [tf.Variable(tf.zeros(v.shape, v.dtype), trainable=False,
                              name=f"accumulated_{i}",
                              synchronization=tf.VariableSynchronization.ON_READ,
                              aggregation=tf.VariableAggregation.SUM)
                  for i, v in enumerate(self._variables)]
    self._with_gradients: set[int] = set()  # filled as the train step is traced

  def __getattr__(self, name):
    return getattr(self._optimizer, name)

  def apply_gradients(self, grads_and_vars, **kwargs):
    del kwargs
    for grad, variable in grads_and_vars:
      if grad is None:
        continue
      if variable.ref() not in self._index:
        raise ValueError(f"gradient accumulation: {variable.name} is not a trainable variable "
                         f"of the model the trainer built")
      i = self._index[variable.ref()]
      self._with_gradients.add(i)
      self._sums[i].assign_add(tf.convert_to_tensor(grad))

  def apply(self) -> None:
    """The optimizer step on the mean gradient; then zeroes the sums (replica context)."""
    used = sorted(self._with_gradients)
    self._optimizer.apply_gradients(
        [(self._sums[i].read_value() / self._steps, self._variables[i]) for i in used])
    for i in used:
      self._sums[i].assign(tf.zeros_like(self._sums[i]))


class AccumulatingTrainer(base_trainer.Trainer):
  """Model Garden's trainer with `trainer.gradient_accumulation_steps` = k.

  One `train_step` (one global step) runs the task's own `train_step` on k
  micro-batches with a `GradientAccumulator` as its optimizer, then takes one
  optimizer step on the mean of their gradients: the step of one k-times larger
  batch for losses that average over examples (the reported training loss and
  metrics cover all k micro-batches). A loss normalized over its batch (e.g.
  RetinaNet's division by the positive anchors) normalizes per micro-batch.
  Batch norm sees micro-batch statistics and updates its moving averages each
  micro-batch. Loss scaling (mixed_float16) is not supported.
  """

  def __init__(self, config, task, model, optimizer, **kwargs):
    self._accumulation_steps = configs.accumulation_steps(config)
    if isinstance(optimizer, tf_keras.mixed_precision.LossScaleOptimizer):
      raise ValueError(
          f"trainer.gradient_accumulation_steps={self._accumulation_steps} does not support "
          f"loss scaling (runtime.mixed_precision_dtype=float16): use bfloat16 or float32")
    if not model.trainable_variables:
      raise ValueError("gradient accumulation needs a built model: "
                       "task.build_model() returned one without trainable variables")
    super().__init__(config, task, model, optimizer, **kwargs)
    self._accumulator = GradientAccumulator(optimizer, model.trainable_variables,
                                            self._accumulation_steps)

  def train_step(self, iterator):
    """k micro-batches, one optimizer step, one global step."""
    task_train_step = self.task.train_step
    if self.config.runtime.enable_xla and self.config.runtime.num_gpus > 0:
      task_train_step = tf.function(task_train_step, jit_compile=True)

    def micro_step(inputs):
      logs = task_train_step(inputs, model=self.model, optimizer=self._accumulator,
                             metrics=self.train_metrics)
      self._train_loss.update_state(logs[self.task.loss])

    def body(i):
      self.strategy.run(micro_step, args=(self.next_train_inputs(iterator),),
                        options=self._runtime_options)
      return (i + 1,)

    tf.while_loop(lambda i: i < self._accumulation_steps, body, (tf.constant(0),))
    self.strategy.run(self._accumulator.apply, options=self._runtime_options)
    self.global_step.assign_add(1)


def define_flags() -> None:
  """Model Garden's training flags plus `--seed`."""
  tfm_flags.define_flags()
  flags.DEFINE_integer(
      "seed", None,
      "Makes the run reproducible: seeds Python, NumPy and TensorFlow (weights, input "
      "shuffling, augmentation), sets task.train_data.seed and turns on TensorFlow's op "
      "determinism. The same seed, config and machine give the same checkpoints.")
  flags.DEFINE_integer(
      "cpu_replicas", 1,
      "With runtime.distribution_strategy=mirrored and no GPUs: mirror training over this "
      "many logical devices of the CPU. One process of a small model keeps about one core "
      "busy; two replicas train the 64 px student about 1.3x faster on 2 cores "
      "(python -m benchmarks.cpu_replicas).")


def run_binary(main) -> None:
  """A training binary's entry point: its flags (experiment, mode and model dir
  required), then absl runs `main`."""
  define_flags()
  flags.mark_flags_as_required(["experiment", "mode", "model_dir"])
  cli.run_absl(main)


def train_from_flags(params) -> None:
  """Runs `params` as the training flags say (model dir, mode, seed, CPU replicas)."""
  run(params, flags.FLAGS.model_dir, flags.FLAGS.mode, flags.FLAGS.seed, flags.FLAGS.cpu_replicas)


def make_deterministic(seed: int) -> None:
  """Seeds every random generator and makes TensorFlow's ops (tf.data included)
  deterministic. Call before any op runs."""
  tf.keras.utils.set_random_seed(seed)
  tf.config.experimental.enable_op_determinism()


def parse_params(flags_obj, experiments: Sequence[str], resolve=None):
  """The locked experiment config from the flags, through `must.configs.load`.

  Args:
    flags_obj: Model Garden's flags: `--experiment` (one of `experiments` or
      its registered tiny variant), `--config_file`s, `--params_override`,
      `--tpu`, `--tf_data_service`, and `--seed`, which sets
      `task.train_data.seed` where the config leaves it unset.
    experiments: the experiment names this binary trains.
    resolve: optional function that completes the config before it is locked
      (e.g. fills in derived values); its errors stop like a bad key.

  Raises:
    app.UsageError: an unknown experiment, a bad key or value, naming it.
  """
  valid = configs.with_tiny(experiments)
  if flags_obj.experiment not in valid:
    raise app.UsageError(f"unknown experiment {flags_obj.experiment!r}; valid: {sorted(valid)}")
  data_service = getattr(flags_obj, "tf_data_service", None)
  flag_overrides = [
      ("--tpu", {"runtime": {"tpu": flags_obj.tpu}} if flags_obj.tpu else None),
      ("--tf_data_service", {"task": {"train_data": {"tf_data_service_address": data_service},
                                      "validation_data": {"tf_data_service_address": data_service}}}
       if data_service else None)]
  seed = getattr(flags_obj, "seed", None)

  def complete(params):
    if seed is not None and params.task.train_data.seed is None:
      params.task.train_data.seed = seed
    if resolve is not None:
      resolve(params)

  try:
    return configs.load(exp_factory.get_exp_config(flags_obj.experiment), flags_obj.config_file,
                        flags_obj.params_override, overrides=flag_overrides, resolve=complete)
  except (configs.ConfigError, FileNotFoundError) as e:
    raise app.UsageError(f"bad config: {e}") from None


EVAL_METRICS_FILE = "eval_metrics.json"
TRAIN_TIMING_FILE = "train_timing.json"


# orbit's controller both logs and prints each progress message; under absl,
# which logs to stderr, every line then shows twice. Print it once.
orbit_controller._log = print  # pylint: disable=protected-access


class _TimedController(orbit.Controller):
  """orbit's Controller that times each train loop against the global step.

  A train loop is orbit's `_train_n_steps`: the trainer's `train(n)` (n optimizer
  steps in one traced loop), the train actions and the loop's summaries;
  checkpointing and evaluation happen outside it. `timing` accumulates the
  global-step delta of every loop ("steps") and the seconds it took
  ("step_seconds"). The first loop includes tracing the train function.
  """

  def __init__(self, *args, timing: dict, **kwargs):
    super().__init__(*args, **kwargs)
    self._timing = timing

  def _train_n_steps(self, num_steps: int):
    before = int(self.global_step.numpy())
    start = time.perf_counter()
    super()._train_n_steps(num_steps)
    after = int(self.global_step.numpy())  # reading the step waits for the loop to finish
    self._timing["step_seconds"] += time.perf_counter() - start
    self._timing["steps"] += after - before


def cpu_strategy(replicas: int) -> tf.distribute.Strategy:
  """MirroredStrategy over `replicas` logical devices of the CPU (call before any op runs)."""
  cpu = tf.config.list_physical_devices("CPU")[0]
  tf.config.set_logical_device_configuration(
      cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(replicas)])
  return tf.distribute.MirroredStrategy([f"/cpu:{i}" for i in range(replicas)])


def _strategy(params, cpu_replicas: int) -> tf.distribute.Strategy:
  """The strategy of the runtime config, or `cpu_strategy` for CPU replicas."""
  runtime = params.runtime
  if cpu_replicas > 1:
    if runtime.distribution_strategy != "mirrored" or runtime.num_gpus:
      raise ValueError(f"--cpu_replicas={cpu_replicas} needs runtime.distribution_strategy="
                       f"mirrored and runtime.num_gpus=0, not "
                       f"{runtime.distribution_strategy!r} with {runtime.num_gpus} GPUs")
    return cpu_strategy(cpu_replicas)
  return distribute_utils.get_distribution_strategy(
      distribution_strategy=runtime.distribution_strategy,
      all_reduce_alg=runtime.all_reduce_alg, num_gpus=runtime.num_gpus,
      tpu_address=runtime.tpu)


def run(params, model_dir: str, mode: str = "train_and_eval", seed: int | None = None,
        cpu_replicas: int = 1):
  """Trains/evaluates `params` in `model_dir`; returns (model, eval logs).

  With a `seed` the run is deterministic (`make_deterministic`). With
  `cpu_replicas` > 1 it mirrors over that many logical CPU devices (`cpu_strategy`).

  When the mode trains, `<model_dir>/train_timing.json` gets
  {"steps": global steps trained in this process (0 when the model dir's
  checkpoint had already reached train_steps), "step_seconds": seconds spent
  inside orbit's train loops, "cpu_replicas": the cores they kept busy}, measured around each loop (`_TimedController`).

  When Model Garden returns eval logs (`train_and_post_eval`), their scalars are
  also written to `<model_dir>/eval_metrics.json` as
  {"checkpoint": path, "metrics": {name: value}}.
  """
  # The strategy first: multi-worker collectives and logical CPU devices must be
  # set up before any op runs.
  strategy = _strategy(params, cpu_replicas)
  if seed is not None:
    make_deterministic(seed)
  for name in ("train_data", "validation_data"):
    data = getattr(params.task, name)
    if "train" in mode or name == "validation_data":
      check_input(data.input_path, f"task.{name}.input_path")
  if "train" in mode:
    check_same_model(params, model_dir)
    train_utils.serialize_config(params, model_dir)
  if params.runtime.mixed_precision_dtype:
    performance.set_mixed_precision_policy(params.runtime.mixed_precision_dtype)
  timing = {"steps": 0, "step_seconds": 0.0, "cpu_replicas": cpu_replicas}
  # CPU replicas evaluate apart, on one device: the eval split's last batch can
  # leave a replica without examples, which oneDNN's convolutions reject.
  evaluate_apart = cpu_replicas > 1 and mode == "train_and_post_eval"
  model, logs = _run_experiment(strategy, params, model_dir,
                                "train" if evaluate_apart else mode, timing)
  if evaluate_apart:  # trains 0 steps: restores the final checkpoint, then evaluates
    model, logs = _run_experiment(tf.distribute.OneDeviceStrategy("/cpu:0"), params,
                                  model_dir, mode, {"steps": 0, "step_seconds": 0.0})
  if "train" in mode:
    write_train_timing(model_dir, timing)
  if logs:
    write_eval_metrics(model_dir, logs, tf.train.latest_checkpoint(model_dir))
  return model, logs


def _run_experiment(strategy, params, model_dir: str, mode: str, timing: dict):
  """Model Garden's driver over a task built in `strategy`'s scope, timed; its
  trainer accumulates gradients when the config asks for it."""
  trainer = None
  with strategy.scope():
    task = task_factory.get_task(params.task, logging_dir=model_dir)
    if configs.accumulation_steps(params) > 1:
      trainer = train_utils.create_trainer(
          params, task, train="train" in mode, evaluate="eval" in mode,
          checkpoint_exporter=train_lib.maybe_create_best_ckpt_exporter(params, model_dir),
          trainer_cls=AccumulatingTrainer)
  return train_lib.run_experiment(
      distribution_strategy=strategy, task=task, mode=mode, params=params, model_dir=model_dir,
      trainer=trainer, controller_cls=functools.partial(_TimedController, timing=timing))


def write_eval_metrics(model_dir: str, logs: dict, checkpoint: str | None) -> None:
  """The scalar entries of Model Garden eval logs, as JSON, in the model dir."""
  metrics = {name: float(np.asarray(value)) for name, value in logs.items()
             if np.asarray(value).size == 1}
  with tf.io.gfile.GFile(os.path.join(model_dir, EVAL_METRICS_FILE), "w") as f:
    json.dump({"checkpoint": checkpoint, "metrics": metrics}, f, indent=2, sort_keys=True)


def write_train_timing(model_dir: str, timing: dict) -> None:
  """{"steps": int, "step_seconds": float, "cpu_replicas": int} as JSON, in the model dir."""
  with tf.io.gfile.GFile(os.path.join(model_dir, TRAIN_TIMING_FILE), "w") as f:
    json.dump({"steps": int(timing["steps"]), "step_seconds": round(timing["step_seconds"], 3),
               "cpu_replicas": int(timing.get("cpu_replicas", 1))}, f, indent=2)


def read_train_timing(model_dir: str) -> dict:
  """What `write_train_timing` wrote in `model_dir`."""
  with tf.io.gfile.GFile(os.path.join(model_dir, TRAIN_TIMING_FILE)) as f:
    return json.load(f)


def _flat(tree, prefix: str = "") -> dict:
  if not isinstance(tree, dict):
    return {prefix[:-1]: json.loads(json.dumps(tree))}
  return {k: v for key, value in tree.items() for k, v in _flat(value, f"{prefix}{key}.").items()}


def check_same_model(params, model_dir: str) -> None:
  """Stops when `model_dir` holds a checkpoint of another model (`task.model`
  differs from its params.yaml): training on would restore it only in part."""
  saved_path = os.path.join(model_dir, configs.PARAMS_FILE)
  if not (tf.train.latest_checkpoint(model_dir) and tf.io.gfile.exists(saved_path)):
    return
  saved = _flat(configs.read_yaml(saved_path).get("task", {}).get("model", {}), "task.model.")
  new = _flat(params.task.model.as_dict(), "task.model.")
  changed = sorted(k for k in saved.keys() | new.keys() if saved.get(k) != new.get(k))
  if changed:
    raise cli.UserError(f"--model_dir {model_dir} holds a checkpoint of another model "
                        f"({saved_path} differs at {changed[:3]}): use a new --model_dir")


def check_input(input_path, key: str) -> None:
  """Stops with a clear message when an input pattern matches no examples."""
  patterns = [p for p in str(input_path).split(",") if p]
  if not patterns:
    raise ValueError(f"{key} is empty: point it at TFRecord shards")
  files = [f for p in patterns for f in tf.io.gfile.glob(p)]
  if not files:
    raise ValueError(f"{key}={input_path!r} matches no files")
  if not any(True for f in files for _ in tf.data.TFRecordDataset(f).take(1)):
    raise ValueError(f"{key}={input_path!r} matches {len(files)} files with no examples")
