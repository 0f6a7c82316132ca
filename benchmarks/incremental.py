"""Incremental labeling benchmark: relabeling a corpus grown by 10 % against a full run.

  python -m benchmarks.incremental [--num_images 200] [--growth 0.1] [--work_dir /tmp/bench]

A small segmentation teacher (a Keras conv net at 256x256 whose logits come
at stride 4, behind the teacher contract through `teachers.adapter`) labels
N random 64x64 PNGs with the whole pipeline (`beam_pipelines.pseudo_label.run`,
DirectRunner). The corpus then grows by `growth` * N images, and it is
labeled twice: in full, and with `--previous_output` the first run (only the
new images go to the teacher; the others' records are copied, their label
statistics decoded). Prints each wall time and the incremental / full ratio.
"""
import argparse
import json
import os
import tempfile
import time

import numpy as np
from PIL import Image

INPUT_SIZE = 256
STRIDE = 4


def _export_teacher(work_dir: str, num_classes: int = 11) -> str:
  """A segmentation teacher (a Keras model via an adapter config)."""
  import tf_keras  # pylint: disable=g-import-not-at-top
  import yaml  # pylint: disable=g-import-not-at-top
  from teachers import adapter  # pylint: disable=g-import-not-at-top
  tf_keras.utils.set_random_seed(0)
  inputs = tf_keras.Input([INPUT_SIZE, INPUT_SIZE, 3])
  x = tf_keras.layers.AveragePooling2D(STRIDE)(inputs)
  x = tf_keras.layers.Conv2D(32, 3, padding="same", activation="relu")(x)
  x = tf_keras.layers.Conv2D(32, 3, padding="same", activation="relu")(x)
  model = tf_keras.Model(inputs, tf_keras.layers.Conv2D(num_classes, 1)(x))
  model_path = os.path.join(work_dir, "segmenter.keras")
  model.save(model_path)
  config_path = os.path.join(work_dir, "adapter.yaml")
  with open(config_path, "w") as f:
    yaml.safe_dump({"task": "segmentation", "num_classes": num_classes, "model": model_path,
                    "input": {"size": [INPUT_SIZE, INPUT_SIZE]},
                    "outputs": {"kind": "logits"}}, f)
  export_dir = os.path.join(work_dir, "teacher")
  adapter.export_adapted(config_path, export_dir)
  return export_dir


def _write_images(folder: str, seeds: range) -> None:
  os.makedirs(folder, exist_ok=True)
  for seed in seeds:
    pixels = np.random.default_rng(seed).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(os.path.join(folder, f"{seed}.png"))


def _label(pattern: str, config: str, output_dir: str, *extra: str) -> tuple[float, dict]:
  from beam_pipelines import pseudo_label  # pylint: disable=g-import-not-at-top
  start = time.perf_counter()
  summary = pseudo_label.run(["--runner=DirectRunner", f"--input_pattern={pattern}",
                              f"--teachers_config={config}", f"--output_dir={output_dir}",
                              "--num_shards=2", *extra])
  return time.perf_counter() - start, summary["counts"]


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--num_images", type=int, default=200)
  parser.add_argument("--growth", type=float, default=0.1)
  parser.add_argument("--work_dir", default="")
  args = parser.parse_args()
  work_dir = args.work_dir or tempfile.mkdtemp(prefix="bench_incremental_")
  config = os.path.join(work_dir, "teachers.json")
  with open(config, "w") as f:
    json.dump({"teachers": [{"task": "segmentation", "path": _export_teacher(work_dir),
                             "batch_size": 8}]}, f)
  pattern = os.path.join(work_dir, "corpus", "part-*", "*.png")
  grown = args.num_images + max(1, round(args.growth * args.num_images))
  _write_images(os.path.join(work_dir, "corpus", "part-000"), range(args.num_images))
  first, _ = _label(pattern, config, os.path.join(work_dir, "first"))
  _write_images(os.path.join(work_dir, "corpus", "part-001"), range(args.num_images, grown))
  full, full_counts = _label(pattern, config, os.path.join(work_dir, "full"))
  incremental, counts = _label(pattern, config, os.path.join(work_dir, "incremental"),
                               f"--previous_output={os.path.join(work_dir, 'first')}")
  if counts["examples_out"] != full_counts["examples_out"] or not counts["balanced"]:
    raise SystemExit(f"incremental run does not match the full run: {counts} vs {full_counts}")
  print(f"first run, {args.num_images} images: {first:.1f} s")
  print(f"full run, {grown} images: {full:.1f} s")
  print(f"incremental run, {counts['reused']} reused + {counts['newly_labeled']} new: "
        f"{incremental:.1f} s")
  print(f"incremental / full: {incremental / full:.2f}")


if __name__ == "__main__":
  main()
