"""The one error rule: exit codes, one line, traceback only with --verbose; every binary."""
import os
import subprocess
import sys
import tomllib

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


# Every binary, as pyproject.toml's console scripts name them (tests/test_pyproject.py
# checks that each one is there).
with open(os.path.join(REPO, "pyproject.toml"), "rb") as _f:
  BINARIES = sorted({target.partition(":")[0]
                     for target in tomllib.load(_f)["project"]["scripts"].values()})


@pytest.mark.slow
def test_every_binary_stops_on_an_unknown_flag_with_one_line_and_code_2(run_concurrently):
  results = run_concurrently([[sys.executable, "-m", module, "--no_such_flag=1"]
                              for module in BINARIES], cwd=REPO, timeout=300,
                             env={**os.environ, "PYTHONPATH": REPO})
  for module, result in zip(BINARIES, results):
    lines = [line for line in result.stderr.splitlines() if f"{module}: error:" in line]
    assert result.returncode == cli.USER_ERROR, (module, result.stderr[-2000:])
    assert len(lines) == 1 and "no_such_flag" in lines[0], (module, result.stderr[-2000:])
    assert "Traceback" not in result.stderr, module


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


def test_an_absl_binary_prints_each_tensorflow_log_line_once(tmp_path):
  script = tmp_path / "binary.py"
  script.write_text("import tensorflow as tf\nfrom must import cli\n"
                    "cli.run_absl(lambda argv: tf.get_logger().warning('a line of its own'))\n")
  result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "PYTHONPATH": REPO})
  assert result.returncode == 0, result.stderr[-2000:]
  assert result.stderr.count("a line of its own") == 1, result.stderr[-2000:]
