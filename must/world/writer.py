"""Writes the procedural world: labeled splits, an image corpus, a preview.

Layout under the output directory:

  labeled/<task>/train-*.tfrecord   one disjoint split per task that has
                                    `world_teacher_split`, only that task's
                                    ground truth
  corpus/images/part-NNN/*.jpg|png  the unlabeled corpus, plain image files
  corpus/partial/partial-*.tfrecord a small partially labeled subset (ground
                                    truth for a random subset of tasks)
  eval/eval-*.tfrecord              held-out split with every task's ground truth
  transfer/{train,eval}-*.tfrecord  transfer split, every task the world labels
  preview.png                       a few eval scenes with their labels drawn
  world.json                        categories, schema task params, splits
                                    (file pattern, count, tasks), config, timing

The world labels every registered task that defines `world_label` (see
`must.tasks`), so a new task module is labeled here without a change to this
file. Every scene comes from its own random stream keyed by (seed, split, index), so
splits are disjoint and the output is identical for the same config. Shards
are written in parallel worker processes, to any tf.io.gfile path (gs:// too).
"""
import concurrent.futures
import contextlib
import dataclasses
import json
import math
import multiprocessing
import os
import time
from typing import Iterator

import tensorflow as tf

import must  # noqa: F401  (legacy Keras switch before Model Garden loads)
from must import image_codec
from must import schema as schema_lib
from must import tasks as tasks_lib
from must import visualize
from must.tasks import base
from must.world import scene as scene_lib
from official.modeling import hyperparams


def task_params() -> dict[str, dict]:
  """The schema parameters of the world's labels (category ids 0..K, 0 = background)."""
  return {name: {"num_classes": scene_lib.NUM_CLASSES} if tasks_lib.get(name).has_classes else {}
          for name in tasks_lib.names()
          if tasks_lib.get(name).world_label is not base.Task.world_label}


def teacher_tasks() -> list[str]:
  """The tasks the world writes a labeled training split for."""
  return [name for name in task_params() if tasks_lib.get(name).world_teacher_split]


# The renderer's knobs as a strict config, generated from RenderParams so the
# two never drift apart.
RenderConfig = dataclasses.make_dataclass(
    "RenderConfig",
    [(f.name, f.type, dataclasses.field(default=f.default))
     for f in dataclasses.fields(scene_lib.RenderParams)],
    bases=(hyperparams.Config,))


# Number of scenes per split: one labeled split per teacher task, then the others.
SplitSizes = dataclasses.make_dataclass(
    "SplitSizes",
    [(name, int, dataclasses.field(default=2000)) for name in teacher_tasks()] +
    [(name, int, dataclasses.field(default=default)) for name, default in (
        ("corpus", 4000), ("corpus_partial", 200), ("eval", 500), ("transfer_train", 500),
        ("transfer_eval", 300))],
    bases=(hyperparams.Config,))


@dataclasses.dataclass
class WorldConfig(hyperparams.Config):
  """Everything that decides what the world generator writes."""
  seed: int = 0
  render: RenderConfig = dataclasses.field(default_factory=RenderConfig)
  sizes: SplitSizes = dataclasses.field(default_factory=SplitSizes)
  examples_per_shard: int = 500
  image_format: str = "jpeg"          # image encoding inside the TFRecords
  jpeg_quality: int = 95
  corpus_png_fraction: float = 0.1    # the rest of the corpus is JPEG
  corpus_files_per_folder: int = 500
  preview_scenes: int = 6
  num_workers: int = 2                # 0 writes in this process

  def validate(self):
    super().validate()
    if self.image_format not in image_codec.FORMATS:
      raise ValueError(f"image_format must be one of {image_codec.FORMATS}, "
                       f"got {self.image_format!r}")
    if not 0 <= self.corpus_png_fraction <= 1:
      raise ValueError(f"corpus_png_fraction must be in [0, 1], got {self.corpus_png_fraction}")
    for name, value in self.sizes.as_dict().items():
      if value < 0:
        raise ValueError(f"sizes.{name} must be >= 0, got {value}")
    if self.examples_per_shard < 1 or self.corpus_files_per_folder < 1:
      raise ValueError("examples_per_shard and corpus_files_per_folder must be >= 1")


