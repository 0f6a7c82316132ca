"""The main job: MuST end to end on the embedded default.

  python -m must.demo [--output_dir out/demo] [--force]

Runs each stage with its config from `configs/demo/`, skipping a stage whose
output is complete and whose config is unchanged since it last ran. Stages that
the project does not have yet are listed as missing, not faked.
"""
import hashlib
import json
import os
import subprocess
import sys
import time
from typing import Callable

import yaml

from absl import app
from absl import flags

from must import configs
from must import report
from must.world import writer as world_writer
from official.modeling import hyperparams

_OUTPUT_DIR = flags.DEFINE_string("output_dir", "out/demo", "Where every stage writes.")
_CONFIG_DIR = flags.DEFINE_string("config_dir", "configs/demo", "The stages' configs.")
_FORCE = flags.DEFINE_bool("force", False, "Redo stages even when their output is complete.")

_DONE_FILE = ".done.json"  # <output_dir>/<stage>.done.json: digest, timing, summary


def _run_world(config_dir: str, output_dir: str) -> dict:
  config = configs.load(world_writer.WorldConfig(), os.path.join(config_dir, "world.yaml"))
  metadata = world_writer.write_world(config, os.path.join(output_dir, "world"))
  return {"config": config.as_dict(), "scenes": metadata["scenes"],
          "scenes_per_second": metadata["scenes_per_second"]}


def _binary(module: str, *args: str) -> None:
  """Runs one of the project's binaries as a user would, its output shown."""
  command = [sys.executable, "-m", module, *args]
  print("$ " + " ".join(command), flush=True)
  subprocess.run(command, check=True)


def _merged(base: dict, override: dict) -> dict:
  """`base` with `override`'s keys set, nested dicts merged key by key."""
  merged = dict(base)
  for key, value in override.items():
    both_dicts = isinstance(value, dict) and isinstance(merged.get(key), dict)
    merged[key] = _merged(merged[key], value) if both_dicts else value
  return merged


def _run_teachers(config_dir: str, output_dir: str) -> dict:
  """Trains, exports and evaluates each teacher named in teachers.yaml."""
  with open(os.path.join(config_dir, "teachers.yaml")) as f:
    overrides = yaml.safe_load(f) or {}
  world_dir = os.path.join(output_dir, "world")
  world = world_writer.load_metadata(world_dir)
  export_dirs = []
  for task, override in overrides.items():
    model_dir = os.path.join(output_dir, "teachers", task)
    params = _merged(
        {"task": {"train_data": {"input_path": world["splits"][task]["pattern"]},
                  "validation_data": {"input_path": world["splits"]["eval"]["pattern"]}}},
        override or {})
    _binary("teachers.train", f"--experiment=must_{task}_teacher", "--mode=train",
            f"--model_dir={model_dir}", f"--params_override={json.dumps(params)}")
    export_dirs.append(os.path.join(model_dir, "export"))
    _binary("teachers.export", f"--model_dir={model_dir}", f"--export_dir={export_dirs[-1]}",
            f"--world_dir={world_dir}")
  _binary("teachers.evaluate", f"--world_dir={world_dir}",
          f"--teacher_dirs={','.join(export_dirs)}")
  metrics = {}
  for path in export_dirs:
    with open(os.path.join(path, "eval_metrics.json")) as f:
      metrics.update(json.load(f)["metrics"])
  return {"metrics": metrics, "exports": dict(zip(overrides, export_dirs))}


def _stage_summary(output_dir: str, stage: str) -> dict:
  with open(os.path.join(output_dir, f"{stage}{_DONE_FILE}")) as f:
    return json.load(f)


def _read_yaml(config_dir: str, name: str) -> dict:
  with open(os.path.join(config_dir, name)) as f:
    return yaml.safe_load(f) or {}


def _run_pseudo_label(config_dir: str, output_dir: str) -> dict:
  """Runs the Beam pipeline with every demo teacher over the world's corpus."""
  settings = _read_yaml(config_dir, "pseudo_label.yaml")
  exports = _stage_summary(output_dir, "teachers")["exports"]
  world = world_writer.load_metadata(os.path.join(output_dir, "world"))
  stage_dir = os.path.join(output_dir, "pseudo_label")
  os.makedirs(stage_dir, exist_ok=True)
  teachers_config = os.path.join(stage_dir, "teachers.yaml")
  with open(teachers_config, "w") as f:
    yaml.safe_dump({
        "teachers": [{"task": task, "path": path, "batch_size": settings.get("batch_size", 16)}
                     for task, path in exports.items()],
        "thresholds": {task: value for task, value in (settings.get("thresholds") or {}).items()
                       if task in exports}}, f)
  _binary("beam_pipelines.pseudo_label", "--runner=DirectRunner",
          f"--input_pattern={world['splits']['corpus']['pattern']}",
          f"--teachers_config={teachers_config}", f"--output_dir={stage_dir}")
  with open(os.path.join(stage_dir, "summary.json")) as f:
    summary = json.load(f)
  return {"counts": summary["counts"],
          "shards": os.path.join(stage_dir, "pseudo_labeled-*.tfrecord")}


