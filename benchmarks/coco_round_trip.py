"""A COCO sample of mixed aspect ratios: convert -> train -> label -> export -> COCOeval.

  .venv/bin/python -m benchmarks.coco_round_trip [--steps 1500] [--output_dir /tmp/coco_round_trip]

Renders world scenes at 48x80 and 80x48 as JPEGs with a COCO instances file
(sparse category ids, boxes in pixels), then runs the binaries a user types:
`must.data.convert`, `teachers.train` (a detection teacher overfitting those
images), `teachers.export` twice (aspect kept and padded, the detection
default; and squashed, `--size_policy resize`), `beam_pipelines.pseudo_label`
over the image files, `beam_pipelines.export --formats coco`. Both exported
COCO files are scored by pycocotools' COCOeval against the original
annotations (images matched by file name, categories by name), so AP is high
only where the boxes come back in the original images' pixel frame.
"""
import argparse
import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np
from PIL import Image
from pycocotools import coco
from pycocotools import cocoeval
import yaml

from must.world import scene as scene_lib
from must.world import writer

SIZES = ((48, 80), (80, 48))  # (height, width): wide and tall
CATEGORY_IDS = {name: 10 + 3 * i for i, name in enumerate(scene_lib.CATEGORIES)}  # sparse


def write_sample(root: str, per_size: int) -> str:
  """JPEGs under root/images and root/instances.json; returns the JSON's path."""
  os.makedirs(os.path.join(root, "images"))
  names = writer.category_names()
  images, annotations = [], []
  for height, width in SIZES:
    params = scene_lib.RenderParams(height=height, width=width)
    for index in range(per_size):
      scene = scene_lib.render_scene(scene_lib.scene_rng(7, f"coco{height}x{width}", index),
                                     params)
      file_name = f"{height}x{width}_{index}.jpg"
      Image.fromarray(scene.image).save(os.path.join(root, "images", file_name), quality=95)
      image_id = len(images) + 1
      images.append({"id": image_id, "file_name": file_name, "height": height, "width": width})
      label = writer.scene_labels(scene)["detection"]
      for (ymin, xmin, ymax, xmax), cls in zip(label.boxes, label.classes):
        x0, y0 = round(float(xmin) * width, 2), round(float(ymin) * height, 2)
        x1, y1 = min(round(float(xmax) * width, 2), width), min(round(float(ymax) * height, 2),
                                                                height)
        box = [x0, y0, round(x1 - x0, 2), round(y1 - y0, 2)]
        annotations.append({"id": len(annotations) + 1, "image_id": image_id,
                            "category_id": CATEGORY_IDS[names[cls]], "bbox": box,
                            "area": box[2] * box[3], "iscrowd": 0})
  path = os.path.join(root, "instances.json")
  with open(path, "w") as f:
    json.dump({"images": images, "annotations": annotations,
               "categories": [{"id": i, "name": n} for n, i in CATEGORY_IDS.items()]}, f)
  return path


def _run(*args: str) -> float:
  """Runs `python -m args...`; returns its seconds, printing its output on failure."""
  start = time.perf_counter()
  done = subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True)
  if done.returncode:
    sys.exit(f"{args[0]} failed ({done.returncode}):\n{done.stdout[-3000:]}{done.stderr[-3000:]}")
  return time.perf_counter() - start


