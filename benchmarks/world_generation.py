"""How fast the world generator writes, and how many bytes each task's labels take.

  .venv/bin/python -m benchmarks.world_generation [--scenes 6000] [--size 96]

Prints, in one run on this machine: scenes/s of `render_scene` alone (one
process), scenes/s of the whole generator (render + encode + write, worker
processes, start-up included), and the mean serialized size per example of
each task's label features next to the image's own bytes.
"""
import argparse
import tempfile
import time

import numpy as np
import tensorflow as tf

from must import image_codec
from must import schema as schema_lib
from must.world import scene as scene_lib
from must.world import writer


def render_rate(params: scene_lib.RenderParams, scenes: int) -> float:
  start = time.perf_counter()
  for i in range(scenes):
    scene_lib.render_scene(scene_lib.scene_rng(0, "bench", i), params)
  return scenes / (time.perf_counter() - start)


def write_rate(size: int, scenes: int, workers: int) -> float:
  config = writer.WorldConfig()
  share = scenes // 10
  config.override({
      "render": {"height": size, "width": size}, "num_workers": workers, "preview_scenes": 0,
      "sizes": {**{task: share for task in writer.teacher_tasks()}, "corpus": 3 * share,
                "corpus_partial": share // 2, "eval": share // 2, "transfer_train": share // 2,
                "transfer_eval": share // 2},
  })
  with tempfile.TemporaryDirectory() as output_dir:
    return writer.write_world(config, output_dir, progress=lambda line: None)["scenes_per_second"]


def label_bytes(params: scene_lib.RenderParams, scenes: int) -> dict[str, float]:
  schema = schema_lib.Schema(writer.task_params())
  sizes = {name: [] for name in ["image (jpeg q95)", "image (png)", *writer.task_params()]}
  for i in range(scenes):
    scene = scene_lib.render_scene(scene_lib.scene_rng(0, "bytes", i), params)
    sizes["image (jpeg q95)"].append(len(image_codec.encode_jpeg(scene.image, 95)))
    sizes["image (png)"].append(len(image_codec.encode_png(scene.image)))
    for name, label in writer.scene_labels(scene).items():
      features = schema.tasks[name].features(label, scene.image.shape[:2])
      sizes[name].append(tf.train.Features(feature=features).ByteSize())
  return {name: float(np.mean(values)) for name, values in sizes.items()}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--scenes", type=int, default=6000)
  parser.add_argument("--size", type=int, default=96)
  parser.add_argument("--workers", type=int, default=2)
  args = parser.parse_args()
  params = scene_lib.RenderParams(height=args.size, width=args.size)
  render = render_rate(params, 500)
  write = write_rate(args.size, args.scenes, args.workers)
  print(f"\nworld generation at {args.size}x{args.size}")
  print(f"{'render_scene, 1 process':<40}{render:>10.0f} scenes/s")
  print(f"{f'full generator, {args.workers} workers':<40}{write:>10.0f} scenes/s")
  print(f"\n{'bytes per example':<40}{'mean':>10}")
  for name, size in label_bytes(params, 200).items():
    print(f"{name:<40}{size:>10.0f}")


if __name__ == "__main__":
  main()
