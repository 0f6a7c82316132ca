"""The demo orchestration: runs the stages that exist, skips finished ones."""
import json
import os
import pathlib
import re
import shlex
import shutil

import numpy as np
from official.core import exp_factory
import pytest

from must import cli
from must import configs
from must import demo
from must import evaluate
from must.world import writer

REPO = pathlib.Path(__file__).parents[2]

# Small teachers check the orchestration of the real binaries: the registered
# tiny experiments (ResNet-10 at quarter width, batches of 4), a classification
# teacher of 2 steps (its top-1 on 8 eval images says nothing), and a depth
# teacher that learns the ground plane's layout in 20 steps, so the test can
# check that a trained teacher beats chance. Their schedules follow the steps.
TINY_TEACHER_STEPS = {"classification": 2, "depth": 20}
TINY_TEACHERS = {
    "classification": {
        "experiment": "must_classification_teacher_tiny",
        "trainer": {"train_steps": 2, "steps_per_loop": 1, "checkpoint_interval": 2}},
    # 20 steps of batch 4 at 64 px, about 4 s of training steps on a CPU core:
    # delta < 1.25 of 0.48 with seed 0 (0.46 and 0.53 with seeds 2 and 1), against
    # 0.13 for a constant prediction (`_depth_chance`).
    "depth": {
        "experiment": "must_depth_teacher_tiny",
        "trainer": {"train_steps": 20, "steps_per_loop": 20, "checkpoint_interval": 20}},
}


TINY_STUDENT = {
    "experiment": "must_student_tiny",
    "trainer": {"train_steps": 2, "steps_per_loop": 1, "checkpoint_interval": 2}}


def _tiny_configs(config_dir):
  config_dir.mkdir()
  shutil.copy(REPO / "configs/world/tiny.yaml", config_dir / "world.yaml")
  (config_dir / "teachers.yaml").write_text(json.dumps(TINY_TEACHERS))
  shutil.copy(REPO / "configs/demo/pseudo_label.yaml", config_dir / "pseudo_label.yaml")
  shutil.copy(REPO / "configs/demo/rounds.yaml", config_dir / "rounds.yaml")
  (config_dir / "student.yaml").write_text(json.dumps(TINY_STUDENT))
  (config_dir / "baselines.yaml").write_text(json.dumps({"tasks": ["classification"]}))
  (config_dir / "transfer.yaml").write_text(json.dumps(
      {"tasks": ["surface_normals"], "student": TINY_STUDENT,
       "claim": {"task": "surface_normals", "rivals": ["scratch", "classification teacher"]}}))


def _depth_chance(world_dir) -> float:
  """delta < 1.25 of a constant depth prediction on the world's eval split, scored
  like the teachers (teachers.evaluate: must.evaluate with the depth task's
  registry metric). The metric aligns each prediction to the image's ground
  truth by scale and shift first, so a constant becomes each image's best
  constant (its mean inverse depth): what a teacher that learned nothing gets."""
  world = writer.load_metadata(str(world_dir))
  constant = lambda encoded: {"depth": np.ones((len(encoded), 8, 8), np.float32)}
  return evaluate.evaluate({"depth": constant}, world["splits"]["eval"]["pattern"],
                           world["task_params"])["depth"]["delta_1.25"]


