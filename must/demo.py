"""The main job: MuST end to end on the embedded default.

  python -m must.demo [--config_dir configs/demo] [--output_dir out/demo] [--jobs 2]
      [--seeds 0,1,2] [--rounds 2] [--force]

Stages, in order: world, teachers, pseudo_label, student, baselines, transfer,
report. Each runs the project's binaries as a user would, with its config from
`--config_dir`: `configs/demo/` is the default setting (about 30 minutes on a
2-core CPU per seed), `configs/demo_full/` the larger one. Every model trains
and serves at the world's image size. Independent training runs (the teachers,
the baselines, the transfer runs) go `--jobs` at a time, each output line
prefixed with the run's name.

With `--rounds N` (Noisy Student), each seed then runs rounds 2..N: the
teacher of every task is the previous round's exported student, and a new
student trains from scratch on its labels with rounds.yaml's noise; the report
gains each task's metric and the transfer by round.

The world is generated once, with world.yaml's seed. Every later stage but the
report runs once per training seed of `--seeds` (default: the world's seed),
each training run with `--seed=<s>`, so a rerun reproduces the numbers on the
same machine. The report aggregates over the seeds: mean ± half the min-max
range, and a claim holds only if it holds for the means and for every seed
(undecided when the seeds disagree). Layout:

  <output_dir>/world/                    world.done.json, world.commands.sh
  <output_dir>/seed_<s>/teachers/ ...    seed_<s>/<stage>.done.json, .commands.sh
      (teachers, pseudo_label, student, baselines, transfer)
  <output_dir>/seed_<s>/round_<r>/ ...   with --rounds N, rounds 2..N (teachers: round
      r-1's student; pseudo_label, student, transfer)
  <output_dir>/report/                   report.md, metrics.png, commands.sh

A stage (per seed) whose output is complete and whose config (and every
upstream stage's) is unchanged is skipped, so `--seeds 0,1,2` after a default
run reuses seed 0's work; `--force` redoes it. A stage that is redone starts
from an empty folder, except after a run that stopped part-way with the same
configs, whose training runs resume from their checkpoints.

Each stage that trains records in its done file `train_step_seconds` (the sum
of its runs' `train_timing.json` step seconds, times each run's CPU replicas)
and `parallel_slots` (the cores its training kept busy: min(--jobs, runs), or
`--jobs` for a lone run, which gets the spare cores as `--cpu_replicas`); the
report's timings table gives the share of wall time in training steps:
train_step_seconds / (wall seconds x parallel_slots).
"""
import concurrent.futures
import dataclasses
import functools
import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from typing import Callable, List, Optional

import yaml

from absl import flags

from must import cli
from must import configs
from must import report
from must import tasks as must_tasks
from must import training
from must.student import config as student_config
from must.world import writer as world_writer
from official.core import exp_factory
from official.modeling import hyperparams
import teachers  # registers the teacher experiments

_OUTPUT_DIR = flags.DEFINE_string("output_dir", "out/demo", "Where every stage writes.")
_CONFIG_DIR = flags.DEFINE_string(
    "config_dir", "configs/demo",
    "The stages' configs: configs/demo (default setting) or configs/demo_full (larger).")
_JOBS = flags.DEFINE_integer("jobs", 2, "How many independent training runs go at once.")
_FORCE = flags.DEFINE_bool("force", False, "Redo stages even when their output is complete.")
_ROUNDS = flags.DEFINE_integer(
    "rounds", 1,
    "Self-training rounds (Noisy Student): round r+1 labels the corpus with round r's "
    "student as the teacher of every task and trains a new student with rounds.yaml's "
    "noise, into <output_dir>/seed_<s>/round_<r>/; the report compares the rounds.")
_SEEDS = flags.DEFINE_list(
    "seeds", None,
    "Training seeds, e.g. 0,1,2: every stage after the world runs once per seed (into "
    "<output_dir>/seed_<s>/, each training run with --seed=<s>) and the report gives the "
    "mean and spread over them. Default: the world's seed (world.yaml).")

_DONE_FILE = ".done.json"  # <root>/<stage>.done.json: digest, timing, summary
_STARTED_FILE = ".started.json"  # <root>/<stage>.started.json: digest of a run under way
_COMMANDS_FILE = ".commands.sh"  # <root>/<stage>.commands.sh: the binaries it ran


