"""Labeling memory benchmark: peak RSS of the pseudo-labeling job by image size.

  python -m benchmarks.memory [--sizes 64x64,3000x4000,6000x8000] [--work_dir /tmp/bench]

In one run, for each image size (height x width; by default the world's 64 px,
12 MP and 48 MP), one image is labeled by the whole Beam pipeline
(`beam_pipelines.pseudo_label.run`, DirectRunner) with the tests' fake
teachers of every task (`tests/beam_pipelines/fake_teachers.py`: no model
weights, so the figures are the pipeline's own), each run in a fresh process
whose peak RSS (`os.wait4`'s ru_maxrss) is read back. Each size runs twice:

  expanded  dense outputs mapped to the image as the pipeline did before
            (segmentation probabilities resized to float32 [H, W, C] first);
  now       as it runs now (`Task.outputs_at_teacher_size`).

The table gives both peaks, their ratio, and the growth per megapixel over the
first (smallest) size: what one more megapixel of image costs the job.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
from PIL import Image


def _child(image_path: str, output_dir: str, expanded: bool) -> None:
  """Labels the one image (in this fresh process)."""
  from beam_pipelines import pseudo_label  # pylint: disable=g-import-not-at-top
  from must import tasks  # pylint: disable=g-import-not-at-top
  from tests.beam_pipelines import fake_teachers  # pylint: disable=g-import-not-at-top
  if expanded:
    for name in tasks.names():
      tasks.get(name).outputs_at_teacher_size = ()
  teachers = fake_teachers.write(os.path.join(output_dir, "teachers"))
  config = os.path.join(output_dir, "teachers.json")
  with open(config, "w") as f:
    json.dump({"teachers": [{"task": t, "path": p, "batch_size": 1}
                            for t, p in teachers.items()]}, f)
  summary = pseudo_label.run(
      ["--runner=DirectRunner", f"--input_pattern={image_path}", f"--teachers_config={config}",
       f"--output_dir={os.path.join(output_dir, 'out')}", "--num_shards=1"],
      loader=fake_teachers.load)
  if summary["counts"]["examples_out"] != 1:
    raise SystemExit(f"{image_path} was not labeled: {summary['counts']}")


def write_image(path: str, height: int, width: int) -> None:
  """A smooth RGB JPEG (compresses like a photo, unlike noise)."""
  rows = np.linspace(0, 255, height, dtype=np.float32)[:, None]
  cols = np.linspace(0, 255, width, dtype=np.float32)[None, :]
  image = np.stack([np.broadcast_to(rows, (height, width)), np.broadcast_to(cols, (height, width)),
                    (rows + cols) / 2], axis=-1).astype(np.uint8)
  Image.fromarray(image).save(path, "JPEG", quality=90)


def peak_rss_mb(image_path: str, work_dir: str, expanded: bool) -> float:
  """Peak RSS (MB) of a fresh process labeling the image."""
  output_dir = tempfile.mkdtemp(dir=work_dir)
  process = subprocess.Popen(
      [sys.executable, "-m", "benchmarks.memory", "--child", image_path, "--work_dir", output_dir]
      + (["--expanded"] if expanded else []),
      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
  _, status, usage = os.wait4(process.pid, 0)
  stderr = process.stderr.read().decode(errors="replace")
  if os.waitstatus_to_exitcode(status) != 0:
    raise SystemExit(f"labeling {image_path} failed: {stderr.strip().splitlines()[-1:]}")
  return usage.ru_maxrss / 1024  # KiB on Linux


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--sizes", default="64x64,3000x4000,6000x8000",
                      help="Image sizes, height x width, comma-separated; the first is the base.")
  parser.add_argument("--work_dir", default=None, help="Default: a new temp dir.")
  parser.add_argument("--child", help=argparse.SUPPRESS)
  parser.add_argument("--expanded", action="store_true", help=argparse.SUPPRESS)
  args = parser.parse_args()
  work_dir = args.work_dir or tempfile.mkdtemp(prefix="memory_bench_")
  if args.child:
    _child(args.child, work_dir, args.expanded)
    return
  rows = []
  for size in args.sizes.split(","):
    height, width = (int(v) for v in size.split("x"))
    image_path = os.path.join(work_dir, f"{height}x{width}.jpg")
    write_image(image_path, height, width)
    rows.append((height, width, peak_rss_mb(image_path, work_dir, True),
                 peak_rss_mb(image_path, work_dir, False)))
  base_mp, base_old, base_new = rows[0][0] * rows[0][1] / 1e6, rows[0][2], rows[0][3]
  print(f"{'image':>11} {'MP':>6} {'expanded MB':>12} {'now MB':>8} {'now/exp':>8} "
        f"{'exp MB/MP':>10} {'now MB/MP':>10}")
  for height, width, old, new in rows:
    mp = height * width / 1e6
    grow = (lambda peak, base: (peak - base) / (mp - base_mp)) if mp > base_mp else None
    per_mp = (f"{grow(old, base_old):10.1f} {grow(new, base_new):10.1f}" if grow
              else f"{'-':>10} {'-':>10}")
    print(f"{height:>5}x{width:<5} {mp:6.1f} {old:12.0f} {new:8.0f} {new / old:8.2f} {per_mp}")


if __name__ == "__main__":
  main()
