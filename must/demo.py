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
from must.world import writer as world_writer

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
  return {"metrics": metrics}


# (name, runner or None when the project does not have the stage yet)
STAGES: list[tuple[str, Callable[[str, str], dict] | None]] = [
    ("world", _run_world),
    ("teachers", _run_teachers),
    ("pseudo_label", None),
    ("student", None),
    ("transfer", None),
    ("report", None),
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