@pytest.mark.slow
def test_runs_then_skips_then_reruns_on_config_change(tmp_path):
  config_dir, output_dir = tmp_path / "configs", tmp_path / "out"
  _tiny_configs(config_dir)

  first = demo.run(str(config_dir), str(output_dir), jobs=2)
  # One training seed by default, the world's (tiny.yaml: 0), in the per-seed layout.
  seed_dir = output_dir / "seed_0"
  assert list(first) == ["world"] + [f"seed_0/{stage}" for stage, _ in demo.SEED_STAGES] + [
      "report"]
  assert all(r["status"] == "ran" for r in first.values()), first
  assert (output_dir / "world" / "world.json").exists()
  metrics = json.loads((seed_dir / "teachers.done.json").read_text())["metrics"]
  assert 0.0 <= metrics["classification"]["top1"] <= 1.0
  # The trained depth teacher beats chance by a clear margin (0.48 against 0.13).
  chance = _depth_chance(output_dir / "world")
  assert 0.0 < chance < 0.3, chance
  assert metrics["depth"]["delta_1.25"] > chance + 0.2, (metrics["depth"], chance)
  assert (seed_dir / "teachers/classification/export/teacher.json").exists()
  # Every model trains and serves at the world's image size (64 here, 96 by default).
  assert json.loads((seed_dir / "teachers/classification/export/teacher.json").read_text())[
      "input_size"] == [64, 64]
  counts = json.loads((seed_dir / "pseudo_label.done.json").read_text())["counts"]
  assert counts["balanced"] and counts["examples_out"] > 0
  student = json.loads((seed_dir / "student.done.json").read_text())["metrics"]
  assert 0.0 <= student["classification"]["top1"] <= 1.0
  assert 0.0 <= student["depth"]["delta_1.25"] <= 1.0
  baselines = json.loads((seed_dir / "baselines.done.json").read_text())["metrics"]
  assert set(baselines) == {"classification"}
  transfer = json.loads((seed_dir / "transfer.done.json").read_text())["metrics"]
  # The tiny teachers have the tiny student's backbone, so they are initializations too.
  assert set(transfer) == {"scratch", "classification teacher", "depth teacher",
                           "MuST student"}
  assert 0 <= transfer["MuST student"]["surface_normals"]["within_11.25"] <= 1

  # Every training run measured its steps (the configured ones) and their seconds;
  # each stage that trains sums them and records its parallel slots, the cores its
  # training kept busy: both (jobs=2) in every stage, as the two teachers and the
  # four transfer runs go two at a time and the lone student and baseline runs
  # mirror over two CPU replicas.
  model_dirs = {"teachers": [f"teachers/{task}" for task in TINY_TEACHER_STEPS],
                "student": ["student"], "baselines": ["baselines/classification"],
                "transfer": [f"transfer/surface_normals/{init}" for init in
                             ("scratch", "classification_teacher", "depth_teacher",
                              "MuST_student")]}
  for stage, dirs in model_dirs.items():
    timings = [json.loads((seed_dir / d / "train_timing.json").read_text()) for d in dirs]
    steps = [TINY_TEACHER_STEPS[pathlib.Path(d).name] if stage == "teachers" else 2
             for d in dirs]
    assert [t["steps"] for t in timings] == steps, (stage, timings)
    assert all(t["step_seconds"] > 0 for t in timings), (stage, timings)
    # A lone run mirrored over 2 CPU replicas keeps both cores busy: its step
    # seconds count twice.
    assert [t["cpu_replicas"] for t in timings] == [2 if len(dirs) == 1 else 1] * len(dirs)
    done = json.loads((seed_dir / f"{stage}.done.json").read_text())
    assert done["train_step_seconds"] == pytest.approx(
        sum(t["step_seconds"] * t["cpu_replicas"] for t in timings), abs=0.01)
    assert done["parallel_slots"] == 2, (stage, done)
    assert done["train_step_seconds"] < done["seconds"] * done["parallel_slots"]

  report = (output_dir / "report" / "report.md").read_text()
  assert "With one training seed (0), the paper's claims that hold:" in report
  assert "| classification | top1 |" in report
  assert "| MuST student |" in report and "surface_normals within_11.25" in report
  assert "share of wall time in training steps |" in report
  assert re.search(r"\| transfer \| [\d.]+ \| 2 \| [\d.]+ \| \d+ % \|", report)
  assert re.search(r"\| \*\*total\*\* \| [\d.]+ \|  \| [\d.]+ \| \d+ % \|", report)
  commands = (output_dir / "report" / "commands.sh").read_text()
  for binary in ("must.world.generate", "teachers.train", "beam_pipelines.pseudo_label",
                 "must.train", "must.student.export", "beam_pipelines.inspect_labels"):
    assert f"python -m {binary} " in commands, binary
  # Every training run is seeded with its training seed, so a rerun gives the same numbers.
  trainings = [line for line in commands.splitlines()
               if line.startswith(("python -m teachers.train ", "python -m must.train "))]
  assert len(trainings) >= 8 and all(" --seed=0 " in line for line in trainings)
  lone_runs = [line for line in trainings if line.endswith(("# MuST student", "# classification"))]
  assert len(lone_runs) == 2 and all(" --cpu_replicas=2 " in f"{line} " for line in lone_runs)
  for artifact in ("metrics.png", "pseudo_labels/contact_sheet.png"):
    assert (output_dir / "report" / artifact).stat().st_size > 1000

  again = demo.run(str(config_dir), str(output_dir), seeds=[0])
  assert all(r["status"].startswith("skipped") for r in again.values()), again

  (config_dir / "baselines.yaml").write_text(json.dumps({"tasks": ["classification"]}))
  (config_dir / "transfer.yaml").write_text(json.dumps({"tasks": []}))
  changed = demo.run(str(config_dir), str(output_dir))
  assert changed["seed_0/student"]["status"].startswith("skipped")  # upstream of the change
  assert [changed[s]["status"] for s in ("seed_0/transfer", "report")] == ["ran"] * 2
  assert not (seed_dir / "transfer").exists()  # redone from an empty folder: no runs now