@dataclasses.dataclass(frozen=True)
class Context:
  """Where a stage reads its config and writes, and how many runs go at once.

  A per-seed stage (`seed` set) reads and writes under `<output_dir>/seed_<s>/`;
  the world and the report under `<output_dir>/`. `seeds` are all the demo's
  training seeds (what the report aggregates).
  """
  config_dir: str
  output_dir: str
  jobs: int = 1
  stage: str = ""
  seed: int | None = None
  seeds: tuple[int, ...] = ()
  round: int = 1
  rounds: int = 1

  @property
  def root(self) -> str:
    """`<output_dir>/seed_<s>` for a per-seed stage (`.../round_<r>` from the
    second self-training round on), else `<output_dir>`."""
    if self.seed is None:
      return self.output_dir
    seed_dir = os.path.join(self.output_dir, f"seed_{self.seed}")
    return seed_dir if self.round == 1 else os.path.join(seed_dir, f"round_{self.round}")

  @property
  def world_dir(self) -> str:
    return os.path.join(self.output_dir, "world")

  def path(self, *parts: str) -> str:
    return os.path.join(self.root, *parts)

  def for_seed(self, seed: int | None, round_: int = 1) -> "Context":
    """This context for another training seed (None: the world's and report's)
    and self-training round."""
    return dataclasses.replace(self, seed=seed, round=round_)

  def commands_file(self, stage: str) -> str:
    return self.path(f"{stage}{_COMMANDS_FILE}")

  def run(self, runs: dict[str, list[str]], parallel: bool = False) -> None:
    """Runs binaries (`--jobs` at a time when `parallel`), recording their commands."""
    run_binaries(runs, self.jobs if parallel else 1, self.commands_file(self.stage))

  def config(self, name: str) -> dict:
    return read_config(self.config_dir, name)

  def summary(self, stage: str) -> dict:
    """What an earlier stage recorded in its done file."""
    with open(self.path(f"{stage}{_DONE_FILE}")) as f:
      return json.load(f)

  @functools.cached_property
  def world(self) -> dict:
    """The world's metadata (world.json), read once per stage."""
    return world_writer.load_metadata(self.world_dir)

  @property
  def seed_flag(self) -> str:
    """`--seed` for every training run of a per-seed stage: its training seed,
    so that the same configs give the same models and numbers on the same machine."""
    if self.seed is None:
      raise ValueError(f"stage {self.stage!r} has no training seed")
    return f"--seed={self.seed}"


def run_binaries(runs: dict[str, list[str]], jobs: int = 1, commands_file: str = "") -> None:
  """Runs project binaries (run name -> module and flags), `jobs` at a time.

  Every line a binary prints is shown prefixed with its run name. A failing run
  lets the others finish, then stops the stage naming it and its exit status.
  Each command is appended to `commands_file` (if given) as a shell line.
  """
  if commands_file:
    with open(commands_file, "a") as f:
      f.writelines(f"python -m {shlex.join(args)}  # {name}\n" for name, args in runs.items())

  def run_one(name: str, args: list[str]) -> tuple[int, str]:
    command = [sys.executable, "-m", *args]
    print(f"[{name}] $ {shlex.join(command)}", flush=True)
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, bufsize=1,
                               env={**os.environ, "PYTHONUNBUFFERED": "1"})  # live progress
    last = ""
    for line in process.stdout:
      print(f"[{name}] {line}", end="", flush=True)
      last = line.strip() or last
    return process.wait(), last

  with concurrent.futures.ThreadPoolExecutor(max(1, jobs)) as pool:
    results = dict(zip(runs, pool.map(run_one, runs, runs.values())))
  failed = [f"{name} (exit {code}: {last})" for name, (code, last) in results.items() if code]
  if failed:
    raise cli.JobFailed(f"failed: {'; '.join(failed)}")


def _merged(base: dict, override: dict) -> dict:
  """`base` with `override`'s keys set, nested dicts merged key by key."""
  merged = dict(base)
  for key, value in override.items():
    both_dicts = isinstance(value, dict) and isinstance(merged.get(key), dict)
    merged[key] = _merged(merged[key], value) if both_dicts else value
  return merged


def _params_override(ctx: Context, experiment: str, *overrides: dict) -> str:
  """--params_override for `experiment` at the world's image size, then `overrides`
  (without the demo's own keys)."""
  params = configs.image_size_override(exp_factory.get_exp_config(experiment),
                                       *ctx.world["image_size"])
  for override in overrides:
    params = _merged(params, _override(override))
  return f"--params_override={json.dumps(params)}"


def _evaluate(ctx: Context, export_dirs: dict[str, str]) -> dict:
  """teachers.evaluate on every export at once -> {name: {task: metrics}}."""
  ctx.run({"evaluate": ["teachers.evaluate", f"--world_dir={ctx.world_dir}",
                        f"--teacher_dirs={','.join(export_dirs.values())}"]})
  metrics = {}
  for name, path in export_dirs.items():
    with open(os.path.join(path, "eval_metrics.json")) as f:
      metrics[name] = json.load(f)["metrics"]
  return metrics


def _training_summary(ctx: Context, model_dirs: list[str]) -> dict:
  """What a stage's training runs (one per model dir, `--jobs` at a time) cost:
  `train_step_seconds`, the sum of their `train_timing.json` step seconds
  (times each run's CPU replicas: core-seconds), and
  `parallel_slots`, how many cores they kept busy (min(--jobs, the sum of
  their CPU replicas))."""
  timings = [training.read_train_timing(model_dir) for model_dir in model_dirs]
  # A run mirrored over CPU replicas keeps that many cores busy.
  replicas = [run_timing.get("cpu_replicas", 1) for run_timing in timings]
  core_seconds = sum(t["step_seconds"] * r for t, r in zip(timings, replicas))
  return {"train_step_seconds": round(core_seconds, 3),
          "parallel_slots": max(1, min(ctx.jobs, sum(replicas)))}


def _run_world(ctx: Context) -> dict:
  ctx.run({"world": ["must.world.generate", f"--config_file={ctx.config_dir}/world.yaml",
                     f"--output_dir={ctx.world_dir}"]})
  world = ctx.world
  return {"config": world["config"], "scenes": world["scenes"],
          "scenes_per_second": world["scenes_per_second"]}


