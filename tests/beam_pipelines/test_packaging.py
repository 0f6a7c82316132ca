"""The project packages for Dataflow's `--setup_file ./setup.py` (an sdist that
carries the pipeline and the library it imports)."""
import pathlib
import shutil
import subprocess
import sys
import tarfile

REPO = pathlib.Path(__file__).resolve().parents[2]


def test_setup_file_builds_an_sdist_with_the_pipeline(tmp_path):
  source = tmp_path / "src"
  source.mkdir()
  for name in ("setup.py", "pyproject.toml"):
    shutil.copy(REPO / name, source / name)
  for package in ("must", "teachers", "beam_pipelines"):
    shutil.copytree(REPO / package, source / package,
                    ignore=shutil.ignore_patterns("__pycache__"))
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