def _fake_summaries(stage: str, seed: int) -> dict:
  """What each per-seed stage records, with numbers that differ by seed: the
  student reaches 0.96 of the teacher with seed 0, 0.80 with seed 1."""
  trained = {"train_step_seconds": 1.5, "parallel_slots": 2}
  top1 = {"top1": 0.48 if seed == 0 else 0.40}
  def normals(value):
    return {"surface_normals": {"within_11.25": value}}
  return {
      "teachers": {"metrics": {"classification": {"top1": 0.5}}, **trained},
      "pseudo_label": {"shards": f"seed{seed}-*.tfrecord"},
      "student": {"metrics": {"classification": top1}, **trained},
      "baselines": {"metrics": {"classification": {"top1": 0.45}}, **trained},
      "transfer": {"metrics": {"scratch": normals(0.2), "classification teacher": normals(0.4),
                               "MuST student": normals(0.3)}, "skipped": {}, **trained},
  }[stage]


def test_seeds_run_the_later_stages_per_seed_and_reuse_finished_seeds(tmp_path, monkeypatch):
  """The seed plumbing with stand-in stages (the real binaries run in the test above)."""
  config_dir, output_dir = tmp_path / "configs", tmp_path / "out"
  _tiny_configs(config_dir)
  calls, commands = [], []

  def record_binaries(runs, jobs=1, commands_file=""):
    commands.extend(shlex.join(args) for args in runs.values())
    with open(commands_file, "a") as f:
      f.writelines(f"python -m {shlex.join(args)}  # {name}\n" for name, args in runs.items())

  def stand_in(stage):
    def runner(ctx):
      calls.append((stage, ctx.seed))
      assert ctx.path(stage) == str(output_dir / f"seed_{ctx.seed}" / stage)
      assert ctx.world_dir == str(output_dir / "world")
      ctx.run({stage: ["must.train", f"--model_dir={ctx.path(stage)}", ctx.seed_flag]})
      os.makedirs(ctx.path(stage))
      if stage == "pseudo_label":
        (pathlib.Path(ctx.path(stage)) / "summary.json").write_text(json.dumps(
            {"tasks": {"classification": {"pseudo": 24 + ctx.seed}}}))
      return _fake_summaries(stage, ctx.seed)
    return runner

  monkeypatch.setattr(demo, "run_binaries", record_binaries)
  monkeypatch.setattr(demo, "_run_world", lambda ctx: calls.append(("world", None)) or {})
  monkeypatch.setattr(demo, "SEED_STAGES", [(s, stand_in(s)) for s, _ in demo.SEED_STAGES])
  stages = [stage for stage, _ in demo.SEED_STAGES]

  first = demo.run(str(config_dir), str(output_dir), jobs=2, seeds=[0, 1])
  assert calls == [("world", None)] + [(s, 0) for s in stages] + [(s, 1) for s in stages]
  assert all(r["status"] == "ran" for r in first.values()), first
  assert f"must.train --model_dir={output_dir}/seed_1/student --seed=1" in commands
  # The report aggregates both seeds: mean ± spread, and a claim split by the seeds.
  report = (output_dir / "report" / "report.md").read_text()
  assert "Over 2 training seeds (0, 1), the paper's claims that hold: MuST backbone beats " \
      "scratch on surface_normals;" in report
  assert "undecided: student >= 0.9 of teacher on classification." in report
  assert "| classification | top1 | **0.500 ± 0.000** | 0.440 ± 0.040 | 0.450 ± 0.000 |" \
      " 0.88 ± 0.08 | undecided |" in report
  assert "seed 0: 0.96 (0.480 / 0.500); seed 1: 0.80 (0.400 / 0.500)" in report
  assert "Seed 1's teachers:" in report and "25 images pseudo-labeled" in report
  assert re.search(r"\| teachers \| [\d.]+ \| 2 \| 3.0 \| ", report)  # summed over seeds
  listed = (output_dir / "report" / "commands.sh").read_text()
  assert "# seed_0/teachers\n" in listed and "# seed_1/transfer\n" in listed
  assert "--seed=0 " in listed and "--seed=1 " in listed
  assert "beam_pipelines.inspect_labels --runner=DirectRunner '--input_pattern=seed0-*.tfrecord'" \
      in listed  # the sheet shows the first seed's pseudo labels
  assert "--seeds=0,1" in report

  calls.clear()
  more = demo.run(str(config_dir), str(output_dir), jobs=2, seeds=[0, 1, 2])
  assert calls == [(s, 2) for s in stages]  # seeds 0 and 1 are reused
  assert more["seed_1/transfer"]["status"].startswith("skipped")
  assert more["report"]["status"] == "ran"
  assert "Over 3 training seeds (0, 1, 2)" in (output_dir / "report" / "report.md").read_text()

  calls.clear()
  default = demo.run(str(config_dir), str(output_dir))  # the world's seed, 0: all done
  assert calls == [] and default["report"]["status"] == "ran"
  assert "With one training seed (0)" in (output_dir / "report" / "report.md").read_text()
  with pytest.raises(configs.ConfigError, match="twice"):
    demo.run(str(config_dir), str(output_dir), seeds=[1, 1])