def _train_student(output_dir: str, model_dir: str, tasks: list[str], override: dict) -> dict:
  """Trains a student with heads for `tasks` on the pseudo labels; exports and
  evaluates it; returns its metrics per task."""
  exports = _stage_summary(output_dir, "teachers")["exports"]
  world_dir = os.path.join(output_dir, "world")
  world = world_writer.load_metadata(world_dir)
  heads = [{"task": task, "num_classes": world["task_params"][task].get("num_classes", 0)}
           for task in tasks]
  params = _merged(
      {"task": {"teachers": list(exports.values()), "model": {"heads": heads},
                "train_data": {"input_path": _stage_summary(output_dir, "pseudo_label")["shards"]},
                "validation_data": {"input_path": world["splits"]["eval"]["pattern"]}}},
      override)
  _binary("must.train", "--experiment=must_student", "--mode=train", f"--model_dir={model_dir}",
          f"--params_override={json.dumps(params)}")
  export_dir = os.path.join(model_dir, "export")
  _binary("must.student.export", f"--model_dir={model_dir}", f"--export_dir={export_dir}",
          f"--world_dir={world_dir}")
  _binary("teachers.evaluate", f"--world_dir={world_dir}", f"--teacher_dirs={export_dir}")
  with open(os.path.join(export_dir, "eval_metrics.json")) as f:
    return json.load(f)["metrics"]


def _run_student(config_dir: str, output_dir: str) -> dict:
  """The MuST student: one head per teacher, trained on all pseudo labels."""
  model_dir = os.path.join(output_dir, "student")
  tasks = list(_stage_summary(output_dir, "teachers")["exports"])
  metrics = _train_student(output_dir, model_dir, tasks, _read_yaml(config_dir, "student.yaml"))
  return {"metrics": metrics, "export": os.path.join(model_dir, "export")}


def _run_baselines(config_dir: str, output_dir: str) -> dict:
  """Single-task students: the student's recipe on one task's pseudo labels only.

  `baselines.yaml` lists the tasks (`tasks: [...]`); the schedule is the
  student's (`student.yaml`), so each baseline sees as many steps as MuST.
  """
  override = _read_yaml(config_dir, "student.yaml")
  metrics = {}
  for task in _read_yaml(config_dir, "baselines.yaml").get("tasks") or []:
    model_dir = os.path.join(output_dir, "baselines", task)
    metrics[task] = _train_student(output_dir, model_dir, [task], override)[task]
  return {"metrics": metrics}


def _saved_model_config(model_dir: str) -> dict:
  """task.model of the params.yaml a training run saved (Model Garden's YAML)."""
  path = os.path.join(model_dir, "params.yaml")
  return hyperparams.read_yaml_to_params_dict(path).as_dict()["task"]["model"]


def _run_transfer(config_dir: str, output_dir: str) -> dict:
  """Fine-tunes from each initialization on each downstream task, same budget.

  Initializations: scratch, every teacher whose backbone has the student's
  architecture (its training checkpoint), and the MuST student's exported
  backbone. Each run is the student binary with one head, trained on the
  world's transfer split and scored on its transfer eval split.
  """
  settings = _read_yaml(config_dir, "transfer.yaml")
  world_dir = os.path.join(output_dir, "world")
  world = world_writer.load_metadata(world_dir)
  student_dir = os.path.join(output_dir, "student")
  model = _saved_model_config(student_dir)
  inits = {"scratch": None}
  skipped = {}
  for task, export_dir in _stage_summary(output_dir, "teachers")["exports"].items():
    teacher_dir = os.path.dirname(export_dir)
    if _saved_model_config(teacher_dir)["backbone"] == model["backbone"]:
      inits[f"{task} teacher"] = teacher_dir
    else:
      skipped[f"{task} teacher"] = "its backbone differs from the student's"
  inits["MuST student"] = os.path.join(_stage_summary(output_dir, "student")["export"],
                                       "backbone")
  results = {}
  for task in settings["tasks"]:
    head = {"task": task, "num_classes": world["task_params"][task].get("num_classes", 0)}
    for init, checkpoint in inits.items():
      run_dir = os.path.join(output_dir, "transfer", task, init.replace(" ", "_"))
      params = _merged({"task": {
          "model": {"backbone": model["backbone"], "decoder": model["decoder"], "heads": [head]},
          "init_checkpoint": checkpoint or "", "init_checkpoint_modules": "backbone",
          "train_data": {"input_path": world["splits"]["transfer_train"]["pattern"]},
          "validation_data": {"input_path": world["splits"]["transfer_eval"]["pattern"]}}},
          settings.get("student") or {})
      _binary("must.train", "--experiment=must_student", "--mode=train",
              f"--model_dir={run_dir}", f"--params_override={json.dumps(params)}")
      export_dir = os.path.join(run_dir, "export")
      _binary("must.student.export", f"--model_dir={run_dir}", f"--export_dir={export_dir}")
      _binary("teachers.evaluate", f"--world_dir={world_dir}", f"--teacher_dirs={export_dir}",
              "--split=transfer_eval")
      with open(os.path.join(export_dir, "eval_metrics.json")) as f:
        results.setdefault(init, {})[task] = json.load(f)["metrics"][task]
  return {"metrics": results, "skipped": skipped}


