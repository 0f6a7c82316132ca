"""What `--seed` (op determinism) costs in training throughput, as ratios.

  .venv/bin/python -m benchmarks.determinism [--steps 150] [--rounds 2] [--size 64]

Trains the detection teacher (whose input pipeline has random flips and scale
jitter in a parallel map, which op determinism must rewrite) and the MuST
student (four heads, random flips) with the training binaries, with and
without `--seed`, at the demo's image size and batch. Prints each one's
steps/s (Model Garden's own log lines, the first loop of each run left out as
warm-up), median over `--rounds` interleaved rounds, and the ratio seeded /
unseeded (1.0 = free). The input is a world eval split (every task labeled)
written to a temporary folder.
"""
import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile

from benchmarks import worlds

_STEPS_PER_SECOND = re.compile(r"train \| step: +\d+ \| steps/sec: +([\d.]+)")


def _commands(pattern: str, size: int, steps: int) -> dict[str, list[str]]:
  """Training binary and flags (but --model_dir and --seed) per experiment."""
  trainer = {"train_steps": steps, "steps_per_loop": 50, "summary_interval": 50,
             "checkpoint_interval": steps}
  override = json.dumps({
      "task": {"model": {"input_size": [size, size, 3]},
               "train_data": {"input_path": pattern, "global_batch_size": 16},
               "validation_data": {"input_path": pattern}},
      "trainer": trainer})
  return {
      "detection teacher": ["teachers.train", "--experiment=must_detection_teacher",
                            f"--params_override={override}"],
      "MuST student": ["must.train", "--experiment=must_student",
                       f"--params_override={override}"],
  }


def _steps_per_second(args: list[str], model_dir: str, seed: bool) -> float:
  command = [sys.executable, "-m", *args, "--mode=train", f"--model_dir={model_dir}"]
  result = subprocess.run(command + (["--seed=0"] if seed else []),
                          capture_output=True, text=True, check=False)
  if result.returncode:
    raise RuntimeError(f"{args[0]} failed:\n{result.stderr[-3000:]}")
  rates = [float(r) for r in _STEPS_PER_SECOND.findall(result.stdout + result.stderr)]
  if len(rates) < 2:
    raise RuntimeError(f"{args[0]}: fewer than two train loops logged; raise --steps")
  return statistics.mean(rates[1:])  # the first loop traces and warms up


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=150)
  parser.add_argument("--rounds", type=int, default=2)
  parser.add_argument("--size", type=int, default=64)
  args = parser.parse_args()
  with tempfile.TemporaryDirectory() as root:
    commands = _commands(worlds.eval_split(f"{root}/world", 200, args.size), args.size,
                         args.steps)
    rates = {(name, seed): [] for name in commands for seed in (False, True)}
    for round_index in range(args.rounds):
      for name, command in commands.items():
        for seed in (False, True) if round_index % 2 == 0 else (True, False):
          model_dir = f"{root}/{name.replace(' ', '_')}_{seed}_{round_index}"
          rates[name, seed].append(_steps_per_second(command, model_dir, seed))
          print(f"round {round_index + 1}: {name}, seed={seed}: "
                f"{rates[name, seed][-1]:.2f} steps/s", flush=True)
  print(f"\n{'experiment':<20}{'steps/s':>9}{'--seed':>9}{'ratio':>8}")
  for name in commands:
    unseeded = statistics.median(rates[name, False])
    seeded = statistics.median(rates[name, True])
    print(f"{name:<20}{unseeded:>9.2f}{seeded:>9.2f}{seeded / unseeded:>8.2f}")


if __name__ == "__main__":
  main()
