"""Full-size benchmark: the `_full` teachers and the full student, end to end on CPU.

  python -m benchmarks.full_size [--work_dir /tmp/full_size] [--models depth,student]

For each `configs/teachers/<task>_full.yaml` and `configs/student/student_full.yaml`
(the student last: its loss weights come from the teachers exported before it),
in a fresh process:

  train   the config loaded as the training binary loads it
          (`must.training.parse_params`), on a tiny world written to the work
          dir, with `--batch_size` (2) and `--steps` (2) one step per loop,
          through Model Garden's driver (`must.training.run`);
  export  `teachers.export.export_teacher` / `must.student.export.export_student`;
  label   a 640x480 and a 480x640 JPEG (world images resized) through
          `beam_pipelines.pseudo_label` on the DirectRunner, a teachers config
          listing the export (the student once per task), every float
          threshold at 0 so the untrained model's labels all come through;
  check   each record keeps its image's size, has a pseudo label for every
          task served, dense labels cover the image pixel for pixel (the task's
          own `features` check) and boxes lie inside it (`coco_annotations`).

The table gives per model: its weights (M), the first step (tracing included)
and the last step in seconds (orbit's steps/sec summaries), export and label
seconds (in process, imports excluded), and the process's peak RSS (MB).
Exits 1 if any model fails, after the table.
"""
import argparse
import glob
import inspect
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import typing

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEACHER_CONFIGS = os.path.join(REPO, "configs/teachers/*_full.yaml")
STUDENT_CONFIG = os.path.join(REPO, "configs/student/student_full.yaml")
TINY_WORLD = os.path.join(REPO, "configs/world/tiny.yaml")
STUDENT = "student"
FULL = "_full.yaml"
IMAGE_SIZES = ((480, 640), (640, 480))  # (height, width): landscape and portrait
RESULT_FILE = "result.json"


def model_names() -> list[str]:
  """The teachers with a `_full` config (by task), then the student."""
  return sorted(os.path.basename(p)[:-len(FULL)] for p in glob.glob(TEACHER_CONFIGS)) + [STUDENT]


# -- Set-up (parent process) ------------------------------------------------------


def make_world(work_dir: str) -> str:
  """A tiny world (4 images per teacher split and in eval); returns its dir."""
  from must import configs  # pylint: disable=g-import-not-at-top
  from must.world import writer  # pylint: disable=g-import-not-at-top
  world_dir = os.path.join(work_dir, "world")
  if not os.path.exists(os.path.join(world_dir, "world.json")):
    sizes = {name: 2 for name in writer.SplitSizes().as_dict()}
    sizes.update({name: 4 for name in [*writer.teacher_tasks(), "eval"]})
    config = configs.load(writer.WorldConfig(), TINY_WORLD,
                          {"sizes": sizes, "preview_scenes": 0})
    writer.write_world(config, world_dir, progress=lambda line: None)
  return world_dir


