"""Evaluates exported teachers (or a multi-task student) on the world's held-out split.

  python -m teachers.evaluate --world_dir out/world \
      --teacher_dirs out/teachers/classification/export,out/teachers/detection/export

Writes `eval_metrics.json` next to each exported teacher and prints a table.
"""
import json
import os

from absl import flags
import tensorflow as tf

from must import cli
from must import evaluate
from must import serving
from must.world import writer

_WORLD_DIR = flags.DEFINE_string("world_dir", None, "The world (its eval split).", required=True)
_TEACHER_DIRS = flags.DEFINE_list("teacher_dirs", None, "Exported teachers.", required=True)
_SPLIT = flags.DEFINE_string("split", "eval", "Which split of the world to evaluate on.")


def evaluate_teachers(teacher_dirs: list[str], world_dir: str, split: str = "eval") -> dict:
  """Evaluates each model on every task it serves; writes eval_metrics.json beside it.

  Returns:
    '<task> (<model name>)' -> metric name -> value.
  """
  world = writer.load_metadata(world_dir)
  results = {}
  for path in teacher_dirs:
    models = serving.load_all(path)
    metrics = evaluate.evaluate({model.task: model.predict for model in models},
                                world["splits"][split]["pattern"], world["task_params"])
    with tf.io.gfile.GFile(os.path.join(path, "eval_metrics.json"), "w") as f:
      json.dump({"split": split, "metrics": metrics}, f, indent=2)
    for model in models:
      key = f"{model.task} ({model.name})"
      results[key if key not in results else f"{key} {path}"] = metrics[model.task]
  return results


def main(argv):
  del argv
  print(evaluate.table(evaluate_teachers(_TEACHER_DIRS.value, _WORLD_DIR.value, _SPLIT.value)))


def run_cli():
  cli.run_absl(main)


if __name__ == "__main__":
  run_cli()
