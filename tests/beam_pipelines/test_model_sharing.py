"""--large_model / --model_copies: teachers shared across a worker's processes (Beam's
`share_model_across_processes`, `model_copies`) label exactly as per-process ones do."""
import glob
import io
import os

from apache_beam.options import pipeline_options
from apache_beam.testing import test_pipeline
import numpy as np
from PIL import Image
import pytest
import tensorflow as tf
import yaml

from beam_pipelines import common
from beam_pipelines import inference
from beam_pipelines import pseudo_label
from must import cli
from tests.beam_pipelines import fake_teachers


def _corpus(root) -> str:
  root.mkdir()
  for i, size in enumerate([(20, 30), (48, 40), (64, 64)]):
    pixels = np.random.default_rng(i).integers(0, 256, (*size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    (root / f"{i}.png").write_bytes(buffer.getvalue())
  return str(root / "*.png")


def _teachers_config(tmp_path) -> str:
  teachers = fake_teachers.write(str(tmp_path / "teachers"))
  path = tmp_path / "teachers.yaml"
  path.write_text(yaml.safe_dump({"teachers": [
      {"task": t, "path": p, "batch_size": 2} for t, p in teachers.items()]}))
  return str(path)


def _flags(tmp_path, *extra):
  return [f"--input_pattern={_corpus(tmp_path / 'corpus')}",
          f"--teachers_config={_teachers_config(tmp_path)}",
          f"--output_dir={tmp_path / 'out'}", *extra]


def test_the_flags_reach_the_handler(tmp_path):
  options = common.make_options(pseudo_label.PseudoLabelOptions,
                                _flags(tmp_path, "--model_copies=2"))
  config = pseudo_label.run_config(options)
  assert (config["options"]["large_model"], config["options"]["model_copies"]) == (False, 2)
  specs = [inference.TeacherSpec("depth", "x")]
  handler = inference.TeachersModelHandler(specs, model_copies=2)
  assert handler.share_model_across_processes() and handler.model_copies() == 2
  assert inference.TeachersModelHandler(specs, large_model=True).share_model_across_processes()
  assert not inference.TeachersModelHandler(specs).share_model_across_processes()


def test_zero_model_copies_is_a_user_error(tmp_path):
  with pytest.raises(cli.UserError, match="--model_copies must be >= 1, got 0"):
    pseudo_label.run(_flags(tmp_path, "--model_copies=0"), fake_teachers.load)


def _records(tmp_path, name, **sharing):
  config = pseudo_label.resolve_config(yaml.safe_load(open(_teachers_config(tmp_path))))
  output_dir = str(tmp_path / name)
  config["options"] = {"input_pattern": str(tmp_path / "corpus" / "*.png"),
                       "input_format": pseudo_label.IMAGES, "output_dir": output_dir,
                       "num_shards": 1, "max_pixels": 1_000_000,
                       "inference_mode": pseudo_label.FUSED, **sharing}
  options = pipeline_options.PipelineOptions(["--runner=DirectRunner"])
  with test_pipeline.TestPipeline(options=options) as p:
    _ = p | pseudo_label.PseudoLabel(config, loader=fake_teachers.load)
  files = glob.glob(os.path.join(output_dir, "pseudo_labeled-*.tfrecord"))
  return sorted(r.numpy() for r in tf.data.TFRecordDataset(files))


def test_shared_teachers_label_as_per_process_ones(tmp_path):
  _corpus(tmp_path / "corpus")
  per_process = _records(tmp_path, "per_process")
  # Beam serves a shared model through a proxy from a process of its own.
  shared = _records(tmp_path, "shared", large_model=True, model_copies=1)
  assert len(per_process) == 3 and shared == per_process
