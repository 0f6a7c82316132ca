"""Labeling memory benchmark: peak RSS of the pseudo-labeling job by image size and class count.

  python -m benchmarks.memory [--sizes 64x64,3000x4000,6000x8000] [--classes 11,171]
      [--work_dir /tmp/bench]

In one run, a segmentation teacher per class count is exported behind the
teacher contract (`must.serving`) through `teachers.adapter`: a Keras model at
512x512 whose logits come at stride 4, as a real segmenter's. Then, for each
image size (height x width; by default the world's 64 px, 12 MP and 48 MP), a
fresh process labels one JPEG of that size with the whole Beam pipeline
(`beam_pipelines.pseudo_label.run`, DirectRunner) and its peak RSS
(`os.wait4`'s ru_maxrss) is read back. Beside it, the floor: a fresh process
that imports the same stack and decodes the image as the job must (the
pipeline's own decode, and TensorFlow's in the teacher's graph).

The table gives the floor, each class count's peak, the peak over the floor,
and the growth per megapixel over the first (smallest) size.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
from PIL import Image

INPUT_SIZE = 512
STRIDE = 4


def _export_teacher(work_dir: str, num_classes: int) -> str:
  """A `num_classes` segmentation teacher (a Keras model via an adapter config)."""
  import tf_keras  # pylint: disable=g-import-not-at-top
  import yaml  # pylint: disable=g-import-not-at-top
  from teachers import adapter  # pylint: disable=g-import-not-at-top
  tf_keras.utils.set_random_seed(0)
  inputs = tf_keras.Input([INPUT_SIZE, INPUT_SIZE, 3])
  x = tf_keras.layers.AveragePooling2D(STRIDE)(inputs)
  x = tf_keras.layers.Conv2D(16, 3, padding="same", activation="relu")(x)
  model = tf_keras.Model(inputs, tf_keras.layers.Conv2D(num_classes, 1)(x))
  model_path = os.path.join(work_dir, f"segmenter_{num_classes}.keras")
  model.save(model_path)
  config_path = os.path.join(work_dir, f"adapter_{num_classes}.yaml")
  with open(config_path, "w") as f:
    yaml.safe_dump({"task": "segmentation", "num_classes": num_classes, "model": model_path,
                    "input": {"size": [INPUT_SIZE, INPUT_SIZE]},
                    "outputs": {"kind": "logits"}}, f)
  export_dir = os.path.join(work_dir, f"teacher_{num_classes}")
  adapter.export_adapted(config_path, export_dir)
  return export_dir


def _label(image_path: str, output_dir: str, teacher: str) -> None:
  """Labels the one image (in this fresh process)."""
  from beam_pipelines import pseudo_label  # pylint: disable=g-import-not-at-top
  config = os.path.join(output_dir, "teachers.json")
  with open(config, "w") as f:
    json.dump({"teachers": [{"task": "segmentation", "path": teacher, "batch_size": 1}]}, f)
  summary = pseudo_label.run(
      ["--runner=DirectRunner", f"--input_pattern={image_path}", f"--teachers_config={config}",
       f"--output_dir={os.path.join(output_dir, 'out')}", "--num_shards=1",
       "--max_pixels=60000000"])
  if summary["counts"]["examples_out"] != 1:
    raise SystemExit(f"{image_path} was not labeled: {summary['counts']}")


def _decode(image_path: str) -> None:
  """Only what labeling cannot avoid: the stack's imports and the image's decodes."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from beam_pipelines import decode  # pylint: disable=g-import-not-at-top
  from beam_pipelines import pseudo_label  # pylint: disable=g-import-not-at-top,unused-import
  with open(image_path, "rb") as f:
    data = f.read()
  rgb, _, _ = decode.decode_image(data, 60_000_000)
  decoded = tf.io.decode_image(data, channels=3)
  assert decoded.shape == rgb.shape


def write_image(path: str, height: int, width: int) -> None:
  """A smooth RGB JPEG (compresses like a photo, unlike noise)."""
  rows = np.linspace(0, 255, height, dtype=np.float32)[:, None]
  cols = np.linspace(0, 255, width, dtype=np.float32)[None, :]
  image = np.stack([np.broadcast_to(rows, (height, width)), np.broadcast_to(cols, (height, width)),
                    (rows + cols) / 2], axis=-1).astype(np.uint8)
  Image.fromarray(image).save(path, "JPEG", quality=90)


def peak_rss_mb(image_path: str, work_dir: str, teacher: str = "") -> float:
  """Peak RSS (MB) of a fresh process labeling the image (decoding it only, without
  a teacher)."""
  output_dir = tempfile.mkdtemp(dir=work_dir)
  process = subprocess.Popen(
      [sys.executable, "-m", "benchmarks.memory", "--child", image_path, "--work_dir", output_dir,
       "--teacher", teacher], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
  _, status, usage = os.wait4(process.pid, 0)
  stderr = process.stderr.read().decode(errors="replace")
  if os.waitstatus_to_exitcode(status) != 0:
    raise SystemExit(f"labeling {image_path} failed: {stderr.strip().splitlines()[-3:]}")
  return usage.ru_maxrss / 1024  # KiB on Linux


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--sizes", default="64x64,3000x4000,6000x8000",
                      help="Image sizes, height x width, comma-separated; the first is the base.")
  parser.add_argument("--classes", default="11,171", help="Segmentation class counts.")
  parser.add_argument("--work_dir", default=None, help="Default: a new temp dir.")
  parser.add_argument("--child", help=argparse.SUPPRESS)
  parser.add_argument("--teacher", default="", help=argparse.SUPPRESS)
  parser.add_argument("--export_classes", type=int, default=0, help=argparse.SUPPRESS)
  args = parser.parse_args()
  work_dir = args.work_dir or tempfile.mkdtemp(prefix="memory_bench_")
  os.makedirs(work_dir, exist_ok=True)
  if args.child:
    (_label(args.child, work_dir, args.teacher) if args.teacher else _decode(args.child))
    return
  if args.export_classes:
    _export_teacher(work_dir, args.export_classes)
    return
  # This process stays free of TensorFlow: Linux counts the RSS a child had when
  # forked from it into the child's peak.
  classes = [int(c) for c in args.classes.split(",")]
  for c in classes:
    subprocess.run([sys.executable, "-m", "benchmarks.memory", "--export_classes", str(c),
                    "--work_dir", work_dir], check=True, capture_output=True)
  teachers = {c: os.path.join(work_dir, f"teacher_{c}") for c in classes}
  rows = []
  for size in args.sizes.split(","):
    height, width = (int(v) for v in size.split("x"))
    image_path = os.path.join(work_dir, f"{height}x{width}.jpg")
    write_image(image_path, height, width)
    rows.append((height, width, peak_rss_mb(image_path, work_dir),
                 [peak_rss_mb(image_path, work_dir, teachers[c]) for c in classes]))
  base_mp, base_peaks = rows[0][0] * rows[0][1] / 1e6, rows[0][3]
  print(f"| image | MP | decode only MB | "
        + " | ".join(f"{c} classes MB | over decode MB | MB/MP" for c in classes) + " |")
  print("|---|---|---|" + "---|---|---|" * len(classes))
  for height, width, floor, peaks in rows:
    mp = height * width / 1e6
    cells = []
    for peak, base in zip(peaks, base_peaks):
      per_mp = f"{(peak - base) / (mp - base_mp):.1f}" if mp > base_mp else "-"
      cells.append(f"{peak:.0f} | {peak - floor:+.0f} | {per_mp}")
    print(f"| {height}x{width} | {mp:.1f} | {floor:.0f} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
  main()
