"""A run's own output dir: lock, refusal of another run's output, cleanup, publish."""
import json
import os
import subprocess
import sys

import pytest

from beam_pipelines import run_dir
from must import cli


def _stage(out: run_dir.RunDir, files: dict[str, str]) -> None:
  for name, text in files.items():
    path = os.path.join(out.staging, name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
      f.write(text)


def test_publish_moves_the_staged_files_into_place_and_lists_them(tmp_path):
  with run_dir.RunDir(str(tmp_path)) as out:
    assert os.path.exists(tmp_path / run_dir.LOCK_FILE)
    _stage(out, {"a-00000-of-00001.tfrecord": "a", "files/x/1.png": "1",
                 "beam-temp-a-123/part": "temp", "summary.json": json.dumps({"counts": {}})})
    assert not (tmp_path / "a-00000-of-00001.tfrecord").exists()  # nothing before publish
    summary = out.publish("summary.json")
  assert summary["files"] == ["a-00000-of-00001.tfrecord", "files/x/1.png"]
  assert json.loads((tmp_path / "summary.json").read_text())["files"] == summary["files"]
  assert sorted(os.listdir(tmp_path)) == ["a-00000-of-00001.tfrecord", "files", "summary.json"]
  assert (tmp_path / "files/x/1.png").read_text() == "1"


def test_another_runs_output_is_refused_unless_overwrite_removes_it(tmp_path):
  (tmp_path / "old-00000-of-00003.tfrecord").write_text("old")
  (tmp_path / "files").mkdir()
  with pytest.raises(cli.UserError, match=r"holds another run's output \(files, old-.*--overwrite"):
    with run_dir.RunDir(str(tmp_path)):
      pass
  assert not (tmp_path / run_dir.LOCK_FILE).exists()  # a refused run leaves no lock
  with run_dir.RunDir(str(tmp_path), overwrite=True) as out:
    assert os.listdir(tmp_path) == sorted([run_dir.LOCK_FILE, os.path.basename(out.staging)])


def test_a_second_run_into_a_locked_dir_stops_naming_the_lock_and_its_run(tmp_path):
  with run_dir.RunDir(str(tmp_path)) as first:
    with pytest.raises(cli.UserError, match=f"locked by .*{run_dir.LOCK_FILE}, held by run "
                       f"{first.run_id}"):
      with run_dir.RunDir(str(tmp_path), overwrite=True):
        pass
    assert os.path.isdir(first.staging)  # the first run's files are untouched
  assert not (tmp_path / run_dir.LOCK_FILE).exists()


def test_a_killed_runs_lock_and_temp_folders_are_cleared_by_the_next_run(tmp_path):
  dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                        capture_output=True, text=True, check=True)
  with run_dir.RunDir(str(tmp_path)) as killed:
    _stage(killed, {"beam-temp-x/part": "partial"})
    lock = json.loads((tmp_path / run_dir.LOCK_FILE).read_text())
  (tmp_path / run_dir.LOCK_FILE).write_text(json.dumps({**lock, "pid": int(dead.stdout)}))
  (tmp_path / "beam-temp-pseudo_labeled-1").mkdir()
  with run_dir.RunDir(str(tmp_path)) as out:
    assert sorted(os.listdir(tmp_path)) == sorted([run_dir.LOCK_FILE,
                                                   os.path.basename(out.staging)])


def test_an_unwritable_output_dir_is_a_user_error(tmp_path):
  (tmp_path / "file").write_text("")
  with pytest.raises(cli.UserError, match="--output_dir .*file/out: cannot create it"):
    with run_dir.RunDir(str(tmp_path / "file" / "out")):
      pass


def test_an_output_dir_holding_the_input_is_refused_even_with_overwrite(tmp_path):
  (tmp_path / "shard.tfrecord").write_text("input")
  with pytest.raises(cli.UserError, match="holds the input --input_pattern"):
    with run_dir.RunDir(str(tmp_path), overwrite=True, input_pattern=f"{tmp_path}/*.tfrecord"):
      pass
  assert (tmp_path / "shard.tfrecord").exists()
  with run_dir.RunDir(str(tmp_path / "out"), input_pattern=f"{tmp_path}/*.tfrecord"):
    pass
