"""The demo orchestration: runs the stages that exist, skips finished ones."""
import json
import pathlib
import re
import shutil

import pytest

from must import configs
from must import demo

REPO = pathlib.Path(__file__).parents[2]

# One small teacher is enough to check the orchestration of the real binaries.
TINY_TEACHERS = {"classification": {
    "task": {"model": {"backbone": {"resnet": {"model_id": 10, "depth_multiplier": 0.25}}},
             "train_data": {"global_batch_size": 4}, "validation_data": {"global_batch_size": 4}},
    "trainer": {"train_steps": 2, "steps_per_loop": 1, "checkpoint_interval": 2}}}


TINY_STUDENT = {
    "task": {"model": {"backbone": {"resnet": {"model_id": 10, "depth_multiplier": 0.25}},
                       "decoder": {"fpn": {"num_filters": 16}}},
             "train_data": {"global_batch_size": 4}, "validation_data": {"global_batch_size": 4}},
    "trainer": {"train_steps": 2, "steps_per_loop": 1, "checkpoint_interval": 2}}


def test_runs_then_skips_then_reruns_on_config_change(tmp_path):
  config_dir, output_dir = tmp_path / "configs", tmp_path / "out"
  config_dir.mkdir()
  shutil.copy(REPO / "configs/world/tiny.yaml", config_dir / "world.yaml")
  (config_dir / "teachers.yaml").write_text(json.dumps(TINY_TEACHERS))
  shutil.copy(REPO / "configs/demo/pseudo_label.yaml", config_dir / "pseudo_label.yaml")
  (config_dir / "student.yaml").write_text(json.dumps(TINY_STUDENT))
  (config_dir / "baselines.yaml").write_text(json.dumps({"tasks": ["classification"]}))
  (config_dir / "transfer.yaml").write_text(json.dumps(
      {"tasks": ["surface_normals"], "student": TINY_STUDENT}))

  first = demo.run(str(config_dir), str(output_dir), jobs=2)
  assert first["world"]["status"] == "ran" and first["teachers"]["status"] == "ran"
  assert (output_dir / "world" / "world.json").exists()
  metrics = json.loads((output_dir / "teachers.done.json").read_text())["metrics"]
  assert 0.0 <= metrics["classification"]["top1"] <= 1.0
  assert (output_dir / "teachers/classification/export/teacher.json").exists()
  assert all(r["status"] == "ran" for r in first.values()), first
  # Every model trains and serves at the world's image size (64 here, 96 by default).
  assert json.loads((output_dir / "teachers/classification/export/teacher.json").read_text())[
      "input_size"] == [64, 64]
  counts = json.loads((output_dir / "pseudo_label.done.json").read_text())["counts"]
  assert counts["balanced"] and counts["examples_out"] > 0
  student = json.loads((output_dir / "student.done.json").read_text())["metrics"]
  assert 0.0 <= student["classification"]["top1"] <= 1.0
  baselines = json.loads((output_dir / "baselines.done.json").read_text())["metrics"]
  assert set(baselines) == {"classification"}
  transfer = json.loads((output_dir / "transfer.done.json").read_text())["metrics"]
  # The tiny teacher has the tiny student's backbone, so it is an initialization too.
  assert set(transfer) == {"scratch", "classification teacher", "MuST student"}
  assert 0 <= transfer["MuST student"]["surface_normals"]["within_11.25"] <= 1
  report = (output_dir / "report" / "report.md").read_text()
  assert "| classification | top1 |" in report
  assert "| MuST student |" in report and "surface_normals within_11.25" in report
  commands = (output_dir / "report" / "commands.sh").read_text()
  for binary in ("must.world.generate", "teachers.train", "beam_pipelines.pseudo_label",
                 "must.train", "must.student.export"):
    assert f"python -m {binary} " in commands, binary
  # Every training run is seeded with the world's seed, so a rerun gives the same numbers.
  seed = json.loads((output_dir / "world" / "world.json").read_text())["config"]["seed"]
  trainings = [line for line in commands.splitlines()
               if line.startswith(("python -m teachers.train ", "python -m must.train "))]
  assert len(trainings) >= 4 and all(f" --seed={seed} " in line for line in trainings)
  for artifact in ("metrics.png", "pseudo_labels/contact_sheet.png"):
    assert (output_dir / "report" / artifact).stat().st_size > 1000

  again = demo.run(str(config_dir), str(output_dir))
  assert all(r["status"].startswith("skipped") for r in again.values()), again

  (config_dir / "baselines.yaml").write_text(json.dumps({"tasks": ["classification"]}))
  (config_dir / "transfer.yaml").write_text(json.dumps({"tasks": []}))
  changed = demo.run(str(config_dir), str(output_dir))
  assert changed["student"]["status"].startswith("skipped")  # upstream of the change
  assert [changed[s]["status"] for s in ("transfer", "report")] == ["ran"] * 2


def test_a_failing_run_is_named_after_the_others_finish(tmp_path, capsys):
  marker = tmp_path / "finished"
  runs = {"fails": ["must.no_such_binary"],
          "succeeds": ["zipfile", "-c", str(marker), __file__]}
  try:
    demo.run_binaries(runs, jobs=2)
  except RuntimeError as e:
    assert "fails (exit 1)" in str(e) and "succeeds" not in str(e)
  else:
    raise AssertionError("a failing binary did not stop the stage")
  assert marker.exists()  # the other run went on to the end
  assert "[fails] " in capsys.readouterr().out


@pytest.mark.parametrize("setting", ["configs/demo", "configs/demo_full"])
def test_shipped_settings_pass_the_config_check(setting):
  demo.check_configs(str(REPO / setting))


@pytest.mark.parametrize("name,text,message", [
    ("transfer.yaml", "student: {trainer: {train_stepz: 3}}", "train_stepz"),
    ("student.yaml", "trainer: {train_steps: many}", "train_steps must be int"),
    ("teachers.yaml", "classification: {}\ndepht: {}", "no teacher for ['depht']"),
    ("baselines.yaml", "tasks: [detection]", "baselines for tasks with no teacher"),
    ("pseudo_label.yaml", "threshold: {}", "unknown keys ['threshold']"),
])
def test_a_bad_stage_config_stops_before_any_stage(tmp_path, name, text, message):
  config_dir, output_dir = tmp_path / "configs", tmp_path / "out"
  shutil.copytree(REPO / "configs/demo", config_dir)
  (config_dir / "teachers.yaml").write_text(json.dumps(TINY_TEACHERS))
  (config_dir / "baselines.yaml").write_text(json.dumps({"tasks": ["classification"]}))
  (config_dir / name).write_text(text)
  with pytest.raises(configs.ConfigError, match=f"{re.escape(name)}.*{re.escape(message)}"):
    demo.run(str(config_dir), str(output_dir))
  assert not output_dir.exists()
