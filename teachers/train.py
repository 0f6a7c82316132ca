"""Trains a teacher: Model Garden's training driver over the teacher experiments.

  python -m teachers.train --experiment must_detection_teacher \
      --config_file configs/teachers/detection.yaml --mode train_and_eval \
      --model_dir out/teachers/detection [--params_override ...] [--tpu ...]

Flags are Model Garden's (`official.common.flags`). The final config is saved
as `params.yaml` in the model dir; a restarted run resumes from the latest
checkpoint there (Model Garden's orbit controller restores it).
"""
from absl import app
from absl import flags
import tensorflow as tf

from official.common import distribute_utils
from official.common import flags as tfm_flags
from official.core import task_factory
from official.core import train_lib
from official.core import train_utils
from official.modeling import performance
import teachers

FLAGS = flags.FLAGS


def main(argv):
  del argv
  if FLAGS.experiment not in teachers.experiments():
    raise app.UsageError(f"unknown experiment {FLAGS.experiment!r}; teacher experiments: "
                         f"{teachers.experiments()}")
  try:
    params = train_utils.parse_configuration(FLAGS)
  except (KeyError, ValueError) as e:
    raise app.UsageError(f"bad config ({FLAGS.config_file or 'defaults'}, "
                         f"--params_override={FLAGS.params_override!r}): {e}") from None
  run(params, FLAGS.model_dir, FLAGS.mode)


def run(params, model_dir: str, mode: str = "train_and_eval"):
  """Trains/evaluates `params` in `model_dir`; returns (model, eval logs)."""
  for name in ("train_data", "validation_data"):
    data = getattr(params.task, name)
    if "train" in mode or name == "validation_data":
      check_input(data.input_path, f"task.{name}.input_path")
  if "train" in mode:
    train_utils.serialize_config(params, model_dir)
  if params.runtime.mixed_precision_dtype:
    performance.set_mixed_precision_policy(params.runtime.mixed_precision_dtype)
  strategy = distribute_utils.get_distribution_strategy(
      distribution_strategy=params.runtime.distribution_strategy,
      all_reduce_alg=params.runtime.all_reduce_alg,
      num_gpus=params.runtime.num_gpus,
      tpu_address=params.runtime.tpu)
  with strategy.scope():
    task = task_factory.get_task(params.task, logging_dir=model_dir)
  return train_lib.run_experiment(distribution_strategy=strategy, task=task, mode=mode,
                                  params=params, model_dir=model_dir)


def check_input(input_path, key: str) -> None:
  """Stops with a clear message when an input pattern matches no examples."""
  patterns = [p for p in str(input_path).split(",") if p]
  if not patterns:
    raise ValueError(f"{key} is empty: point it at TFRecord shards of the labeled split")
  files = [f for p in patterns for f in tf.io.gfile.glob(p)]
  if not files:
    raise ValueError(f"{key}={input_path!r} matches no files")
  if not any(True for f in files for _ in tf.data.TFRecordDataset(f).take(1)):
    raise ValueError(f"{key}={input_path!r} matches {len(files)} files with no examples")


if __name__ == "__main__":
  tfm_flags.define_flags()
  flags.mark_flags_as_required(["experiment", "mode", "model_dir"])
  app.run(main)
