"""Fixtures shared across the test tree."""
import concurrent.futures
import pathlib
import subprocess

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
TINY_WORLD_CONFIG = str(REPO / "configs/world/tiny.yaml")


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory) -> str:
  """A tiny procedural world (64x64 scenes, a few per split), written once per run."""
  from must import configs  # pylint: disable=g-import-not-at-top
  from must.world import writer  # pylint: disable=g-import-not-at-top
  output_dir = str(tmp_path_factory.mktemp("tiny_world"))
  writer.write_world(configs.load(writer.WorldConfig(), TINY_WORLD_CONFIG), output_dir,
                     progress=lambda line: None)
  return output_dir


@pytest.fixture
def checkpoint_values():
  """model dir -> {variable name: value} of its latest checkpoint (weights and
  optimizer slots)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  def values(model_dir) -> dict:
    checkpoint = tf.train.latest_checkpoint(str(model_dir))
    assert checkpoint, f"no checkpoint in {model_dir}"
    return {name: tf.train.load_variable(checkpoint, name)
            for name, _ in tf.train.list_variables(checkpoint)
            if name.endswith("VARIABLE_VALUE")}
  return values


@pytest.fixture
def run_concurrently():
  """commands -> their CompletedProcess (text output), run 4 at a time: each of
  these short processes spends most of its time importing TensorFlow, mostly on
  one core."""
  def run(commands, **kwargs):
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
      return list(pool.map(lambda command: subprocess.run(
          command, capture_output=True, text=True, **kwargs), commands))
  return run
