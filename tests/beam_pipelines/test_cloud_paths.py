"""gs:// paths as far as an offline machine goes: the pipelines' options and both file
system layers take them, and without credentials a binary stops at once with one line
naming them (rather than Beam's GCS client retrying anonymously for minutes)."""
import os
import pathlib
import subprocess
import sys
import time

from apache_beam.io import filesystems
from apache_beam.io.gcp import gcsfilesystem
import google.auth
from google.auth import exceptions
import pytest
import tensorflow as tf

from beam_pipelines import common
from beam_pipelines import export
from beam_pipelines import inspect_labels
from beam_pipelines import pseudo_label
from must import cli

REPO = pathlib.Path(__file__).resolve().parents[2]
BUCKET = "gs://must-test-bucket"
FAIL_WITHIN_S = 30  # measured: 0.01 s for the credentials look-up here


@pytest.fixture
def no_credentials(tmp_path, monkeypatch):
  """An environment where Application Default Credentials find nothing: no key file,
  an empty gcloud config."""
  monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
  monkeypatch.setenv("CLOUDSDK_CONFIG", str(tmp_path / "gcloud"))
  try:
    google.auth.default()
  except exceptions.DefaultCredentialsError:
    return {"GOOGLE_APPLICATION_CREDENTIALS": None, "CLOUDSDK_CONFIG": str(tmp_path / "gcloud")}
  pytest.skip("this machine has Google Cloud credentials (a GCE metadata server)")


@pytest.mark.parametrize("options_class", [pseudo_label.PseudoLabelOptions,
                                           export.ExportOptions,
                                           inspect_labels.InspectOptions])
def test_the_pipelines_options_take_gs_paths(options_class):
  argv = [f"--input_pattern={BUCKET}/corpus/*/*", f"--output_dir={BUCKET}/out",
          f"--temp_location={BUCKET}/tmp", "--runner=DataflowRunner", "--project=p",
          "--region=r", "--setup_file=./setup.py", "--sdk_container_image=r-docker.pkg.dev/p/r/m:1",
          "--sdk_location=container", "--machine_type=n1-standard-8", "--dataflow_service_options="
          "worker_accelerator=type:nvidia-tesla-t4;count:1;install-nvidia-driver"]
  options = common.make_options(options_class, argv)
  view = options.view_as(common.DataOptions)
  assert (view.input_pattern, view.output_dir) == (f"{BUCKET}/corpus/*/*", f"{BUCKET}/out")


def test_beam_and_tensorflow_file_systems_take_gs_paths():
  # Beam's GCS file system is there only with apache-beam[gcp] (requirements.txt).
  assert isinstance(filesystems.FileSystems.get_filesystem(f"{BUCKET}/a"),
                    gcsfilesystem.GCSFileSystem)
  assert common.join(BUCKET, "out", "summary.json") == f"{BUCKET}/out/summary.json"
  # TensorFlow's own GCS file system (tf.io.gfile, tf.data) is built in.
  assert "gs" in tf.io.gfile.get_registered_schemes()


@pytest.mark.parametrize("argv, where", [
    (["--output_dir", f"{BUCKET}/o"], f"--output_dir {BUCKET}/o"),
    ([f"--model_dir={BUCKET}/m", "--mode=train"], f"--model_dir {BUCKET}/m"),
    ([f"{BUCKET}/x"], f"{BUCKET}/x")])
def test_a_gs_argument_without_credentials_is_a_user_error_naming_it(no_credentials, argv, where):
  with pytest.raises(cli.UserError, match=f"^{where}: no Google Cloud credentials"):
    cli.check_credentials(argv)


def test_local_arguments_need_no_credentials(no_credentials):
  cli.check_credentials(["--output_dir", "out/x", "--input_pattern=corpus/*"])


def test_the_pipeline_binary_stops_with_one_line_naming_credentials(no_credentials, capsys):
  start = time.monotonic()
  with pytest.raises(SystemExit) as stopped:
    pseudo_label.main([f"--input_pattern={BUCKET}/corpus/*/*", "--teachers_config",
                       f"{BUCKET}/teachers.yaml", f"--output_dir={BUCKET}/out"])
  took = time.monotonic() - start
  assert stopped.value.code == cli.USER_ERROR
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1, err
  assert err[0].startswith("beam_pipelines.pseudo_label: error: --input_pattern gs://")
  assert "credentials" in err[0] and "GOOGLE_APPLICATION_CREDENTIALS" in err[0]
  assert took < FAIL_WITHIN_S, took


@pytest.mark.slow
def test_an_absl_binary_stops_with_one_line_naming_credentials(no_credentials):
  env = {k: v for k, v in os.environ.items() if k != "GOOGLE_APPLICATION_CREDENTIALS"}
  env["CLOUDSDK_CONFIG"] = no_credentials["CLOUDSDK_CONFIG"]
  start = time.monotonic()
  result = subprocess.run(
      [sys.executable, "-m", "must.train", "--experiment=must_student_tiny", "--mode=train",
       f"--model_dir={BUCKET}/student"], capture_output=True, text=True, env=env,
      cwd=REPO, timeout=300)
  took = time.monotonic() - start
  assert result.returncode == cli.USER_ERROR, result.stderr[-2000:]
  assert "Traceback" not in result.stderr
  (line,) = [l for l in result.stderr.splitlines() if l.startswith("must.train: error:")]
  assert f"--model_dir {BUCKET}/student: no Google Cloud credentials" in line
  assert took < 120, took  # importing TensorFlow and Model Garden is most of it
