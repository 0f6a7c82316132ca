"""The project packages for Dataflow's `--setup_file ./setup.py` (an sdist that
carries the pipeline and the library it imports), and its wheel, installed with the
lock into a fresh venv, runs the pipeline on two worker processes from outside the
source tree."""
import io
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tarfile
import textwrap
import time

import numpy as np
from PIL import Image
import pytest
import tensorflow as tf
import yaml

from tests.beam_pipelines import fake_teachers

REPO = pathlib.Path(__file__).resolve().parents[2]
NUM_IMAGES = 6


def _source_copy(tmp_path) -> pathlib.Path:
  """The files the package is built from, copied (a build leaves nothing in the tree)."""
  source = tmp_path / "src"
  source.mkdir()
  for name in ("setup.py", "pyproject.toml"):
    shutil.copy(REPO / name, source / name)
  for package in ("must", "teachers", "beam_pipelines"):
    shutil.copytree(REPO / package, source / package,
                    ignore=shutil.ignore_patterns("__pycache__"))
  return source


def test_setup_file_builds_an_sdist_with_the_pipeline(tmp_path):
  source = _source_copy(tmp_path)
  # What Dataflow runs on --setup_file.
  subprocess.run([sys.executable, "setup.py", "-q", "sdist", "--dist-dir", str(tmp_path / "dist")],
                 cwd=source, check=True, capture_output=True)
  (sdist,) = (tmp_path / "dist").glob("*.tar.gz")
  with tarfile.open(sdist) as archive:
    names = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
  for module in ("beam_pipelines/pseudo_label.py", "beam_pipelines/inference.py",
                 "beam_pipelines/decode.py", "must/schema.py", "must/tasks/depth.py",
                 "must/serving.py", "teachers/export.py"):
    assert module in names, module


# Runs the installed module as `python -m beam_pipelines.pseudo_label` does, with the fake
# teachers as the handler's default loader (the binary has no flag for a loader); the
# handler pickles it by reference, so the workers import it from PYTHONPATH.
_DRIVER = """
import os, runpy, sys
import beam_pipelines
from beam_pipelines import inference
import recording_teachers
print("driver", os.getpid(), beam_pipelines.__file__, flush=True)
inference.TeachersModelHandler.__init__.__defaults__ = (recording_teachers.load,)
runpy.run_module("beam_pipelines.pseudo_label", run_name="__main__", alter_sys=True)
"""

_RECORDING_TEACHERS = """
import os
import beam_pipelines
import fake_teachers

def load(path, task=None):
  # Notes which process loaded the teacher, and where it imported the package from.
  with open(os.path.join(path, f"loaded_by_{os.getpid()}.txt"), "w") as f:
    f.write(beam_pipelines.__file__)
  return fake_teachers.load(path, task)
"""


def _corpus(root: pathlib.Path) -> str:
  root.mkdir()
  for i in range(NUM_IMAGES):
    pixels = np.random.default_rng(i).integers(0, 256, (24 + 4 * i, 32, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    (root / f"{i}.png").write_bytes(buffer.getvalue())
  return str(root / "*.png")


@pytest.mark.slow
def test_the_installed_wheel_labels_a_corpus_on_two_worker_processes(tmp_path):
  """Wheel -> fresh venv (uv, from requirements.lock) -> the pipeline from another cwd."""
  pytest.importorskip("uv", reason="make setup installs uv beside the stack")
  source, timings = _source_copy(tmp_path), {}
  start = time.monotonic()
  subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
                  "--no-build-isolation", "-w", str(tmp_path / "dist"), str(source)],
                 check=True, capture_output=True)
  (wheel,) = (tmp_path / "dist").glob("must_data_engine-*.whl")
  timings["wheel"] = time.monotonic() - start
  venv, uv = tmp_path / "venv", [sys.executable, "-m", "uv"]
  python = venv / "bin" / "python"
  start = time.monotonic()
  subprocess.run([*uv, "venv", "--quiet", "--python", sys.executable, str(venv)], check=True)
  subprocess.run([*uv, "pip", "install", "--quiet", "--python", str(python),
                  "-r", str(REPO / "requirements.lock")], check=True)
  subprocess.run([*uv, "pip", "install", "--quiet", "--no-deps", "--python", str(python),
                  str(wheel)], check=True)
  timings["venv"] = time.monotonic() - start

  teachers = fake_teachers.write(str(tmp_path / "teachers"))
  config = tmp_path / "teachers.yaml"
  config.write_text(yaml.safe_dump({"teachers": [
      {"task": t, "path": p, "batch_size": 2} for t, p in teachers.items()]}))
  driver = tmp_path / "driver"  # the cwd: outside the source tree, nothing of it on the path
  driver.mkdir()
  shutil.copy(REPO / "tests/beam_pipelines/fake_teachers.py", driver / "fake_teachers.py")
  (driver / "recording_teachers.py").write_text(textwrap.dedent(_RECORDING_TEACHERS))
  (driver / "driver.py").write_text(textwrap.dedent(_DRIVER))
  env = {**os.environ, "PYTHONPATH": str(driver)}
  output_dir = tmp_path / "out"
  start = time.monotonic()
  result = subprocess.run(
      [str(python), "driver.py", "--runner", "DirectRunner",
       "--direct_running_mode", "multi_processing", "--direct_num_workers", "2",
       "--input_pattern", _corpus(tmp_path / "corpus"), "--teachers_config", str(config),
       "--output_dir", str(output_dir), "--num_shards", "2"],
      cwd=driver, env=env, capture_output=True, text=True, timeout=600)
  timings["run"] = time.monotonic() - start
  print("seconds:", {k: round(v, 1) for k, v in timings.items()})
  assert result.returncode == 0, result.stderr[-3000:]

  site_packages = str(next((venv / "lib").glob("python3*/site-packages")))
  (driver_line,) = [l for l in result.stdout.splitlines() if l.startswith("driver ")]
  _, driver_pid, imported = driver_line.split()
  assert imported.startswith(site_packages), imported
  assert not imported.startswith(str(REPO)), imported
  summary = json.loads((output_dir / "summary.json").read_text())
  assert summary["counts"] == {"images_in": NUM_IMAGES, "examples_out": NUM_IMAGES,
                               "dead_letters": 0, "duplicates": 0, "balanced": True}
  shards = [f"pseudo_labeled-0000{i}-of-00002.tfrecord" for i in range(2)]
  assert summary["files"] == sorted(["dead_letters.jsonl", *shards])
  records = tf.data.TFRecordDataset([str(output_dir / shard) for shard in shards])
  assert sum(1 for _ in records) == NUM_IMAGES
  loads = {path.name: path.read_text() for path in pathlib.Path(teachers["depth"]).glob(
      "loaded_by_*.txt")}
  assert loads and f"loaded_by_{driver_pid}.txt" not in loads, loads  # worker processes
  assert all(path.startswith(site_packages) for path in loads.values()), loads
