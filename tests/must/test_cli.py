"""The one error rule: exit codes, one line, traceback only with --verbose; every binary."""
import os
import subprocess
import sys

import pytest

from must import cli
from must import configs

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _stopped(main, argv, capsys):
  with pytest.raises(SystemExit) as stopped:
    cli.run_main("prog", main, argv)
  return stopped.value.code, capsys.readouterr().err


@pytest.mark.parametrize("error,code", [
    (cli.UserError("--x: expected a number"), cli.USER_ERROR),
    (configs.ConfigError("f.yaml: a.b must be int"), cli.USER_ERROR),
    (cli.JobFailed("3 of 4 images failed"), cli.JOB_FAILED)])
def test_user_errors_and_failed_jobs_give_one_line_and_their_code(error, code, capsys):
  def main(argv):
    raise error
  assert _stopped(main, [], capsys) == (code, f"prog: error: {error}\n")
  code_verbose, err = _stopped(main, ["--verbose"], capsys)
  assert code_verbose == code and "Traceback" in err and err.endswith(f"prog: error: {error}\n")


def test_an_internal_error_keeps_its_traceback_and_verbose_is_not_passed_on():
  seen = []

  def main(argv):
    seen.append(argv)
    raise KeyError("bug")
  with pytest.raises(KeyError):
    cli.run_main("prog", main, ["--a=1", "--verbose"])
  assert seen == [["--a=1"]]


BINARIES = ["must.train", "teachers.train", "teachers.export", "teachers.evaluate",
            "must.student.export", "must.world.generate", "must.demo",
            "beam_pipelines.pseudo_label", "beam_pipelines.export",
            "beam_pipelines.inspect_labels"]


@pytest.mark.slow
@pytest.mark.parametrize("module", BINARIES)
def test_every_binary_stops_on_an_unknown_flag_with_one_line_and_code_2(module, tmp_path):
  result = subprocess.run([sys.executable, "-m", module, "--no_such_flag=1"], cwd=REPO,
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": REPO})
  lines = [line for line in result.stderr.splitlines() if f"{module}: error:" in line]
  assert result.returncode == cli.USER_ERROR, result.stderr[-2000:]
  assert len(lines) == 1 and "no_such_flag" in lines[0], result.stderr[-2000:]
  assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_the_demo_refuses_a_gs_output_dir_without_making_local_folders(tmp_path):
  result = subprocess.run([sys.executable, "-m", "must.demo", "--output_dir=gs://bucket/demo",
                           f"--config_dir={REPO}/configs/demo"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": REPO})
  assert result.returncode == cli.USER_ERROR, result.stderr[-2000:]
  assert "must.demo: error: --output_dir gs://bucket/demo: the demo runs on local paths" \
      in result.stderr
  assert os.listdir(tmp_path) == []