def category_names() -> list[str]:
  """Names by category id; id 0 is the background."""
  return ["background", *scene_lib.CATEGORIES]


def render_params(config: WorldConfig) -> scene_lib.RenderParams:
  return scene_lib.RenderParams(**config.render.as_dict())


def scene_labels(scene: scene_lib.Scene) -> dict:
  """Every world task's ground-truth label of a scene, keyed by task name."""
  return {name: task.world_label(scene)
          for name, task in schema_lib.Schema(task_params()).tasks.items()}


@dataclasses.dataclass(frozen=True)
class _Split:
  """How one split is written: which tasks it labels, where, in what form."""
  name: str
  path: str            # relative to the output directory, without shard suffix
  tasks: tuple[str, ...]
  files: bool = False  # plain image files instead of TFRecords
  partial: bool = False  # a random non-empty subset of the teacher tasks


def _splits() -> list[_Split]:
  teachers, every_task = tuple(teacher_tasks()), tuple(task_params())
  teacher_splits = [_Split(t, f"labeled/{t}/train", (t,)) for t in teachers]
  return teacher_splits + [
      _Split("corpus", "corpus/images/part", (), files=True),
      _Split("corpus_partial", "corpus/partial/partial", teachers, partial=True),
      _Split("eval", "eval/eval", every_task),
      _Split("transfer_train", "transfer/train", every_task),
      _Split("transfer_eval", "transfer/eval", every_task),
  ]


@dataclasses.dataclass(frozen=True)
class _Job:
  split: _Split
  shard: int
  num_shards: int
  start: int
  stop: int


def _jobs(config: WorldConfig) -> Iterator[_Job]:
  sizes = config.sizes.as_dict()
  for split in _splits():
    count = sizes[split.name]
    per_job = config.corpus_files_per_folder if split.files else config.examples_per_shard
    num_shards = math.ceil(count / per_job)
    for shard in range(num_shards):
      yield _Job(split, shard, num_shards, shard * per_job, min(count, (shard + 1) * per_job))


def _shard_path(output_dir: str, job: _Job) -> str:
  if job.split.files:
    return os.path.join(output_dir, f"{job.split.path}-{job.shard:03d}")
  return os.path.join(output_dir,
                      f"{job.split.path}-{job.shard:05d}-of-{job.num_shards:05d}.tfrecord")


def _write_job(config_dict: dict, output_dir: str, job: _Job) -> int:
  """Renders and writes one shard (or corpus folder); returns scenes written."""
  config = WorldConfig(config_dict)
  params = render_params(config)
  schema = schema_lib.Schema({t: task_params()[t] for t in job.split.tasks})
  path = _shard_path(output_dir, job)
  tf.io.gfile.makedirs(path if job.split.files else os.path.dirname(path))
  # Shards appear under their final name only when complete.
  writer = None if job.split.files else tf.io.TFRecordWriter(path + ".incomplete")
  for index in range(job.start, job.stop):
    rng = scene_lib.scene_rng(config.seed, job.split.name, index)
    scene = scene_lib.render_scene(rng, params)
    if job.split.files:
      png = rng.random() < config.corpus_png_fraction
      data = (image_codec.encode_png(scene.image) if png else
              image_codec.encode_jpeg(scene.image, config.jpeg_quality))
      with tf.io.gfile.GFile(os.path.join(path, f"{index:07d}.{'png' if png else 'jpg'}"),
                             "wb") as f:
        f.write(data)
      continue
    tasks = job.split.tasks
    if job.split.partial:
      tasks = tuple(t for t in tasks if rng.random() < 0.5) or (tasks[rng.integers(len(tasks))],)
    example = schema.encode(scene.image, {t: schema.tasks[t].world_label(scene) for t in tasks},
                            image_format=config.image_format,
                            jpeg_quality=config.jpeg_quality)
    writer.write(example.SerializeToString(deterministic=True))
  if writer is not None:
    writer.close()
    tf.io.gfile.rename(path + ".incomplete", path, overwrite=True)
  return job.stop - job.start