def test_rounds_label_with_the_previous_student_and_rerun_from_a_changed_rounds_config(
    tmp_path, monkeypatch):
  """The round plumbing with stand-in stages, the later rounds' teachers stage real."""
  config_dir, output_dir = tmp_path / "configs", tmp_path / "out"
  _tiny_configs(config_dir)
  calls = []

  def stand_in(stage):
    def runner(ctx):
      calls.append((stage, ctx.round))
      assert ctx.path(stage) == str(output_dir / "seed_0" / (
          stage if ctx.round == 1 else f"round_{ctx.round}/{stage}"))
      os.makedirs(ctx.path(stage))
      summary = _fake_summaries(stage, ctx.seed)
      if stage == "pseudo_label":
        summary["teachers"] = ctx.summary("teachers").get("exports")
        (pathlib.Path(ctx.path(stage)) / "summary.json").write_text('{"tasks": {}}')
      if stage == "student":
        top1 = 0.4 + 0.1 * ctx.round  # each round's student better than the last
        summary = {**summary, "metrics": {"classification": {"top1": top1}},
                   "export": ctx.path("student", "export")}
      return summary
    return runner

  monkeypatch.setattr(demo, "run_binaries", lambda runs, jobs=1, commands_file="": None)
  monkeypatch.setattr(demo, "_run_world", lambda ctx: {})
  monkeypatch.setattr(demo, "SEED_STAGES", [(s, stand_in(s)) for s, _ in demo.SEED_STAGES])
  round_stages = [stage for stage, _ in demo.ROUND_STAGES]
  assert round_stages[0] == "teachers"
  monkeypatch.setattr(demo, "ROUND_STAGES", [("teachers", demo._run_round_teachers)] + [
      (s, stand_in(s)) for s in round_stages[1:]])
  first_round = [(stage, 1) for stage, _ in demo.SEED_STAGES]

  first = demo.run(str(config_dir), str(output_dir), rounds=3)
  assert calls == first_round + [(s, r) for r in (2, 3) for s in round_stages[1:]]
  assert [k for k in first if "/round_" in k] == [
      f"seed_0/round_{r}/{s}" for r in (2, 3) for s in round_stages]
  # Round r's teacher of every task is round r-1's exported student, scored as it was.
  for round_ in (2, 3):
    root = output_dir / "seed_0" / f"round_{round_}"
    before = output_dir / "seed_0" / ("" if round_ == 2 else f"round_{round_ - 1}")
    exports = json.loads((root / "pseudo_label.done.json").read_text())["teachers"]
    assert exports == {"classification": str(before / "student" / "export")}
    teachers = json.loads((root / "teachers.done.json").read_text())
    assert teachers["metrics"] == {"classification": {"top1": pytest.approx(0.3 + 0.1 * round_)}}
  text = (output_dir / "report" / "report.md").read_text()
  assert "| classification | top1 | 0.500 | 0.500 | 0.600 | 0.700 | holds |" in text
  assert "--rounds=3" in text
  assert "| round 3 student |" in text

  calls.clear()
  assert all(r["status"].startswith("skipped") for k, r in
             demo.run(str(config_dir), str(output_dir), rounds=3).items() if k != "report")
  assert calls == []
  (config_dir / "rounds.yaml").write_text("thresholds: {classification: {top_k: 1}}")
  changed = demo.run(str(config_dir), str(output_dir), rounds=2)
  assert calls == [(s, 2) for s in round_stages[1:]]  # round 1 is upstream of rounds.yaml
  assert changed["seed_0/student"]["status"].startswith("skipped")
  calls.clear()
  one = demo.run(str(config_dir), str(output_dir))
  assert calls == [] and one["report"]["status"] == "ran"
  assert "Self-training rounds" not in (output_dir / "report" / "report.md").read_text()
  with pytest.raises(configs.ConfigError, match="--rounds must be 1 or more"):
    demo.run(str(config_dir), str(output_dir), rounds=0)