BACKBONE_FROM = "backbone_from"  # teachers.yaml: start a teacher's backbone from another's
# teachers.yaml blocks, student.yaml, transfer.yaml's student: the registered
# variant to train (e.g. must_student_tiny); default the stage's experiment.
EXPERIMENT = "experiment"


QUALITY_SPLIT = "corpus_partial"  # the world split the teachers' label quality is scored on
QUALITY_STAGE_DIR = "pseudo_label_quality"


@dataclasses.dataclass
class PseudoLabelStage(hyperparams.Config):
  """pseudo_label.yaml: images per teacher call, and each task's thresholds
  (keyword arguments of its `pseudo_label`)."""
  batch_size: int = 16
  thresholds: Optional[dict] = None


@dataclasses.dataclass
class BaselinesStage(hyperparams.Config):
  """baselines.yaml: the tasks that get a single-task student."""
  tasks: List[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class TransferClaim(hyperparams.Config):
  """The paper's transfer claim: MuST's backbone beats `rivals` on `task`."""
  task: str = ""
  rivals: List[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class TransferStage(hyperparams.Config):
  """transfer.yaml: downstream tasks, the claim, the students' overrides."""
  tasks: List[str] = dataclasses.field(default_factory=list)
  claim: Optional[TransferClaim] = None
  student: Optional[dict] = None


@dataclasses.dataclass
class RoundsStage(hyperparams.Config):
  """rounds.yaml: what changes from the second self-training round on (`--rounds`).

  Round r+1's teacher of every task is round r's exported student. Its student
  trains from scratch with `student` on top of student.yaml (Noisy Student's
  noise: RandAugment, stochastic depth; an `experiment` or model override for
  a larger student), on labels kept by `thresholds` on top of pseudo_label.yaml's.
  """
  student: Optional[dict] = None
  thresholds: Optional[dict] = None


_STAGE_CONFIGS = {"pseudo_label.yaml": PseudoLabelStage, "baselines.yaml": BaselinesStage,
                  "transfer.yaml": TransferStage, "rounds.yaml": RoundsStage}


def read_config(config_dir: str, name: str) -> dict:
  """A stage config of `config_dir` as a dict, read by `must.configs`: the typed
  ones loaded strictly, teachers.yaml and student.yaml as the experiment
  overrides they are (`check_configs` loads those against their experiments)."""
  path = os.path.join(config_dir, name)
  if name in _STAGE_CONFIGS:
    return configs.load(_STAGE_CONFIGS[name](), path).as_dict()
  raw = configs.read_yaml(path)
  if name == "teachers.yaml":
    return {task: block or {} for task, block in raw.items()}
  return raw


def _experiment(base: str, *blocks: dict | None) -> str:
  """The experiment the last of `blocks` naming one picks (`base` or its tiny variant)."""
  names = [block[EXPERIMENT] for block in blocks if block and EXPERIMENT in block]
  name = names[-1] if names else base
  if name not in configs.with_tiny([base]):
    raise configs.ConfigError(f"{EXPERIMENT}: {name!r} is not a variant of {base}; expected "
                              f"one of {configs.with_tiny([base])}")
  return name


def teacher_waves(teacher_configs: dict[str, dict]) -> list[list[str]]:
  """The teachers of teachers.yaml in training order: waves of tasks whose
  `backbone_from` teacher (if any) trained in an earlier wave.

  Raises:
    configs.ConfigError: a `backbone_from` that names no teacher of the file,
      or teachers that start from each other.
  """
  sources = {task: (block or {}).get(BACKBONE_FROM) for task, block in teacher_configs.items()}
  unknown = {task: source for task, source in sources.items()
             if source is not None and source not in teacher_configs}
  if unknown:
    raise configs.ConfigError(f"teachers.yaml: {BACKBONE_FROM} names no teacher of the file: "
                              f"{unknown}; teachers: {sorted(teacher_configs)}")
  waves, done = [], set()
  while len(done) < len(sources):
    wave = [task for task, source in sources.items()
            if task not in done and (source is None or source in done)]
    if not wave:
      raise configs.ConfigError(f"teachers.yaml: {BACKBONE_FROM} goes round in a circle: "
                                f"{ {t: s for t, s in sources.items() if t not in done} }")
    waves.append(wave)
    done.update(wave)
  return waves


def _override(block: dict | None) -> dict:
  """An experiment override of a stage config without the demo's own keys."""
  return {key: value for key, value in (block or {}).items()
          if key not in (BACKBONE_FROM, EXPERIMENT)}


def _run_teachers(ctx: Context) -> dict:
  """Trains, exports and evaluates each teacher named in teachers.yaml.

  Teachers train `--jobs` at a time, wave by wave (`teacher_waves`): one with
  `backbone_from: <task>` starts from that teacher's trained backbone.
  """
  world = ctx.world
  teacher_configs = ctx.config("teachers.yaml")
  trains, exports, export_dirs = {}, {}, {}
  for task, block in teacher_configs.items():
    experiment = _experiment(teachers.TEACHERS[task].EXPERIMENT, block)
    model_dir = ctx.path("teachers", task)
    export_dirs[task] = os.path.join(model_dir, "export")
    data = {"task": {"train_data": {"input_path": world["splits"][task]["pattern"]},
                     "validation_data": {"input_path": world["splits"]["eval"]["pattern"]}}}
    source = (block or {}).get(BACKBONE_FROM)
    if source:
      data["task"].update(init_checkpoint=ctx.path("teachers", source),
                          init_checkpoint_modules="backbone")
    trains[task] = [
        "teachers.train", f"--experiment={experiment}", "--mode=train",
        f"--model_dir={model_dir}", ctx.seed_flag,
        _params_override(ctx, experiment, data, block)]
    exports[f"{task} teacher"] = [
        "teachers.export", f"--model_dir={model_dir}", f"--export_dir={export_dirs[task]}",
        f"--world_dir={ctx.world_dir}"]
  for wave in teacher_waves(teacher_configs):
    _train(ctx, {f"{task} teacher": trains[task] for task in wave})
  ctx.run(exports, parallel=True)
  metrics = {}
  for task_metrics in _evaluate(ctx, export_dirs).values():
    metrics.update(task_metrics)
  model_dirs = [os.path.dirname(path) for path in export_dirs.values()]
  return {"metrics": metrics, "exports": export_dirs, **_training_summary(ctx, model_dirs)}


def _run_round_teachers(ctx: Context) -> dict:
  """A later round's teachers: the previous round's exported student, for every
  task it serves, scored as that student was (no training)."""
  student = ctx.for_seed(ctx.seed, ctx.round - 1).summary("student")
  return {"metrics": student["metrics"],
          "exports": {task: student["export"] for task in student["metrics"]},
          "train_step_seconds": 0.0, "parallel_slots": 1}


def _thresholds(ctx: Context) -> dict:
  """pseudo_label.yaml's thresholds, with rounds.yaml's over them from round 2 on."""
  thresholds = ctx.config("pseudo_label.yaml").get("thresholds") or {}
  if ctx.round > 1:
    thresholds = _merged(thresholds, ctx.config("rounds.yaml").get("thresholds") or {})
  return thresholds


def _run_pseudo_label(ctx: Context) -> dict:
  """Runs the Beam pipeline with every teacher of the round over the world's corpus."""
  settings = ctx.config("pseudo_label.yaml")
  exports = ctx.summary("teachers")["exports"]
  stage_dir = ctx.path("pseudo_label")
  teachers_config = ctx.path("pseudo_label.teachers.yaml")  # the stage dir is the job's own
  with open(teachers_config, "w") as f:
    yaml.safe_dump({
        "teachers": [{"task": task, "path": path, "batch_size": settings.get("batch_size", 16)}
                     for task, path in exports.items()],
        "thresholds": {task: value for task, value in _thresholds(ctx).items()
                       if task in exports}}, f)
  runs = {"pseudo_label": [
      "beam_pipelines.pseudo_label", "--runner=DirectRunner",
      f"--input_pattern={ctx.world['splits']['corpus']['pattern']}",
      f"--teachers_config={teachers_config}", f"--output_dir={stage_dir}", "--overwrite"]}
  # The corpus is images, without ground truth: the teachers' label quality is
  # scored on the partially labeled corpus (a second, small run; its records unused).
  partial = ctx.world["splits"].get(QUALITY_SPLIT, {})
  quality_dir = ctx.path(QUALITY_STAGE_DIR)
  if partial.get("count"):
    runs["pseudo_label_quality"] = [
        "beam_pipelines.pseudo_label", "--runner=DirectRunner",
        f"--input_pattern={partial['pattern']}", "--input_format=tfrecord", "--quality=on",
        f"--teachers_config={teachers_config}", f"--output_dir={quality_dir}", "--overwrite"]
  ctx.run(runs)
  summary_path = os.path.join(stage_dir, "summary.json")
  with open(summary_path) as f:
    summary = json.load(f)
  counts = summary["counts"]
  if not counts["balanced"] or not counts["examples_out"]:
    raise cli.JobFailed(f"pseudo_label: {summary_path}: {counts['examples_out']} examples out "
                        f"of {counts['images_in']} images (balanced: {counts['balanced']}); "
                        f"dead letter reasons: {summary['dead_letter_reasons']}")
  quality_file = os.path.join(quality_dir, "quality.json")
  return {"counts": summary["counts"],
          "shards": os.path.join(stage_dir, "pseudo_labeled-*.tfrecord"),
          **({"quality": quality_file, "quality_split": QUALITY_SPLIT}
             if "pseudo_label_quality" in runs else {})}


def _student_training(ctx: Context, model_dir: str, tasks: list[str], train_split: str | None,
                      eval_split: str, mode: str, *overrides: dict) -> list[str]:
  """must.train with one head per task; trains on the pseudo labels or a world split."""
  world = ctx.world
  train_pattern = (world["splits"][train_split]["pattern"] if train_split
                   else ctx.summary("pseudo_label")["shards"])
  heads = [{"task": task, "num_classes": world["task_params"][task].get("num_classes", 0)}
           for task in tasks]
  inputs = {"task": {
      "teachers": list(dict.fromkeys(ctx.summary("teachers")["exports"].values())),
      "model": {"heads": heads}, "train_data": {"input_path": train_pattern},
      "validation_data": {"input_path": world["splits"][eval_split]["pattern"]}}}
  experiment = _experiment(student_config.EXPERIMENT, *overrides)
  return ["must.train", f"--experiment={experiment}", f"--mode={mode}",
          f"--model_dir={model_dir}", ctx.seed_flag,
          _params_override(ctx, experiment, inputs, *overrides)]


def _train_on_pseudo_labels(ctx: Context, runs: dict[str, tuple[str, list[str]]]
                            ) -> tuple[dict, dict]:
  """Trains students (name -> (model dir, tasks)) on the pseudo labels with the
  schedule of student.yaml (and from round 2 on rounds.yaml's student), each
  scored at the end on the held-out eval split by its tasks' metrics (the ones
  teachers.evaluate uses) -> ({name: metrics}, the runs' `_training_summary`)."""
  overrides = [ctx.config("student.yaml")]
  if ctx.round > 1:
    overrides.append(ctx.config("rounds.yaml").get("student") or {})
  _train(ctx, {name: _student_training(ctx, model_dir, tasks, None, "eval",
                                       "train_and_post_eval", *overrides)
               for name, (model_dir, tasks) in runs.items()})
  return ({name: _eval_metrics(model_dir) for name, (model_dir, _) in runs.items()},
          _training_summary(ctx, [model_dir for model_dir, _ in runs.values()]))


def _train(ctx: Context, runs: dict[str, list[str]]) -> None:
  """Runs training binaries `--jobs` at a time. Runs fewer than `--jobs` get the
  spare cores as `--cpu_replicas`: one training process keeps about one core
  busy (must.training.cpu_strategy)."""
  replicas = ctx.jobs // max(1, len(runs))
  flag = [f"--cpu_replicas={replicas}"] if replicas > 1 else []
  ctx.run({name: args + flag for name, args in runs.items()}, parallel=True)


def _run_student(ctx: Context) -> dict:
  """The MuST student: one head per teacher, trained on all pseudo labels, then
  exported (one SavedModel serving every task, plus its backbone)."""
  model_dir = ctx.path("student")
  export_dir = os.path.join(model_dir, "export")
  tasks = list(ctx.summary("teachers")["exports"])
  metrics, timing = _train_on_pseudo_labels(ctx, {"MuST student": (model_dir, tasks)})
  ctx.run({"MuST student": ["must.student.export", f"--model_dir={model_dir}",
                            f"--export_dir={export_dir}", f"--world_dir={ctx.world_dir}"]})
  return {"metrics": metrics["MuST student"], "export": export_dir, **timing}


def _run_baselines(ctx: Context) -> dict:
  """Single-task students: the student's recipe on one task's pseudo labels only.

  `baselines.yaml` lists the tasks (`tasks: [...]`); the schedule is the
  student's (`student.yaml`), so each baseline sees as many steps as MuST.
  """
  tasks = ctx.config("baselines.yaml").get("tasks") or []
  metrics, timing = _train_on_pseudo_labels(
      ctx, {task: (ctx.path("baselines", task), [task]) for task in tasks})
  return {"metrics": {task: metrics[task][task] for task in tasks}, **timing}


def _saved_model_config(model_dir: str) -> dict:
  """task.model of the params.yaml a training run saved (Model Garden's YAML)."""
  return configs.read_yaml(os.path.join(model_dir, configs.PARAMS_FILE))["task"]["model"]


def _eval_metrics(model_dir: str) -> dict[str, dict[str, float]]:
  """A student run's final eval logs, {'<task>/<metric>': v} -> {task: {metric: v}}."""
  with open(os.path.join(model_dir, training.EVAL_METRICS_FILE)) as f:
    logs = json.load(f)["metrics"]
  metrics = {}
  for key, value in logs.items():
    task, _, name = key.partition("/")
    if name:
      metrics.setdefault(task, {})[name] = value
  return metrics


def _run_transfer(ctx: Context) -> dict:
  """Fine-tunes from each initialization on each downstream task, same budget.

  Initializations: scratch, every teacher whose backbone has the student's
  architecture (its training checkpoint), and the MuST student's exported
  backbone; from round 2 on the round's student alone (the others are round
  1's). Each run is the student binary with one head, trained on the world's
  transfer split and scored on its transfer eval split at the end, without
  the round's stochastic depth (the same fine-tuning for every round).
  """
  settings = ctx.config("transfer.yaml")
  model = _saved_model_config(ctx.path("student"))
  backbone = dict(model["backbone"])
  kind = backbone.get("type")
  if isinstance(backbone.get(kind), dict) and "stochastic_depth_drop_rate" in backbone[kind]:
    backbone[kind] = {**backbone[kind], "stochastic_depth_drop_rate": 0.0}
  inits, skipped = ({"scratch": ""} if ctx.round == 1 else {}), {}
  teacher_exports = ctx.summary("teachers")["exports"] if ctx.round == 1 else {}
  for task, export_dir in teacher_exports.items():
    teacher_dir = os.path.dirname(export_dir)
    if _saved_model_config(teacher_dir)["backbone"] == model["backbone"]:
      inits[f"{task} teacher"] = teacher_dir
    else:
      skipped[f"{task} teacher"] = "its backbone differs from the student's"
  inits["MuST student"] = os.path.join(ctx.summary("student")["export"], "backbone")
  runs, run_dirs = {}, {}
  for task in settings.get("tasks") or []:
    for init, checkpoint in inits.items():
      run_dir = run_dirs[task, init] = ctx.path("transfer", task, init.replace(" ", "_"))
      architecture = {"task": {
          "model": {"backbone": backbone, "decoder": model["decoder"]},
          "init_checkpoint": checkpoint, "init_checkpoint_modules": "backbone"}}
      runs[f"{task} from {init}"] = _student_training(
          ctx, run_dir, [task], "transfer_train", "transfer_eval", "train_and_post_eval",
          architecture, settings.get("student") or {})
  _train(ctx, runs)
  results = {}
  for (task, init), run_dir in run_dirs.items():
    results.setdefault(init, {})[task] = _eval_metrics(run_dir)[task]
  return {"metrics": results, "skipped": skipped,
          **_training_summary(ctx, list(run_dirs.values()))}


def _round_results(ctx: Context) -> dict:
  """A round's student metrics and the transfer from its backbone (`report.rounds_section`)."""
  return {"student": ctx.summary("student")["metrics"],
          "transfer": ctx.summary("transfer")["metrics"].get("MuST student", {})}


def _run_report(ctx: Context) -> dict:
  """report.md over every training seed: teachers vs student, transfer, a
  figure, a pseudo-label sheet (the first seed's), timings, commands.sh."""
  report_dir = ctx.path("report")
  os.makedirs(report_dir, exist_ok=True)
  by_seed = {seed: ctx.for_seed(seed) for seed in ctx.seeds}
  first = by_seed[ctx.seeds[0]]
  ctx.run({"inspect_labels": [
      "beam_pipelines.inspect_labels", "--runner=DirectRunner",
      f"--input_pattern={first.summary('pseudo_label')['shards']}",
      f"--output_dir={os.path.join(report_dir, 'pseudo_labels')}", "--num_images=8",
      "--overwrite"]})
  summaries = {seed: {stage: seed_ctx.summary(stage) for stage, _ in SEED_STAGES}
               for seed, seed_ctx in by_seed.items()}
  timings = timing_records(ctx)
  with open(os.path.join(report_dir, report.COMMANDS_FILE), "w") as f:
    f.write(f"# Every binary the demo ran, stage by stage (from {ctx.output_dir}).\n")
    stages = [("world", ctx)] + [(f"seed_{seed}/{stage}", seed_ctx) for seed, seed_ctx
                                 in by_seed.items() for stage, _ in SEED_STAGES]
    stages += [(f"seed_{seed}/round_{round_}/{stage}", ctx.for_seed(seed, round_))
               for seed in ctx.seeds for round_ in range(2, ctx.rounds + 1)
               for stage, _ in ROUND_STAGES]
    for name, stage_ctx in stages + [("report", ctx)]:
      path = stage_ctx.commands_file(name.rpartition("/")[2])
      if os.path.exists(path):
        with open(path) as stage_commands:
          f.write(f"\n# {name}\n{stage_commands.read()}")
  pseudo_labels = {}
  for seed, seed_ctx in by_seed.items():
    with open(seed_ctx.path("pseudo_label", "summary.json")) as f:
      pseudo_labels[seed] = json.load(f)["tasks"]
  label_quality = None
  quality_file = summaries[ctx.seeds[0]]["pseudo_label"].get("quality")
  if quality_file and os.path.exists(quality_file):  # the first seed's, as the sheet
    with open(quality_file) as f:
      label_quality = json.load(f)
    shutil.copy(os.path.join(os.path.dirname(quality_file), "quality.png"),
                os.path.join(report_dir, report.QUALITY_PLOT))
  skipped = {}
  for seed in ctx.seeds:
    skipped.update(summaries[seed]["transfer"]["skipped"])
  rounds = {round_: {seed: _round_results(ctx.for_seed(seed, round_)) for seed in ctx.seeds}
            for round_ in range(1, ctx.rounds + 1)}
  text = report.write(
      report_dir,
      {seed: summaries[seed]["teachers"]["metrics"] for seed in ctx.seeds},
      {seed: summaries[seed]["student"]["metrics"] for seed in ctx.seeds}, timings,
      baselines={seed: summaries[seed]["baselines"]["metrics"] for seed in ctx.seeds},
      transfer={seed: summaries[seed]["transfer"]["metrics"] for seed in ctx.seeds},
      transfer_skipped=skipped, transfer_claim_config=ctx.config("transfer.yaml").get("claim"),
      reproduce=f"python -m must.demo --config_dir={ctx.config_dir} "
                f"--output_dir={ctx.output_dir} --seeds={','.join(map(str, ctx.seeds))}"
                + (f" --rounds={ctx.rounds}" if ctx.rounds > 1 else ""),
      rounds=rounds if ctx.rounds > 1 else None,
      pseudo_labels=pseudo_labels, label_quality=label_quality,
      label_quality_split=summaries[ctx.seeds[0]]["pseudo_label"].get("quality_split", ""))
  print(text)
  return {"report": os.path.join(report_dir, report.REPORT_FILE), "seeds": list(ctx.seeds)}


def timing(summary: dict) -> dict:
  """A done file's wall seconds, training-step seconds and parallel slots."""
  return {"seconds": summary.get("seconds"),
          "train_step_seconds": summary.get("train_step_seconds"),
          "parallel_slots": summary.get("parallel_slots", 1)}


def timing_records(ctx: Context) -> list[dict]:
  """The report's timing records: the world's stage, then each seed stage per
  training seed of `ctx.seeds` (`report.timings_table` sums them per stage)."""
  records = [{"stage": "world", **timing(ctx.summary("world"))}]
  for stage, _ in SEED_STAGES:
    records += [{"stage": stage, **timing(ctx.for_seed(seed).summary(stage))}
                for seed in ctx.seeds]
  for round_ in range(2, ctx.rounds + 1):
    for stage, _ in ROUND_STAGES:
      records += [{"stage": f"round {round_} {stage}",
                   **timing(ctx.for_seed(seed, round_).summary(stage))} for seed in ctx.seeds]
  return records


# The stages that run once per training seed, in order, between world and report.
SEED_STAGES: list[tuple[str, Callable[[Context], dict]]] = [
    ("teachers", _run_teachers),
    ("pseudo_label", _run_pseudo_label),
    ("student", _run_student),
    ("baselines", _run_baselines),
    ("transfer", _run_transfer),
]
# The stages of each later self-training round (`--rounds`), per training seed.
ROUND_STAGES: list[tuple[str, Callable[[Context], dict]]] = [
    ("teachers", _run_round_teachers),
    ("pseudo_label", _run_pseudo_label),
    ("student", _run_student),
    ("transfer", _run_transfer),
]
STAGES: list[tuple[str, Callable[[Context], dict]]] = [
    ("world", _run_world), *SEED_STAGES, ("report", _run_report)]


def check_configs(config_dir: str, rounds: int = 1) -> None:
  """Stops before any stage runs when a stage config would fail later.

  Every file must exist and load strictly (`read_config`; rounds.yaml only
  with more than one self-training round); teacher, student and transfer
  overrides must apply strictly to their experiments (unknown keys,
  wrong value types); tasks must be known, and baselines must name a
  configured teacher.

  Raises:
    configs.ConfigError: naming the file and the key or task.
  """
  def path(name: str) -> str:
    return os.path.join(config_dir, name)

  def check_tasks(tasks, valid, name: str, what: str) -> None:
    unknown = [task for task in tasks or [] if task not in valid]
    if unknown:
      raise configs.ConfigError(f"{path(name)}: {what} {unknown}; valid: {sorted(valid)}")

  def check_override(base: str, override: dict | None, where: str) -> None:
    try:
      experiment = _experiment(base, override)
    except configs.ConfigError as e:
      raise configs.ConfigError(f"{where}: {e}") from None
    configs.load(exp_factory.get_exp_config(experiment), params_override=_override(override),
                 override_name=where)

  configs.load(world_writer.WorldConfig(), path("world.yaml"))
  teacher_tasks = read_config(config_dir, "teachers.yaml")
  check_tasks(teacher_tasks, teachers.TEACHERS, "teachers.yaml", "no teacher for")
  for task, block in teacher_tasks.items():
    check_override(teachers.TEACHERS[task].EXPERIMENT, block, f"{path('teachers.yaml')} ({task})")
  teacher_waves(teacher_tasks)
  student = read_config(config_dir, "student.yaml")
  check_override(student_config.EXPERIMENT, student, path("student.yaml"))
  thresholds = read_config(config_dir, "pseudo_label.yaml")["thresholds"] or {}
  check_tasks(thresholds, must_tasks.names(), "pseudo_label.yaml", "thresholds for unknown tasks")
  check_tasks(read_config(config_dir, "baselines.yaml")["tasks"], teacher_tasks, "baselines.yaml",
              "baselines for tasks with no teacher (no pseudo labels)")
  transfer = read_config(config_dir, "transfer.yaml")
  check_tasks(transfer["tasks"], must_tasks.names(), "transfer.yaml", "unknown tasks")
  claim = transfer["claim"]
  if claim and claim["task"] not in transfer["tasks"]:
    raise configs.ConfigError(f"{path('transfer.yaml')}: claim.task must be one of its tasks "
                              f"{transfer['tasks']}, got {claim['task']!r}")
  check_override(student_config.EXPERIMENT, transfer["student"],
                 f"{path('transfer.yaml')} (student)")
  if rounds > 1:
    later = read_config(config_dir, "rounds.yaml")
    check_override(student_config.EXPERIMENT, _merged(student, later["student"] or {}),
                   f"{path('rounds.yaml')} (student)")
    check_tasks(later["thresholds"], must_tasks.names(), "rounds.yaml",
                "thresholds for unknown tasks")


def _config_digest(config_dir: str, stage: str, upstream: str) -> str:
  """Digest of the stage's config files and of every stage before it."""
  digest = hashlib.sha256(upstream.encode())
  for name in sorted(os.listdir(config_dir)):
    if name.startswith(stage):
      with open(os.path.join(config_dir, name), "rb") as f:
        digest.update(name.encode() + f.read())
  return digest.hexdigest()


def world_seed(config_dir: str) -> int:
  """The seed in the config dir's world.yaml (the default training seed)."""
  return configs.load(world_writer.WorldConfig(), os.path.join(config_dir, "world.yaml")).seed


def _run_stage(ctx: Context, runner: Callable[[Context], dict], digest: str,
               force: bool) -> dict:
  """Runs one stage (for one seed) unless its done file has `digest`.

  A stage that runs starts from an empty `<root>/<stage>/` folder, except when
  a run with the same digest stopped part-way (its started file is there and
  `force` is off): then its training runs resume from their checkpoints.
  """
  done_file = ctx.path(f"{ctx.stage}{_DONE_FILE}")
  started_file = ctx.path(f"{ctx.stage}{_STARTED_FILE}")
  if not force and os.path.exists(done_file):
    with open(done_file) as f:
      if json.load(f).get("config_digest") == digest:
        return {"status": "skipped (complete, config unchanged)"}
  label = ctx.stage if ctx.seed is None else f"{ctx.stage} (seed {ctx.seed})"
  if ctx.round > 1:
    label = f"{ctx.stage} (seed {ctx.seed}, round {ctx.round})"
  print(f"== stage {label} ==", flush=True)
  resume = False
  if not force and os.path.exists(started_file):
    with open(started_file) as f:
      resume = json.load(f).get("config_digest") == digest
  if not resume and os.path.exists(ctx.path(ctx.stage)):
    shutil.rmtree(ctx.path(ctx.stage))  # stale: another config, or --force
  for stale in (done_file, ctx.commands_file(ctx.stage)):
    if os.path.exists(stale):
      os.remove(stale)
  os.makedirs(ctx.root, exist_ok=True)
  with open(started_file, "w") as f:
    json.dump({"config_digest": digest}, f)
  start = time.perf_counter()
  summary = runner(ctx)
  seconds = round(time.perf_counter() - start, 1)
  with open(done_file, "w") as f:
    json.dump({"config_digest": digest, "seconds": seconds, "seed": ctx.seed, **summary}, f,
              indent=2)
  os.remove(started_file)
  return {"status": "ran", "seconds": seconds}


def run(config_dir: str, output_dir: str, force: bool = False, jobs: int = 1,
        seeds: list[int] | None = None, rounds: int = 1) -> dict[str, dict]:
  """Checks every stage config, then runs the stages in order: the world once,
  the per-seed stages for each training seed (default: the world's seed), then
  per seed the stages of each later self-training round up to `rounds`, the
  report over all of them.

  Returns:
    Status and timing by stage: "world", "seed_<s>/<stage>",
    "seed_<s>/round_<r>/<stage>", "report".
  """
  if rounds < 1:
    raise configs.ConfigError(f"--rounds must be 1 or more, got {rounds}")
  check_configs(config_dir, rounds)
  seeds = tuple(int(seed) for seed in seeds) if seeds else (world_seed(config_dir),)
  if len(set(seeds)) != len(seeds):
    raise configs.ConfigError(f"--seeds lists a seed twice: {list(seeds)}")
  os.makedirs(output_dir, exist_ok=True)
  base = Context(config_dir, output_dir, jobs, seeds=seeds, rounds=rounds)
  results = {}
  world_digest = _config_digest(config_dir, "world", "")
  results["world"] = _run_stage(dataclasses.replace(base, stage="world"), _run_world,
                                world_digest, force)
  upstream = world_digest
  for seed in seeds:
    digest = world_digest
    for stage, runner in SEED_STAGES:
      digest = _config_digest(config_dir, stage, digest)
      results[f"seed_{seed}/{stage}"] = _run_stage(
          dataclasses.replace(base, stage=stage, seed=seed), runner, digest, force)
    for round_ in range(2, rounds + 1):
      digest = _config_digest(config_dir, "rounds", f"{digest}:round_{round_}")
      for stage, runner in ROUND_STAGES:
        digest = _config_digest(config_dir, stage, digest)
        results[f"seed_{seed}/round_{round_}/{stage}"] = _run_stage(
            dataclasses.replace(base, stage=stage, seed=seed, round=round_), runner, digest,
            force)
    upstream += f"seed_{seed}:{digest}"
  results["report"] = _run_stage(dataclasses.replace(base, stage="report"), _run_report,
                                 _config_digest(config_dir, "report", upstream), force)
  return results


def main(argv):
  del argv
  start = time.perf_counter()
  try:
    seeds = [int(seed) for seed in _SEEDS.value] if _SEEDS.value else None
  except ValueError:
    raise cli.UserError(f"--seeds must be integers separated by commas, got {_SEEDS.value}"
                        ) from None
  for flag in (_OUTPUT_DIR, _CONFIG_DIR):
    if "://" in flag.value:
      raise cli.UserError(f"--{flag.name} {flag.value}: the demo runs on local paths only "
                          "(run the binaries themselves for gs:// paths)")
  results = run(_CONFIG_DIR.value, _OUTPUT_DIR.value, _FORCE.value, _JOBS.value, seeds,
                _ROUNDS.value)
  print(f"\n{'stage':<32}{'status':<40}{'seconds':>8}")
  for stage, result in results.items():
    print(f"{stage:<32}{result['status']:<40}{result.get('seconds', ''):>8}")
  print(f"{'total':<72}{time.perf_counter() - start:>8.1f}")
  print(f"Report: {os.path.join(_OUTPUT_DIR.value, 'report', report.REPORT_FILE)}")


def run_cli():
  cli.run_absl(main, cloud_paths=False)  # local paths only: main refuses gs:// itself


if __name__ == "__main__":
  run_cli()