def make_images(world_dir: str, work_dir: str) -> str:
  """The world's first corpus images resized to IMAGE_SIZES as JPEGs; returns their pattern."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from must.world import writer  # pylint: disable=g-import-not-at-top
  image_dir = os.path.join(work_dir, "images")
  os.makedirs(image_dir, exist_ok=True)
  sources = sorted(glob.glob(writer.load_metadata(world_dir)["splits"]["corpus"]["pattern"]))
  for (height, width), source in zip(IMAGE_SIZES, sources):
    with Image.open(source) as image:
      image.convert("RGB").resize((width, height), Image.BILINEAR).save(
          os.path.join(image_dir, f"{height}x{width}.jpg"), "JPEG", quality=90)
  return os.path.join(image_dir, "*.jpg")


# -- One model (child process) ----------------------------------------------------


def _train_params(name: str, world: dict, batch_size: int, steps: int, teacher_exports: list,
                  pre_nms_score_threshold: float | None = None):
  """The model's config as its training binary would load it, sized for this run
  (a teacher's box decoding keeping boxes from `pre_nms_score_threshold` on)."""
  from must import training  # pylint: disable=g-import-not-at-top
  from must.student import config as student_config  # pylint: disable=g-import-not-at-top
  import teachers  # pylint: disable=g-import-not-at-top
  from official.core import exp_factory  # pylint: disable=g-import-not-at-top
  eval_pattern = world["splits"]["eval"]["pattern"]
  data = {"global_batch_size": batch_size}
  trainer = {"train_steps": steps, "steps_per_loop": 1, "summary_interval": 1,
             "checkpoint_interval": steps, "validation_interval": steps}
  if name == STUDENT:  # every task's ground truth: the eval split (a stand-in for pseudo labels)
    experiments, config_file = [student_config.EXPERIMENT], STUDENT_CONFIG
    task = {"teachers": teacher_exports, "train_data": {**data, "input_path": eval_pattern},
            "validation_data": {**data, "input_path": eval_pattern}}
    resolve = student_config.resolve_loss_weights
  else:
    experiments, config_file = [teachers.TEACHERS[name].EXPERIMENT], TEACHER_CONFIGS.replace(
        "*", name)
    task = {"train_data": {**data, "input_path": world["splits"][name]["pattern"]},
            "validation_data": {**data, "input_path": eval_pattern}}
    if pre_nms_score_threshold is not None and hasattr(
        exp_factory.get_exp_config(experiments[0]).task.model, "detection_generator"):
      task["model"] = {"detection_generator": {
          "pre_nms_score_threshold": pre_nms_score_threshold}}
    resolve = None
  flags = argparse.Namespace(experiment=experiments[0], config_file=[config_file],
                             params_override={"task": task, "trainer": trainer},
                             tpu="", tf_data_service="", seed=None)
  return training.parse_params(flags, experiments, resolve=resolve)


def _step_seconds(model_dir: str) -> list[float]:
  """Seconds of each train loop (one step each), from orbit's steps_per_second summaries."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  seconds = {}
  for path in sorted(glob.glob(os.path.join(model_dir, "train", "events.out.tfevents*"))):
    for event in tf.compat.v1.train.summary_iterator(path):
      for value in event.summary.value:
        if value.tag == "steps_per_second":
          seconds[event.step] = 1.0 / float(tf.make_ndarray(value.tensor))
  return [seconds[step] for step in sorted(seconds)]


def open_thresholds(task) -> dict:
  """Every float threshold of the task's `pseudo_label` at 0 (all labels kept)."""
  hints = typing.get_type_hints(task.pseudo_label)
  return {key: 0.0 for key in inspect.signature(task.pseudo_label).parameters
          if float in (typing.get_args(hints.get(key)) or (hints.get(key),))}


def check_labels(output_dir: str, task_params: dict, image_sizes) -> list[str]:
  """One line per image and task; raises when a label is missing or outside its image."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from must import schema as schema_lib  # pylint: disable=g-import-not-at-top
  schema = schema_lib.Schema(task_params)
  records = list(tf.data.TFRecordDataset(
      sorted(glob.glob(os.path.join(output_dir, "pseudo_labeled-*.tfrecord")))))
  decoded = [tf.nest.map_structure(lambda t: t.numpy(), schema.decode(r)) for r in records]
  found = sorted(tuple(d["image"].shape[:2]) for d in decoded)
  if found != sorted(image_sizes):
    raise AssertionError(f"records hold images of {found}, not {sorted(image_sizes)}")
  lines = []
  for example in decoded:
    height, width = example["image"].shape[:2]
    for name, task in schema.tasks.items():
      part = example[name]
      where = f"{height}x{width} {name}"
      if not part["present"] or part["source"] != schema_lib.PSEUDO.encode():
        raise AssertionError(f"{where}: no pseudo label (source {part['source']!r})")
      label = task.from_decoded(part)
      task.features(label, (height, width))  # dense labels must cover the image
      boxes = [a["bbox"] for a in task.coco_annotations(label, (height, width))]
      outside = [b for b in boxes if b[0] < 0 or b[1] < 0 or b[0] + b[2] > width + 1e-3
                 or b[1] + b[3] > height + 1e-3]
      if outside:
        raise AssertionError(f"{where}: boxes outside the image: {outside[:3]}")
      maps = [key for key, value in part.items()
              if np.ndim(value) >= 2 and np.shape(value)[:2] == (height, width)]
      lines.append(f"{where}: ok" + (f", {len(boxes)} boxes inside" if boxes else "")
                   + (f", maps {maps} at {height}x{width}" if maps else ""))
  return lines


def run_child(name: str, work_dir: str, batch_size: int, steps: int,
              pre_nms_score_threshold: float | None) -> dict:
  """Trains, exports and labels with one model in this process; returns its numbers."""
  import resource  # pylint: disable=g-import-not-at-top
  import yaml  # pylint: disable=g-import-not-at-top
  import must  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  from beam_pipelines import pseudo_label  # pylint: disable=g-import-not-at-top
  from must import serving  # pylint: disable=g-import-not-at-top
  from must import tasks  # pylint: disable=g-import-not-at-top
  from must import training  # pylint: disable=g-import-not-at-top
  from must.student import export as student_export  # pylint: disable=g-import-not-at-top
  from must.world import writer  # pylint: disable=g-import-not-at-top
  from teachers import export as teacher_export  # pylint: disable=g-import-not-at-top

  def peak_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

  world = writer.load_metadata(os.path.join(work_dir, "world"))
  model_dir = os.path.join(work_dir, "models", name)
  export_dir = os.path.join(model_dir, "export")
  exports = sorted(os.path.dirname(p) for p in glob.glob(
      os.path.join(work_dir, "models", "*", "export", serving.METADATA_FILE))
      if not p.startswith(model_dir + os.sep))
  params = _train_params(name, world, batch_size, steps, exports, pre_nms_score_threshold)
  model, _ = training.run(params, model_dir, "train")
  result = {"params_m": sum(v.shape.num_elements() for v in model.variables) / 1e6,
            "step_seconds": _step_seconds(model_dir),
            "train_timing": training.read_train_timing(model_dir),
            "peak_mb_train": peak_mb()}
  del model
  start = time.perf_counter()
  if name == STUDENT:
    student_export.export_student(model_dir, export_dir)
  else:
    teacher_export.export_teacher(model_dir, export_dir)
  result.update(export_seconds=time.perf_counter() - start, peak_mb_export=peak_mb())

  metadata = serving.TeacherMetadata.read(export_dir)
  served = sorted(metadata.tasks) if metadata.tasks else [metadata.task]
  config_path = os.path.join(model_dir, "teachers.yaml")
  with open(config_path, "w") as f:
    yaml.safe_dump({"teachers": [{"task": t, "path": export_dir, "batch_size": 2}
                                 for t in served]}, f)
  resolved = pseudo_label.load_config(config_path)
  thresholds = {t: open_thresholds(tasks.build(t, **resolved["task_params"][t])) for t in served}
  with open(config_path, "w") as f:
    yaml.safe_dump({"teachers": [{"task": t, "path": export_dir, "batch_size": 2}
                                 for t in served],
                    "thresholds": {t: v for t, v in thresholds.items() if v}}, f)
  output_dir = os.path.join(model_dir, "labels")
  start = time.perf_counter()
  summary = pseudo_label.run(["--runner=DirectRunner",
                              f"--input_pattern={os.path.join(work_dir, 'images', '*.jpg')}",
                              f"--teachers_config={config_path}", f"--output_dir={output_dir}",
                              "--num_shards=1", "--overwrite"])
  result["label_seconds"] = time.perf_counter() - start
  if summary["counts"]["examples_out"] != len(IMAGE_SIZES):
    raise AssertionError(f"labeled {summary['counts']}, not {len(IMAGE_SIZES)} images")
  result["checks"] = check_labels(output_dir, resolved["task_params"], IMAGE_SIZES)
  result["peak_mb_label"] = peak_mb()
  return result


# -- The table (parent process) ---------------------------------------------------


def run_model(name: str, args) -> dict:
  """Runs `name` in a fresh process; its result plus its peak RSS (MB) or its error."""
  result_path = os.path.join(args.work_dir, "models", name, RESULT_FILE)
  shutil.rmtree(os.path.dirname(result_path), ignore_errors=True)  # a fresh model dir
  os.makedirs(os.path.dirname(result_path), exist_ok=True)
  log_path = os.path.join(args.work_dir, f"{name}.log")
  with open(log_path, "w") as log:
    process = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.full_size", "--child", name,
         f"--work_dir={args.work_dir}", f"--batch_size={args.batch_size}",
         f"--steps={args.steps}",
         f"--pre_nms_score_threshold={args.pre_nms_score_threshold}"],
        cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    start = time.perf_counter()
    _, status, usage = os.wait4(process.pid, 0)
  result = {"name": name, "wall_seconds": time.perf_counter() - start,
            "peak_rss_mb": usage.ru_maxrss / 1024, "log": log_path}
  if os.waitstatus_to_exitcode(status) == 0 and os.path.exists(result_path):
    with open(result_path) as f:
      result.update(json.load(f))
  else:
    with open(log_path) as f:
      lines = [line.strip() for line in f if line.strip()]
    result["error"] = lines[-1] if lines else f"exit {os.waitstatus_to_exitcode(status)}"
  return result


def print_table(results: list[dict]) -> None:
  print(f"{'model':<16} {'params M':>8} {'step 1 s':>8} {'step s':>7} {'export s':>8} "
        f"{'label s':>7} {'peak RSS MB':>11}  {'wall s':>6}")
  for r in results:
    if "error" in r:
      print(f"{r['name']:<16} FAILED after {r['wall_seconds']:.0f} s: {r['error']} ({r['log']})")
      continue
    steps = r["step_seconds"] or [float("nan")]
    print(f"{r['name']:<16} {r['params_m']:8.1f} {steps[0]:8.1f} {steps[-1]:7.1f} "
          f"{r['export_seconds']:8.1f} {r['label_seconds']:7.1f} {r['peak_rss_mb']:11.0f}  "
          f"{r['wall_seconds']:6.0f}")


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--models", default=",".join(model_names()),
                      help="Comma-separated: teachers by task, and 'student'.")
  parser.add_argument("--batch_size", type=int, default=2)
  parser.add_argument("--steps", type=int, default=2)
  parser.add_argument("--pre_nms_score_threshold", type=float, default=0.0,
                      help="A detection teacher's box decoding keeps boxes from this score "
                      "on (Model Garden's 0.05 drops every box of an untrained RetinaNet, "
                      "whose scores start near 0.01). Negative: the config's own.")
  parser.add_argument("--work_dir", default=None, help="Default: a new temp dir.")
  parser.add_argument("--child", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.child:
    result = run_child(args.child, args.work_dir, args.batch_size, args.steps,
                       None if args.pre_nms_score_threshold < 0 else args.pre_nms_score_threshold)
    with open(os.path.join(args.work_dir, "models", args.child, RESULT_FILE), "w") as f:
      json.dump(result, f, indent=2)
    return
  args.work_dir = args.work_dir or tempfile.mkdtemp(prefix="full_size_bench_")
  make_images(make_world(args.work_dir), args.work_dir)
  print(f"work dir: {args.work_dir}", flush=True)
  results = []
  for name in args.models.split(","):
    results.append(run_model(name, args))
    print(json.dumps(results[-1]), flush=True)
  print_table(results)
  for r in results:
    for line in r.get("checks", []):
      print(f"  {r['name']}: {line}")
  if any("error" in r for r in results):
    sys.exit(1)


if __name__ == "__main__":
  main()