def write_preview(config: WorldConfig, path: str) -> None:
  """A sheet of eval scenes with every label drawn (boxes, mask, depth, normals)."""
  params = render_params(config)
  tasks = schema_lib.Schema(task_params()).tasks
  rows = []
  for index in range(config.preview_scenes):
    scene = scene_lib.render_scene(scene_lib.scene_rng(config.seed, "eval", index), params)
    rows.append(visualize.labels_panels(scene.image, scene_labels(scene), tasks,
                                        category_names(), top_k=1))
  visualize.save_png(visualize.grid(rows), path)


def write_world(config: WorldConfig, output_dir: str, progress=print) -> dict:
  """Writes every split, the preview and `world.json` (returned) under `output_dir`.

  `output_dir` is any tf.io.gfile directory; `progress` is called with one line
  of text as shards finish.
  """
  tf.io.gfile.makedirs(output_dir)
  jobs = list(_jobs(config))
  total = sum(j.stop - j.start for j in jobs)
  start_time = time.perf_counter()
  done = 0
  config_dict = config.as_dict()
  with contextlib.ExitStack() as stack:
    if config.num_workers:  # spawn: TensorFlow does not survive fork
      pool = stack.enter_context(concurrent.futures.ProcessPoolExecutor(
          config.num_workers, mp_context=multiprocessing.get_context("spawn")))
      results = (f.result() for f in concurrent.futures.as_completed(
          [pool.submit(_write_job, config_dict, output_dir, job) for job in jobs]))
    else:  # in this process, e.g. with tasks registered at run time
      results = (_write_job(config_dict, output_dir, job) for job in jobs)
    for scenes in results:
      done += scenes
      elapsed = time.perf_counter() - start_time
      progress(f"world: {done}/{total} scenes ({done / max(elapsed, 1e-9):.0f}/s)")
  seconds = time.perf_counter() - start_time
  if config.preview_scenes:
    write_preview(config, os.path.join(output_dir, "preview.png"))

  sizes = config.sizes.as_dict()
  splits = {}
  for split in _splits():
    pattern = "corpus/images/*/*" if split.files else f"{split.path}-*.tfrecord"
    splits[split.name] = {"pattern": os.path.join(output_dir, pattern),
                          "count": sizes[split.name], "tasks": list(split.tasks),
                          "partial": split.partial}
  metadata = {
      "schema_version": schema_lib.SCHEMA_VERSION,
      "categories": category_names(),
      "num_classes": scene_lib.NUM_CLASSES,
      "task_params": task_params(),
      "image_size": [config.render.height, config.render.width],
      "splits": splits,
      "config": config_dict,
      "scenes": total,
      "seconds": round(seconds, 3),
      "scenes_per_second": round(total / max(seconds, 1e-9), 1),
  }
  write_metadata(output_dir, metadata)
  return metadata


METADATA_FILE = "world.json"


def write_metadata(output_dir: str, metadata: dict) -> None:
  """Writes `world.json`, what every `--world_dir` binary reads: `categories`,
  `num_classes`, `task_params`, `splits` ({name: {pattern, count, tasks}}).
  The world and converted data sets (`must.data.convert`) both write it here."""
  with tf.io.gfile.GFile(os.path.join(output_dir, METADATA_FILE), "w") as f:
    json.dump(metadata, f, indent=2)


def load_metadata(world_dir: str) -> dict:
  """Reads `world.json` of a written world (any tf.io.gfile path), naming it when missing."""
  path = os.path.join(world_dir, METADATA_FILE)
  if not tf.io.gfile.exists(path):
    raise FileNotFoundError(f"{path} does not exist: write the world first "
                            "(python -m must.world.generate --output_dir ...) or convert "
                            "a data set (python -m must.data.convert --output_dir ...)")
  with tf.io.gfile.GFile(path) as f:
    return json.load(f)
