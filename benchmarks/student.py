"""What the student's input pipeline and shared backbone cost, as ratios.

  .venv/bin/python -m benchmarks.student [--steps 10] [--rounds 3] [--batch_size 32] [--size 64]

Prints, in one run on this machine, with the `must_student` experiment (96x96,
or `--size` pixels square, e.g. the default demo's 64):

  (a) training throughput reading the real TFRecord input (schema decode, per-
      task targets, anchor labeling, shuffling, prefetch) divided by the same
      training step fed one in-memory batch of the same shape; target >= 0.95
      (the input pipeline is never the bottleneck);
  (b) one multi-head step (classification + detection + segmentation + depth)
      divided by the sum of the four single-task steps on the same backbone;
      target <= 0.4 (the saving the shared backbone buys).

Every configuration is timed in each of `--rounds` interleaved rounds and the
median is kept, so background load hits all of them alike. The input is a
world eval split (all four tasks labeled) written to a temporary folder.
"""
import argparse
import statistics
import tempfile
import time

import tensorflow as tf

import must.student  # noqa: F401  (registers the student)
from must import configs
import tf_keras
from must.student import config as student_config
from must.student import task as task_lib
from official.core import exp_factory

from benchmarks import worlds


def _trainer(heads: list[str], pattern: str, batch_size: int, size: int | None = None):
  """(task, model, a compiled train step) for a student with these heads."""
  params = exp_factory.get_exp_config(student_config.EXPERIMENT)
  params.override({"task": {"train_data": {"input_path": pattern,
                                           "global_batch_size": batch_size}}})
  if size:
    params.override(configs.image_size_override(params, size, size))
  params.task.model.heads = [h for h in params.task.model.heads if h.task in heads]
  task = task_lib.StudentTask(params.task)
  model = task.build_model()
  optimizer = tf_keras.optimizers.Adam(1e-3)
  step = tf.function(lambda inputs: task.train_step(inputs, model, optimizer)["loss"])
  return task, params, step


def _seconds_per_step(step, inputs, steps: int) -> float:
  """Wall seconds per step; `inputs` is an iterator or a fixed batch."""
  next_inputs = (lambda: next(inputs)) if hasattr(inputs, "__next__") else (lambda: inputs)
  step(next_inputs()).numpy()  # warm-up (and tracing on first use)
  start = time.perf_counter()
  for _ in range(steps):
    loss = step(next_inputs())
  loss.numpy()
  return (time.perf_counter() - start) / steps


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=10)
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--batch_size", type=int, default=32)
  parser.add_argument("--scenes", type=int, default=256)
  parser.add_argument("--size", type=int, default=None, help="image size (default: 96)")
  args = parser.parse_args()
  tasks = [head.task for head in student_config.default_heads()]
  with tempfile.TemporaryDirectory() as world_dir:
    pattern = worlds.eval_split(world_dir, args.scenes, args.size)
    task, params, multi_step = _trainer(tasks, pattern, args.batch_size, args.size)
    real_input = iter(task.build_inputs(params.task.train_data).repeat())
    in_memory = next(real_input)
    singles = {}
    for name in tasks:
      single_task, single_params, single_step = _trainer([name], pattern, args.batch_size, args.size)
      batch = next(iter(single_task.build_inputs(single_params.task.train_data)))
      singles[name] = (single_step, batch)
    times = {key: [] for key in ["real input", "in-memory", *tasks]}
    for round_index in range(args.rounds):
      times["real input"].append(_seconds_per_step(multi_step, real_input, args.steps))
      times["in-memory"].append(_seconds_per_step(multi_step, in_memory, args.steps))
      for name, (step, batch) in singles.items():
        times[name].append(_seconds_per_step(step, batch, args.steps))
      print(f"round {round_index + 1}/{args.rounds}: " +
            ", ".join(f"{k} {v[-1]:.3f} s" for k, v in times.items()), flush=True)
  median = {key: statistics.median(values) for key, values in times.items()}
  print(f"\nstudent at {params.task.model.input_size[0]}px, batch {args.batch_size}, "
        f"median of {args.rounds} rounds x {args.steps} steps")
  print(f"{'configuration':<34}{'s/step':>10}{'images/s':>10}")
  for key, seconds in median.items():
    label = f"{key} (one head)" if key in tasks else f"multi-head, {key}"
    print(f"{label:<34}{seconds:>10.3f}{args.batch_size / seconds:>10.1f}")
  input_ratio = median["in-memory"] / median["real input"]
  sharing_ratio = median["in-memory"] / sum(median[name] for name in tasks)
  print(f"\n(a) real input / in-memory throughput: {input_ratio:.3f} (target >= 0.95)")
  print(f"(b) multi-head step / sum of single-task steps: {sharing_ratio:.3f} (target <= 0.4)")


if __name__ == "__main__":
  main()
