"""Pseudo-labeling benchmark: the Beam pipeline against raw batched inference.

  python -m benchmarks.pseudo_label [--corpus_size 128] [--work_dir /tmp/bench]

In one run, on the same generated images and the same exported teachers
(Model Garden models with random weights, exported by `teachers.export`
exactly like trained ones; ResNet-10 at width 0.25 by default):

  (a) raw in-process batched inference of every teacher: read, decode, resize
      and predict, no Beam (the ceiling on this machine);
  (b) the Beam pipeline end to end on the DirectRunner (decode, inference,
      pseudo labels, encoding, sharded writes, summary), with one fused
      handler and with one RunInference per teacher joined by image id;

and prints (b)/(a) throughput (end to end, teacher loading included, and
marginal: the images 4x adds over 1x), pseudo-label bytes per image against
the image's own bytes, and the pipeline's time on 1x and 4x the corpus. An
untimed pipeline run comes first, so process start-up costs fall on no one.
"""
import argparse
import glob
import json
import os
import tempfile
import time

import tensorflow as tf
import yaml

import must  # noqa: F401  (legacy Keras switch before Model Garden loads)
from beam_pipelines import decode
from beam_pipelines import pseudo_label
from must import configs
from must import serving
from must.world import writer
import teachers
from teachers import export
from official.core import exp_factory
from official.core import task_factory
from official.core import train_utils

TINY_WORLD = os.path.join(os.path.dirname(__file__), "..", "configs/world/tiny.yaml")


def make_world(work_dir: str, corpus_size: int, image_size: int) -> str:
  """A world whose corpus has 4 folders of `corpus_size` images; returns its dir."""
  world_dir = os.path.join(work_dir, "world")
  if os.path.exists(os.path.join(world_dir, "world.json")):
    return world_dir
  sizes = {k: 2 for k in writer.SplitSizes().as_dict()}
  config = configs.load(writer.WorldConfig(), TINY_WORLD, {
      "render": {"height": image_size, "width": image_size},
      "sizes": {**sizes, "corpus": 4 * corpus_size},
      "corpus_files_per_folder": corpus_size, "preview_scenes": 0})
  writer.write_world(config, world_dir, progress=lambda line: None)
  return world_dir


def export_random_teacher(task: str, world_dir: str, work_dir: str, input_size: int,
                          model_id: int = 10, depth_multiplier: float = 0.25) -> str:
  """Exports the `task` teacher with its initial random weights; returns the export dir."""
  model_dir = os.path.join(work_dir, "teachers", task)
  export_dir = os.path.join(model_dir, "export")
  if os.path.exists(os.path.join(export_dir, serving.METADATA_FILE)):
    return export_dir
  params = exp_factory.get_exp_config(teachers.TEACHERS[task].EXPERIMENT)
  params.override({"task": {
      "model": {"input_size": [input_size, input_size, 3],
                "backbone": {"resnet": {"model_id": model_id,
                                        "depth_multiplier": depth_multiplier}}},
      "train_data": {"input_path": f"{world_dir}/labeled/{task}/train-*"},
      "validation_data": {"input_path": f"{world_dir}/eval/eval-*"}}}, is_strict=True)
  os.makedirs(model_dir, exist_ok=True)
  train_utils.serialize_config(params, model_dir)
  model = task_factory.get_task(params.task, logging_dir=None).build_model()
  tf.train.Checkpoint(model=model).save(os.path.join(model_dir, "ckpt"))
  export.export_teacher(model_dir, export_dir, world_dir=world_dir, version="random")
  return export_dir


def raw_inference(paths: list[str], teacher_paths: dict[str, str], batch_size: int) -> float:
  """Seconds to read, decode and predict every image with every teacher (the
  teachers fit the stored bytes to their input size in their graphs)."""
  models = {task: serving.load(path) for task, path in teacher_paths.items()}
  with open(paths[0], "rb") as f:
    first_image = decode.decode_image(f.read())[1]
  for model in models.values():  # Trace once, as the pipeline's first batch does.
    model.predict([first_image] * batch_size)
  start = time.perf_counter()
  for first in range(0, len(paths), batch_size):
    encoded = []
    for path in paths[first:first + batch_size]:
      with open(path, "rb") as f:
        encoded.append(decode.decode_image(f.read())[1])
    encoded += encoded[-1:] * (batch_size - len(encoded))
    for model in models.values():
      model.predict(encoded)
  return time.perf_counter() - start


def beam_run(pattern: str, config_path: str, output_dir: str, mode: str) -> float:
  """Seconds of one pipeline run, end to end, on the DirectRunner."""
  start = time.perf_counter()
  summary = pseudo_label.run([
      "--runner=DirectRunner", f"--input_pattern={pattern}",
      f"--teachers_config={config_path}", f"--output_dir={output_dir}",
      f"--inference_mode={mode}", "--overwrite"])  # a reused --work_dir
  seconds = time.perf_counter() - start
  if not summary["counts"]["balanced"]:
    raise RuntimeError(f"counts do not balance: {summary['counts']}")
  return seconds


