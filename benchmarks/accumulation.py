"""Gradient accumulation: peak memory and step time at k = 1, 4, 16 vs a plain big batch.

  python -m benchmarks.accumulation [--micro_batch 8] [--ks 1,4,16] [--size 64]
      [--examples 256] [--work_dir /tmp/bench]

Each configuration trains the `must_student` experiment (`--size` pixels square)
in a fresh process on a world eval split written once: the task from Model
Garden's task factory, the trainer `must.training` would use
(`AccumulatingTrainer` for k > 1, Model Garden's own otherwise), one warm-up
optimizer step (tracing), then `--examples` effective examples timed. Peak RSS
is the process's (`os.wait4`'s ru_maxrss), from the imports to the end.

Rows: micro-batch m with trainer.gradient_accumulation_steps = k for each k,
and a plain batch of k * m (k = 1) for each k > 1. Columns: effective batch,
peak RSS, peak over the k = 1 row, seconds per effective example and its ratio
to the k = 1 row.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

CHILD_RESULT = "result.json"


def _child(pattern: str, batch: int, k: int, size: int, examples: int, out_dir: str) -> None:
  """Trains in this process; writes {"seconds_per_example": ...} to out_dir."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  import must.student  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  from must import configs  # pylint: disable=g-import-not-at-top
  from must import training  # pylint: disable=g-import-not-at-top
  from must.student import config as student_config  # pylint: disable=g-import-not-at-top
  from official.core import base_trainer  # pylint: disable=g-import-not-at-top
  from official.core import exp_factory  # pylint: disable=g-import-not-at-top
  from official.core import task_factory  # pylint: disable=g-import-not-at-top
  from official.core import train_utils  # pylint: disable=g-import-not-at-top
  params = exp_factory.get_exp_config(student_config.EXPERIMENT)
  params = configs.load(params, overrides=[
      ("size", configs.image_size_override(params, size, size)),
      ("bench", {"task": {"train_data": {"input_path": pattern, "global_batch_size": batch}},
                 "trainer": {"gradient_accumulation_steps": k}})])
  steps = max(1, examples // (batch * k))
  tf.keras.utils.set_random_seed(0)
  task = task_factory.get_task(params.task)
  trainer = train_utils.create_trainer(
      params, task, train=True, evaluate=False,
      trainer_cls=training.AccumulatingTrainer if k > 1 else base_trainer.Trainer)
  trainer.train(tf.constant(1))  # tracing and the first step
  start = time.perf_counter()
  trainer.train(tf.constant(steps))
  seconds = time.perf_counter() - start
  with open(os.path.join(out_dir, CHILD_RESULT), "w") as f:
    json.dump({"seconds_per_example": seconds / (steps * batch * k)}, f)


def measure(pattern: str, batch: int, k: int, size: int, examples: int, work_dir: str) -> dict:
  """{"peak_mb", "seconds_per_example"} of a fresh training process."""
  out_dir = tempfile.mkdtemp(dir=work_dir)
  process = subprocess.Popen(
      [sys.executable, "-m", "benchmarks.accumulation", "--child", pattern, "--work_dir", out_dir,
       f"--micro_batch={batch}", f"--ks={k}", f"--size={size}", f"--examples={examples}"],
      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
  _, status, usage = os.wait4(process.pid, 0)
  stderr = process.stderr.read().decode(errors="replace")
  if os.waitstatus_to_exitcode(status) != 0:
    raise SystemExit(f"batch {batch}, k={k} failed: {stderr.strip().splitlines()[-5:]}")
  with open(os.path.join(out_dir, CHILD_RESULT)) as f:
    result = json.load(f)
  return {"peak_mb": usage.ru_maxrss / 1024, **result}  # ru_maxrss: KiB on Linux


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--micro_batch", type=int, default=8)
  parser.add_argument("--ks", default="1,4,16", help="Accumulation steps; 1 is the base row.")
  parser.add_argument("--size", type=int, default=64, help="Image size (pixels, square).")
  parser.add_argument("--examples", type=int, default=256,
                      help="Effective examples timed per configuration.")
  parser.add_argument("--scenes", type=int, default=128)
  parser.add_argument("--work_dir", default=None, help="Default: a new temp dir.")
  parser.add_argument("--child", help=argparse.SUPPRESS)
  args = parser.parse_args()
  work_dir = args.work_dir or tempfile.mkdtemp(prefix="accumulation_bench_")
  os.makedirs(work_dir, exist_ok=True)
  ks = [int(k) for k in args.ks.split(",")]
  if args.child:
    _child(args.child, args.micro_batch, ks[0], args.size, args.examples, work_dir)
    return
  from benchmarks import worlds  # pylint: disable=g-import-not-at-top
  pattern = worlds.eval_split(os.path.join(work_dir, "world"), args.scenes, args.size)
  m = args.micro_batch
  runs = [(f"accumulated k={k}", m, k) for k in ks]
  runs += [(f"plain batch {k * m}", k * m, 1) for k in ks if k > 1]
  rows = [(name, batch, k, measure(pattern, batch, k, args.size, args.examples, work_dir))
          for name, batch, k in runs]
  base = rows[0][3]
  print(f"must_student at {args.size}x{args.size}, {args.examples} effective examples timed")
  print("| run | batch per step | k | effective batch | peak RSS MB | over k=1 MB "
        "| ms per effective example | vs k=1 |")
  print("|---|---|---|---|---|---|---|---|")
  for name, batch, k, r in rows:
    print(f"| {name} | {batch} | {k} | {batch * k} | {r['peak_mb']:.0f} "
          f"| {r['peak_mb'] - base['peak_mb']:+.0f} | {1e3 * r['seconds_per_example']:.1f} "
          f"| {r['seconds_per_example'] / base['seconds_per_example']:.2f} |")


if __name__ == "__main__":
  main()
