"""Label-quality benchmark: labeling with the quality report against labeling alone.

  python -m benchmarks.quality [--num_images 128] [--image_size 64] [--work_dir /tmp/bench]

Every teacher of `teachers.TEACHERS` (Model Garden models with random weights,
exported like trained ones by `benchmarks.pseudo_label.export_random_teacher`)
labels a world eval split (ground truth for every task) with the whole
pipeline on the DirectRunner, `--quality off` and `--quality on` (the
ground truth decoded, every task scored, quality.json and quality.png
written), alternating, `--repeats` times each after an untimed run. Prints
each median wall time and the with / without ratio.
"""
import argparse
import json
import os
import statistics
import tempfile
import time

import must  # noqa: F401  (legacy Keras switch before Model Garden loads)


def _run(pattern: str, config: str, output_dir: str, flag: str) -> float:
  from beam_pipelines import pseudo_label  # pylint: disable=g-import-not-at-top
  start = time.perf_counter()
  summary = pseudo_label.run(["--runner=DirectRunner", f"--input_pattern={pattern}",
                              "--input_format=tfrecord", f"--teachers_config={config}",
                              f"--output_dir={output_dir}", f"--quality={flag}", "--overwrite"])
  seconds = time.perf_counter() - start
  if not summary["counts"]["balanced"]:
    raise RuntimeError(f"counts do not balance: {summary['counts']}")
  return seconds


def main() -> None:
  from benchmarks import pseudo_label as bench  # pylint: disable=g-import-not-at-top
  from benchmarks import worlds  # pylint: disable=g-import-not-at-top
  import teachers  # pylint: disable=g-import-not-at-top
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--num_images", type=int, default=128)
  parser.add_argument("--image_size", type=int, default=64)
  parser.add_argument("--repeats", type=int, default=2)
  parser.add_argument("--work_dir", default="")
  args = parser.parse_args()
  work_dir = args.work_dir or tempfile.mkdtemp(prefix="bench_quality_")
  world_dir = os.path.join(work_dir, "world")
  pattern = worlds.eval_split(world_dir, args.num_images, args.image_size)
  config = os.path.join(work_dir, "teachers.json")
  with open(config, "w") as f:
    json.dump({"teachers": [
        {"task": task, "batch_size": 16, "path": bench.export_random_teacher(
            task, world_dir, work_dir, args.image_size)} for task in sorted(teachers.TEACHERS)]},
              f)
  _run(pattern, config, os.path.join(work_dir, "warm_up"), "off")
  times = {"off": [], "on": []}
  for _ in range(args.repeats):
    for flag in times:
      times[flag].append(_run(pattern, config, os.path.join(work_dir, flag), flag))
  off, on = (statistics.median(times[flag]) for flag in ("off", "on"))
  with open(os.path.join(work_dir, "on", "quality.json")) as f:
    scored = {task: s["images"] for task, s in json.load(f)["tasks"].items()}
  print(json.dumps({
      "images": args.num_images, "image_size": args.image_size, "scored": scored,
      "labeling_alone_s": round(off, 2), "with_quality_s": round(on, 2),
      "ratio": round(on / off, 3), "runs": {k: [round(v, 2) for v in t] for k, t in times.items()},
  }, indent=2))


if __name__ == "__main__":
  main()
