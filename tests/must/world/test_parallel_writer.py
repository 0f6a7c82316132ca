"""Spawned workers write the world that one process writes (the demo's worlds use two workers;
the tests' tiny world is written in-process)."""
import json
import pathlib

import pytest

from must import configs
from must.world import writer

TINY = str(pathlib.Path(__file__).resolve().parents[3] / "configs/world/tiny.yaml")


def _write(output_dir: pathlib.Path, num_workers: int) -> dict:
  """The files it writes, world.json parsed without its timing and worker count."""
  config = configs.load(writer.WorldConfig(), TINY, {"num_workers": num_workers})
  writer.write_world(config, str(output_dir), progress=lambda line: None)
  files = {path.relative_to(output_dir).as_posix(): path.read_bytes()
           for path in output_dir.rglob("*") if path.is_file()}
  world = json.loads(files.pop("world.json").decode().replace(str(output_dir), "<world>"))
  del world["config"]["num_workers"], world["seconds"], world["scenes_per_second"]
  return {"world.json": world, **files}


@pytest.mark.slow  # each spawned worker imports TensorFlow: about a minute on two cores
def test_two_workers_write_the_same_files_as_one_process(tmp_path):
  in_process = _write(tmp_path / "in_process", num_workers=0)
  spawned = _write(tmp_path / "spawned", num_workers=2)
  assert spawned.pop("world.json") == in_process.pop("world.json")
  assert sorted(spawned) == sorted(in_process)
  assert [name for name in in_process if spawned[name] != in_process[name]] == []