def _run_report(config_dir: str, output_dir: str) -> dict:
  """report.md: teachers vs student, a figure, a pseudo-label sheet, timings."""
  del config_dir
  report_dir = os.path.join(output_dir, "report")
  _binary("beam_pipelines.inspect_labels", "--runner=DirectRunner",
          f"--input_pattern={_stage_summary(output_dir, 'pseudo_label')['shards']}",
          f"--output_dir={os.path.join(report_dir, 'pseudo_labels')}", "--num_images=8")
  timings = {stage: _stage_summary(output_dir, stage).get("seconds")
             for stage, runner in STAGES if runner is not None and stage != "report"}
  transfer = _stage_summary(output_dir, "transfer")
  text = report.write(report_dir, _stage_summary(output_dir, "teachers")["metrics"],
                      _stage_summary(output_dir, "student")["metrics"], timings,
                      baselines=_stage_summary(output_dir, "baselines")["metrics"],
                      transfer=transfer["metrics"], transfer_skipped=transfer["skipped"])
  print(text)
  return {"report": os.path.join(report_dir, report.REPORT_FILE)}


# (name, runner or None when the project does not have the stage yet)
STAGES: list[tuple[str, Callable[[str, str], dict] | None]] = [
    ("world", _run_world),
    ("teachers", _run_teachers),
    ("pseudo_label", _run_pseudo_label),
    ("student", _run_student),
    ("baselines", _run_baselines),
    ("transfer", _run_transfer),
    ("report", _run_report),
]


def _config_digest(config_dir: str, stage: str, upstream: str) -> str:
  """Digest of the stage's config files and of every stage before it."""
  digest = hashlib.sha256(upstream.encode())
  for name in sorted(os.listdir(config_dir)):
    if name.startswith(stage):
      with open(os.path.join(config_dir, name), "rb") as f:
        digest.update(name.encode() + f.read())
  return digest.hexdigest()


def run(config_dir: str, output_dir: str, force: bool = False) -> dict[str, dict]:
  """Runs the stages in order; returns per-stage status and timing."""
  results = {}
  digest = ""
  for stage, runner in STAGES:
    done_file = os.path.join(output_dir, f"{stage}{_DONE_FILE}")
    if runner is None:
      results[stage] = {"status": "missing (not built yet)"}
      continue
    digest = _config_digest(config_dir, stage, digest)
    if not force and os.path.exists(done_file):
      with open(done_file) as f:
        if json.load(f).get("config_digest") == digest:
          results[stage] = {"status": "skipped (complete, config unchanged)"}
          continue
    print(f"== stage {stage} ==", flush=True)
    start = time.perf_counter()
    summary = runner(config_dir, output_dir)
    seconds = round(time.perf_counter() - start, 1)
    with open(done_file, "w") as f:
      json.dump({"config_digest": digest, "seconds": seconds, **summary}, f, indent=2)
    results[stage] = {"status": "ran", "seconds": seconds}
  return results


def main(argv):
  del argv
  results = run(_CONFIG_DIR.value, _OUTPUT_DIR.value, _FORCE.value)
  print(f"\n{'stage':<14}{'status':<40}{'seconds':>8}")
  for stage, result in results.items():
    print(f"{stage:<14}{result['status']:<40}{result.get('seconds', ''):>8}")
  missing = [s for s, r in results.items() if r["status"].startswith("missing")]
  if missing:
    print(f"\nStages this project does not have yet: {', '.join(missing)}.")
  print(f"Outputs under {_OUTPUT_DIR.value}/")


if __name__ == "__main__":
  app.run(main)
