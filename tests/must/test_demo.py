"""The demo orchestration: runs the stages that exist, skips finished ones."""
import pathlib
import shutil

from must import demo

TINY_WORLD = pathlib.Path(__file__).parents[2] / "configs/world/tiny.yaml"


def test_runs_then_skips_then_reruns_on_config_change(tmp_path):
  config_dir, output_dir = tmp_path / "configs", tmp_path / "out"
  config_dir.mkdir()
  shutil.copy(TINY_WORLD, config_dir / "world.yaml")

  first = demo.run(str(config_dir), str(output_dir))
  assert first["world"]["status"] == "ran"
  assert (output_dir / "world" / "world.json").exists()
  missing = [s for s, r in first.items() if r["status"].startswith("missing")]
  assert missing == [s for s, runner in demo.STAGES if runner is None]

  assert demo.run(str(config_dir), str(output_dir))["world"]["status"].startswith("skipped")
  assert demo.run(str(config_dir), str(output_dir), force=True)["world"]["status"] == "ran"

  with open(config_dir / "world.yaml", "a") as f:
    f.write("jpeg_quality: 90\n")
  assert demo.run(str(config_dir), str(output_dir))["world"]["status"] == "ran"
