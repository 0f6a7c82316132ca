"""Where a finished demo's time went: the share in training steps, and each model's speed.

  .venv/bin/python -m benchmarks.demo_training [--output_dir out/demo]

Reads what `must.demo` measured in `--output_dir` (nothing is rerun):

  (a) per stage, wall seconds, training-step seconds and their share of the
      wall time (the report's timings table, summed over every seed run);
  (b) per training run, the steps it trained, steps/s and images/s inside its
      training loops (`train_timing.json`, timed around orbit's train loops
      against the global step; the first loop includes tracing).
"""
import argparse
import json
import os

import tensorflow as tf

from must import demo
from must import report
from must import training
from official.modeling import hyperparams


def _read_json(path: str) -> dict:
  with tf.io.gfile.GFile(path) as f:
    return json.load(f)


def stage_records(output_dir: str) -> list[dict]:
  """The timing records of a finished demo (`must.demo.timing_records`), over
  the seeds its report aggregated."""
  seeds = _read_json(os.path.join(output_dir, "report.done.json"))["seeds"]
  return demo.timing_records(demo.Context("", output_dir, seeds=tuple(seeds)))


def run_speeds(output_dir: str) -> list[dict]:
  """Steps, steps/s and images/s of every training run under the seed dirs."""
  rows = []
  for seed_dir in sorted(tf.io.gfile.glob(os.path.join(output_dir, "seed_*"))):
    for root, _, files in tf.io.gfile.walk(seed_dir):
      if training.TRAIN_TIMING_FILE not in files:
        continue
      timing = training.read_train_timing(root)
      params = hyperparams.read_yaml_to_params_dict(os.path.join(root, "params.yaml")).as_dict()
      batch = params["task"]["train_data"]["global_batch_size"]
      seconds = timing["step_seconds"]
      rows.append({"run": os.path.relpath(root, output_dir), "steps": timing["steps"],
                   "batch": batch, "steps_per_second": timing["steps"] / seconds if seconds else 0.0,
                   "images_per_second": timing["steps"] * batch / seconds if seconds else 0.0})
  return rows


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--output_dir", default="out/demo")
  args = parser.parse_args()
  print(report.timings_table(stage_records(args.output_dir)))
  print(f"\n{'training run':<52}{'steps':>7}{'batch':>7}{'steps/s':>9}{'images/s':>10}")
  for row in run_speeds(args.output_dir):
    print(f"{row['run']:<52}{row['steps']:>7}{row['batch']:>7}"
          f"{row['steps_per_second']:>9.2f}{row['images_per_second']:>10.1f}")


if __name__ == "__main__":
  main()