def _flag(args: list[str], name: str) -> str:
  return next(a.partition("=")[2] for a in args if a.startswith(f"--{name}="))


def test_a_later_round_trains_a_noisy_student_and_transfers_its_backbone_alone(
    tmp_path, monkeypatch):
  """Round 2's student and transfer runs as must.demo writes them, each training
  run standing in by the files it leaves (params.yaml, eval and timing)."""
  config_dir, output_dir = tmp_path / "configs", tmp_path / "out"
  _tiny_configs(config_dir)
  round_dir = output_dir / "seed_0" / "round_2"
  first_export = str(output_dir / "seed_0" / "student" / "export")
  world = {"image_size": [64, 64], "task_params": {
      "classification": {"num_classes": 11}, "depth": {}, "surface_normals": {}},
      "splits": {s: {"pattern": f"/world/{s}-*"} for s in ("eval", "transfer_train",
                                                           "transfer_eval")}}

  def ctx(stage, round_=2):
    context = demo.Context(str(config_dir), str(output_dir), stage=stage, seed=0,
                           round=round_, rounds=2)
    context.__dict__["world"] = world
    return context

  def done(stage, summary, round_=2):
    path = pathlib.Path(ctx(stage, round_).path(f"{stage}.done.json"))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(summary))

  done("student", {"metrics": {"classification": {"top1": 0.5}, "depth": {"delta_1.25": 0.4}},
                   "export": first_export}, round_=1)
  done("teachers", demo._run_round_teachers(ctx("teachers")))
  done("pseudo_label", {"shards": str(round_dir / "pseudo_label" / "labeled-*.tfrecord")})
  runs = []

  def trainings(batch, jobs=1, commands_file=""):
    for name, args in batch.items():
      runs.append((name, args))
      if args[0] == "must.train":
        params = configs.load(exp_factory.get_exp_config(_flag(args, "experiment")),
                              params_override=json.loads(_flag(args, "params_override")))
        params = params.as_dict()
        model_dir = pathlib.Path(_flag(args, "model_dir"))
        model_dir.mkdir(parents=True)
        (model_dir / "params.yaml").write_text(json.dumps(params))
        (model_dir / "eval_metrics.json").write_text(json.dumps({"metrics": {
            f"{head['task']}/m": 0.5 for head in params["task"]["model"]["heads"]}}))
        (model_dir / "train_timing.json").write_text('{"steps": 2, "step_seconds": 1.0}')
  monkeypatch.setattr(demo, "run_binaries", trainings)

  done("student", demo._run_student(ctx("student")))
  (name, args), (_, export) = runs
  assert name == "MuST student" and export[0] == "must.student.export"
  override = json.loads(_flag(args, "params_override"))
  task = override["task"]
  assert task["teachers"] == [first_export]  # one export, the teacher of both tasks
  assert [head["task"] for head in task["model"]["heads"]] == ["classification", "depth"]
  assert task["train_data"]["input_path"] == str(round_dir / "pseudo_label" / "labeled-*.tfrecord")
  assert task["train_data"]["aug_type"] == {"type": "randaug", "randaug": {
      "num_layers": 2, "magnitude": 5, "cutout_const": 12}}
  assert task["model"]["backbone"]["resnet"]["stochastic_depth_drop_rate"] == 0.1
  # rounds.yaml's schedule replaces student.yaml's (2 steps in TINY_STUDENT).
  assert override["trainer"]["train_steps"] == 2600

  runs.clear()
  transfer = demo._run_transfer(ctx("transfer"))
  assert [name for name, _ in runs] == ["surface_normals from MuST student"]
  task = json.loads(_flag(runs[0][1], "params_override"))["task"]
  assert task["init_checkpoint"] == str(round_dir / "student" / "export" / "backbone")
  assert task["model"]["backbone"]["resnet"]["stochastic_depth_drop_rate"] == 0.0
  assert task["train_data"].get("aug_type") is None  # fine-tuned as round 1's was
  assert transfer["metrics"] == {"MuST student": {"surface_normals": {"m": 0.5}}}


