"""Pseudo-labeled shards for the export and inspection tests.

`label_with_fake_teachers` runs the real labeling pipeline (`PseudoLabel`) with
the fake teachers of `fake_teachers` over a corpus, so the shards, their
`summary.json` and the teachers' metadata are exactly what a real run writes.
`write_shard` writes hand-made examples in the schema, for tests that need
labels chosen one by one, with a `summary.json` of the same form.
"""
import json
import os
from typing import Any, Mapping, Sequence

from apache_beam.options import pipeline_options
from apache_beam.testing import test_pipeline
import numpy as np
import tensorflow as tf

from beam_pipelines import pseudo_label
from must import schema as schema_lib
from tests.beam_pipelines import fake_teachers

CATEGORIES = ["background", "sphere", "cube", "cylinder", "cone", "pyramid", "torus", "star",
              "capsule", "cross", "octahedron"]
TASK_PARAMS = {"classification": {"num_classes": 11}, "detection": {"num_classes": 11},
               "segmentation": {"num_classes": 11}, "depth": {}}


def _fake_teachers_with_names(root: str) -> dict[str, str]:
  """The fake teachers, their teacher.json naming the categories as an export does."""
  paths = fake_teachers.write(root)
  for path in paths.values():
    metadata_path = os.path.join(path, "teacher.json")
    with open(metadata_path) as f:
      metadata = json.load(f)
    if metadata["num_classes"]:
      metadata["class_names"] = CATEGORIES
    with open(metadata_path, "w") as f:
      json.dump(metadata, f)
  return paths


def label_with_fake_teachers(root: str, input_pattern: str,
                             input_format: str = pseudo_label.IMAGES) -> str:
  """Runs the labeling pipeline with fake teachers; returns its output dir."""
  teachers = _fake_teachers_with_names(os.path.join(root, "teachers"))
  config = pseudo_label.resolve_config({
      "teachers": [{"task": t, "path": p, "batch_size": 4} for t, p in teachers.items()]})
  output_dir = os.path.join(root, "pseudo_labeled")
  config["options"] = {"input_pattern": input_pattern, "input_format": input_format,
                       "output_dir": output_dir, "num_shards": 2, "max_pixels": 1_000_000,
                       "inference_mode": pseudo_label.FUSED}
  options = pipeline_options.PipelineOptions(["--runner=DirectRunner"])
  with test_pipeline.TestPipeline(options=options) as p:
    _ = p | pseudo_label.PseudoLabel(config, loader=fake_teachers.load)
  return output_dir


def write_shard(path: str, examples: Sequence[Mapping[str, Any]],
                task_params: Mapping[str, Any] = TASK_PARAMS) -> None:
  """Writes examples as one TFRecord shard and a labeling summary beside it.

  Args:
    path: the shard's path; `summary.json` goes in its folder.
    examples: dicts with 'image' (uint8 [H, W, 3]), 'labels' ({task: label}),
      'id', and optionally 'provenance' (one or per task), 'filename', or
      'record' (serialized bytes written as they are).
    task_params: the schema's task parameters.
  """
  schema = schema_lib.Schema(task_params)
  with tf.io.TFRecordWriter(path) as writer:
    for e in examples:
      if "record" in e:
        writer.write(e["record"])
        continue
      example = schema.encode(
          e["image"], e["labels"], image_format="png", source_id=e["id"],
          provenance=e.get("provenance", schema_lib.Provenance.pseudo("hand", "v1")))
      example.features.feature["image/filename"].bytes_list.value.append(
          e.get("filename", f"/corpus/{e['id']}.png").encode())
      writer.write(example.SerializeToString())
  summary = {"config": {"task_params": dict(task_params), "teachers": [
      {"task": t, "class_names": CATEGORIES} for t in task_params]}}
  with open(os.path.join(os.path.dirname(path), "summary.json"), "w") as f:
    json.dump(summary, f)


def random_image(size: tuple[int, int], seed: int) -> np.ndarray:
  return np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)
