"""The main job: MuST end to end on the embedded default.

  python -m must.demo [--output_dir out/demo] [--force]

Runs each stage with its config from `configs/demo/`, skipping a stage whose
output is complete and whose config is unchanged since it last ran. Stages that
the project does not have yet are listed as missing, not faked.
"""
import hashlib
import json
import os
import time
from typing import Callable

from absl import app
from absl import flags

from must import configs
from must.world import writer as world_writer

_OUTPUT_DIR = flags.DEFINE_string("output_dir", "out/demo", "Where every stage writes.")
_CONFIG_DIR = flags.DEFINE_string("config_dir", "configs/demo", "The stages' configs.")
_FORCE = flags.DEFINE_bool("force", False, "Redo stages even when their output is complete.")

_DONE_FILE = ".stage_done.json"


def _run_world(config_dir: str, output_dir: str) -> dict:
  config = configs.load(world_writer.WorldConfig(), os.path.join(config_dir, "world.yaml"))
  metadata = world_writer.write_world(config, output_dir)
  return {"config": config.as_dict(), "scenes": metadata["scenes"],
          "scenes_per_second": metadata["scenes_per_second"]}


# (name, runner or None when the project does not have the stage yet)
STAGES: list[tuple[str, Callable[[str, str], dict] | None]] = [
    ("world", _run_world),
    ("teachers", None),
    ("pseudo_label", None),
    ("student", None),
    ("transfer", None),
    ("report", None),
]


def _config_digest(config_dir: str, stage: str) -> str:
  digest = hashlib.sha256()
  for name in sorted(os.listdir(config_dir)):
    if name.startswith(stage):
      with open(os.path.join(config_dir, name), "rb") as f:
        digest.update(name.encode() + f.read())
  return digest.hexdigest()


def run(config_dir: str, output_dir: str, force: bool = False) -> dict[str, dict]:
  """Runs the stages in order; returns per-stage status and timing."""
  results = {}
  for stage, runner in STAGES:
    stage_dir = os.path.join(output_dir, stage)
    done_file = os.path.join(stage_dir, _DONE_FILE)
    if runner is None:
      results[stage] = {"status": "missing (not built yet)"}
      continue
    digest = _config_digest(config_dir, stage)
    if not force and os.path.exists(done_file):
      with open(done_file) as f:
        if json.load(f).get("config_digest") == digest:
          results[stage] = {"status": "skipped (complete, config unchanged)"}
          continue
    print(f"== stage {stage} ==", flush=True)
    start = time.perf_counter()
    summary = runner(config_dir, stage_dir)
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
