"""Fixtures of the Beam pipeline tests: shards labeled once per test run."""
import os

import pytest

from tests.beam_pipelines import labeled_shards


@pytest.fixture(scope="session")
def fake_labeled(tiny_world, tmp_path_factory) -> str:
  """The tiny world's corpus labeled by the real pipeline with the fake teachers:
  the folder of its shards and summary.json."""
  root = str(tmp_path_factory.mktemp("fake_labeled"))
  return labeled_shards.label_with_fake_teachers(
      root, os.path.join(tiny_world, "corpus/images/*/*"))