def test_a_failing_run_is_named_after_the_others_finish(tmp_path, capsys):
  marker = tmp_path / "finished"
  runs = {"fails": ["must.no_such_binary"],
          "succeeds": ["zipfile", "-c", str(marker), __file__]}
  try:
    demo.run_binaries(runs, jobs=2)
  except cli.JobFailed as e:  # named with its exit code and its last line (why)
    assert "fails (exit 1: " in str(e) and "No module named must.no_such_binary" in str(e)
    assert "succeeds" not in str(e)
  else:
    raise AssertionError("a failing binary did not stop the stage")
  assert marker.exists()  # the other run went on to the end
  assert "[fails] " in capsys.readouterr().out


@pytest.mark.parametrize("setting", ["configs/demo", "configs/demo_full"])
def test_shipped_settings_pass_the_config_check(setting):
  demo.check_configs(str(REPO / setting), rounds=2)


@pytest.mark.parametrize("name,text,message", [
    ("transfer.yaml", "student: {trainer: {train_stepz: 3}}", "train_stepz"),
    ("student.yaml", "trainer: {train_steps: many}", "train_steps must be int"),
    ("teachers.yaml", "classification: {}\ndepht: {}", "no teacher for ['depht']"),
    ("baselines.yaml", "tasks: [detection]", "baselines for tasks with no teacher"),
    ("pseudo_label.yaml", "threshold: {}", "unknown keys ['threshold']"),
    ("student.yaml", "experiment: must_studnt", "'must_studnt' is not a variant of must_student"),
    ("transfer.yaml", "claim: {task: depth, rivals: []}", "claim.task must be one of its tasks"),
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


@pytest.mark.parametrize("text,message", [
    ("student: {trainer: {train_stepz: 3}}", "train_stepz"),
    ("student: {experiment: must_studnt}", "'must_studnt' is not a variant of must_student"),
    ("thresholds: {depht: {min_score: 0.5}}", "thresholds for unknown tasks ['depht']"),
])
def test_a_bad_rounds_config_stops_a_run_of_several_rounds_only(tmp_path, text, message):
  config_dir, output_dir = tmp_path / "configs", tmp_path / "out"
  _tiny_configs(config_dir)
  (config_dir / "rounds.yaml").write_text(text)
  with pytest.raises(configs.ConfigError, match=f"rounds.yaml.*{re.escape(message)}"):
    demo.run(str(config_dir), str(output_dir), rounds=2)
  assert not output_dir.exists()
  os.remove(config_dir / "rounds.yaml")
  demo.check_configs(str(config_dir), rounds=1)  # one round needs no rounds.yaml
  with pytest.raises(configs.ConfigError, match="rounds.yaml"):
    demo.check_configs(str(config_dir), rounds=2)


def test_teachers_train_in_waves_after_the_teacher_they_start_from():
  waves = demo.teacher_waves({"classification": {}, "depth": None,
                              "detection": {"backbone_from": "classification"},
                              "segmentation": {"backbone_from": "detection"}})
  assert waves == [["classification", "depth"], ["detection"], ["segmentation"]]
  with pytest.raises(configs.ConfigError, match="names no teacher"):
    demo.teacher_waves({"detection": {"backbone_from": "classification"}})
  with pytest.raises(configs.ConfigError, match="circle"):
    demo.teacher_waves({"detection": {"backbone_from": "segmentation"},
                        "segmentation": {"backbone_from": "detection"}})


def test_a_labeling_job_without_examples_is_not_marked_done(tmp_path, monkeypatch):
  ctx = demo.Context(str(REPO / "configs/demo"), str(tmp_path), stage="pseudo_label", seed=0)
  ctx.__dict__["world"] = {"splits": {"corpus": {"pattern": str(tmp_path / "corpus/*")}}}
  os.makedirs(ctx.root)
  with open(ctx.path("teachers.done.json"), "w") as f:
    json.dump({"exports": {"depth": str(tmp_path / "teacher")}}, f)

  def labeling_that_fails_every_image(runs, jobs=1, commands_file=""):
    (_, args), = runs.items()
    assert "--overwrite" in args  # the stage's dir is the job's own
    output_dir = next(a.partition("=")[2] for a in args if a.startswith("--output_dir="))
    os.makedirs(output_dir)
    with open(os.path.join(output_dir, "summary.json"), "w") as f:
      json.dump({"counts": {"images_in": 4, "examples_out": 0, "dead_letters": 4,
                            "balanced": True},
                 "dead_letter_reasons": {"labeling_failed": 4}}, f)
  monkeypatch.setattr(demo, "run_binaries", labeling_that_fails_every_image)
  with pytest.raises(cli.JobFailed, match="0 examples out of 4 images.*labeling_failed"):
    demo._run_stage(ctx, demo._run_pseudo_label, "digest", force=False)
  assert not os.path.exists(ctx.path("pseudo_label.done.json"))