def label_bytes(output_dir: str) -> tuple[float, float]:
  """(mean pseudo-label bytes, mean image bytes) per record of a run."""
  labels, images, n = 0, 0, 0
  for record in tf.data.TFRecordDataset(glob.glob(os.path.join(output_dir, "*.tfrecord"))):
    example = tf.train.Example.FromString(record.numpy())
    image = len(example.features.feature["image/encoded"].bytes_list.value[0])
    labels += len(record.numpy()) - image
    images += image
    n += 1
  return labels / max(n, 1), images / max(n, 1)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--corpus_size", type=int, default=128, help="Images in 1x.")
  parser.add_argument("--image_size", type=int, default=64)
  parser.add_argument("--batch_size", type=int, default=16)
  parser.add_argument("--tasks", default="classification,detection,segmentation,depth")
  parser.add_argument("--work_dir", default=None, help="Default: a new temp dir.")
  args = parser.parse_args()
  work_dir = args.work_dir or tempfile.mkdtemp(prefix="pseudo_label_bench_")
  world_dir = make_world(work_dir, args.corpus_size, args.image_size)
  teacher_paths = {}
  for task in args.tasks.split(","):
    try:
      teacher_paths[task] = export_random_teacher(task, world_dir, work_dir, args.image_size)
    except Exception as e:  # pylint: disable=broad-except  (a teacher still being built)
      print(f"skipping the {task} teacher: cannot export it ({type(e).__name__}: {e})")
  config_path = os.path.join(work_dir, "teachers.yaml")
  with open(config_path, "w") as f:
    yaml.safe_dump({"teachers": [{"task": t, "path": p, "batch_size": args.batch_size}
                                 for t, p in teacher_paths.items()]}, f)
  one_x = os.path.join(world_dir, "corpus/images/part-000/*")
  four_x = os.path.join(world_dir, "corpus/images/part-*/*")
  paths = sorted(glob.glob(one_x))
  n = len(paths)

  # One untimed run first: the first pipeline of a process also pays for
  # imports, Beam's runner start and TensorFlow's first graph optimizations.
  beam_run(one_x, config_path, os.path.join(work_dir, "out_warm_up"), pseudo_label.FUSED)
  raw = raw_inference(paths, teacher_paths, args.batch_size)
  fused = beam_run(one_x, config_path, os.path.join(work_dir, "out_fused"), pseudo_label.FUSED)
  per_teacher = beam_run(one_x, config_path, os.path.join(work_dir, "out_per_teacher"),
                         pseudo_label.PER_TEACHER)
  fused_4x = beam_run(four_x, config_path, os.path.join(work_dir, "out_fused_4x"),
                      pseudo_label.FUSED)
  labels, images = label_bytes(os.path.join(work_dir, "out_fused"))
  results = {
      "images_1x": n, "image_size": args.image_size, "teachers": sorted(teacher_paths),
      "raw_images_per_s": n / raw,
      "beam_fused_images_per_s": n / fused,
      "beam_per_teacher_images_per_s": n / per_teacher,
      "ratio_fused": raw / fused, "ratio_per_teacher": raw / per_teacher,
      "label_bytes_per_image": labels, "image_bytes_per_image": images,
      "seconds_1x": fused, "seconds_4x": fused_4x, "ratio_4x_over_1x": fused_4x / fused,
      # The 3n images 4x adds over 1x, without the fixed cost of starting the
      # pipeline and loading the teachers.
      "beam_marginal_images_per_s": (3 * n / (fused_4x - fused) if fused_4x > fused
                                     else float("nan")),
  }
  results["ratio_marginal"] = results["beam_marginal_images_per_s"] / results["raw_images_per_s"]
  print(f"(a) raw batched inference, {len(teacher_paths)} teachers: "
        f"{results['raw_images_per_s']:.1f} images/s")
  print(f"(b) Beam, fused handler:       {results['beam_fused_images_per_s']:.1f} images/s"
        f"  (b)/(a) = {results['ratio_fused']:.2f}")
  print(f"(b) Beam, one RunInference per teacher + CoGroupByKey: "
        f"{results['beam_per_teacher_images_per_s']:.1f} images/s"
        f"  (b)/(a) = {results['ratio_per_teacher']:.2f}")
  print(f"(b) Beam, fused, marginal (4x - 1x, no start-up or model loading): "
        f"{results['beam_marginal_images_per_s']:.1f} images/s"
        f"  (b)/(a) = {results['ratio_marginal']:.2f}")
  print(f"pseudo-label bytes per image: {labels:.0f} vs the image's own {images:.0f} "
        f"({labels / max(images, 1):.2f}x)")
  print(f"1x ({n} images): {fused:.1f} s; 4x ({4 * n}): {fused_4x:.1f} s "
        f"({results['ratio_4x_over_1x']:.2f}x)")
  print(json.dumps(results))


if __name__ == "__main__":
  main()