def coco_ap(ground_truth_path: str, exported_path: str) -> dict:
  """COCOeval AP and AP50 of exported detections against the original file."""
  truth = coco.COCO(ground_truth_path)
  with open(exported_path) as f:
    exported = json.load(f)
  image_ids = {image["file_name"]: image["id"] for image in truth.dataset["images"]}
  exported_images = {image["id"]: os.path.basename(image["file_name"])
                     for image in exported["images"]}
  category_ids = {c["name"]: c["id"] for c in truth.dataset["categories"]}
  exported_names = {c["id"]: c["name"] for c in exported["categories"]}
  detections = [{"image_id": image_ids[exported_images[a["image_id"]]],
                 "category_id": category_ids[exported_names[a["category_id"]]],
                 "bbox": a["bbox"], "score": a["score"]} for a in exported["annotations"]]
  if not detections:
    return {"AP": 0.0, "AP50": 0.0, "detections": 0}
  with contextlib.redirect_stdout(io.StringIO()):
    evaluator = cocoeval.COCOeval(truth, truth.loadRes(detections), "bbox")
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
  return {"AP": float(evaluator.stats[0]), "AP50": float(evaluator.stats[1]),
          "detections": len(detections)}


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--output_dir", default="/tmp/coco_round_trip")
  parser.add_argument("--per_size", type=int, default=4, help="images per aspect ratio")
  parser.add_argument("--steps", type=int, default=1500)
  args = parser.parse_args()
  root = args.output_dir
  shutil.rmtree(root, ignore_errors=True)
  sample = write_sample(os.path.join(root, "sample"), args.per_size)
  seconds = {}
  seconds["convert"] = _run("must.data.convert", "--format=coco", f"--inputs={sample}",
                            f"--images={root}/sample/images", "--splits=train",
                            f"--output_dir={root}/coco")
  with open(os.path.join(root, "coco", "world.json")) as f:
    num_classes = json.load(f)["num_classes"]
  batch = 2 * args.per_size
  overrides = ",".join([
      f"task.train_data.input_path={root}/coco/train-*.tfrecord",
      f"task.validation_data.input_path={root}/coco/train-*.tfrecord",
      f"task.model.num_classes={num_classes}", "task.model.input_size=[64,64,3]",
      f"task.train_data.global_batch_size={batch}", "task.train_data.shuffle_buffer_size=16",
      "task.train_data.parser.aug_rand_hflip=false", "task.train_data.parser.aug_scale_min=1.0",
      "task.train_data.parser.aug_scale_max=1.0", f"trainer.train_steps={args.steps}",
      "trainer.optimizer_config.learning_rate.cosine.initial_learning_rate=0.01",
      f"trainer.checkpoint_interval={args.steps}", f"trainer.summary_interval={args.steps}",
      f"trainer.steps_per_loop={min(100, args.steps)}"])
  seconds["train"] = _run("teachers.train", "--experiment=must_detection_teacher", "--mode=train",
                          f"--model_dir={root}/teacher", f"--params_override={overrides}")
  rows = []
  for policy in ("pad", "resize"):
    export_dir = f"{root}/teacher/export_{policy}"
    seconds[f"export {policy}"] = _run("teachers.export", f"--model_dir={root}/teacher",
                                       f"--export_dir={export_dir}", f"--size_policy={policy}",
                                       f"--world_dir={root}/coco")
    teachers_config = f"{root}/teachers_{policy}.yaml"
    with open(teachers_config, "w") as f:
      yaml.safe_dump({"teachers": [{"task": "detection", "path": export_dir, "batch_size": 4}],
                      "thresholds": {"detection": {"min_score": 0.05}}}, f)
    seconds[f"label {policy}"] = _run(
        "beam_pipelines.pseudo_label", "--runner=DirectRunner",
        f"--input_pattern={root}/sample/images/*.jpg", f"--teachers_config={teachers_config}",
        f"--output_dir={root}/labels_{policy}")
    _run("beam_pipelines.export", "--runner=DirectRunner",
         f"--input_pattern={root}/labels_{policy}/pseudo_labeled-*.tfrecord",
         f"--output_dir={root}/export_{policy}", "--formats=coco", "--holdout_fraction=0")
    rows.append((policy, coco_ap(sample, f"{root}/export_{policy}/coco/detection_train.json")))
  print(f"\n{2 * args.per_size} images ({', '.join(f'{h}x{w}' for h, w in SIZES)}), "
        f"{args.steps} training steps at 64x64")
  print("| serving | AP | AP50 | detections |\n|---|---|---|---|")
  for policy, ap in rows:
    name = "aspect kept, padded (pad)" if policy == "pad" else "squashed (resize)"
    print(f"| {name} | {ap['AP']:.3f} | {ap['AP50']:.3f} | {ap['detections']} |")
  print("seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in seconds.items()))


if __name__ == "__main__":
  main()
