"""The demo's report: teachers against the MuST student, as tables and a figure.

`write` puts `report.md` and `metrics.png` in the report folder (any
tf.io.gfile path). Every number comes from the stages' own evaluation files;
over several training seeds it is a mean ± spread (`format_stat`) and each of
the paper's claims gets a `verdict`.
"""
import math
import os
from typing import Any, Iterable, Mapping, Sequence

import matplotlib
import tensorflow as tf

matplotlib.use("Agg")
from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top

from must import tasks

REPORT_FILE = "report.md"
FIGURE_FILE = "metrics.png"
PSEUDO_LABEL_SHEET = "pseudo_labels/contact_sheet.png"
QUALITY_PLOT = "label_quality.png"  # the labeling run's quality.png, copied beside the report
ROUNDS_FIGURE = "rounds.png"
CLAIM_RATIO = 0.9  # the student should reach this fraction of each teacher's metric
COMMANDS_FILE = "commands.sh"

HOLDS, FAILS, UNDECIDED = "holds", "does not hold", "undecided"
SPREAD = "half the range between the lowest and the highest seed"

Metrics = Mapping[str, Mapping[str, float]]  # task -> metric name -> value
Seeded = Mapping  # training seed -> what that seed's run gave (Metrics, ...)


def mean_and_spread(values: Sequence[float]) -> tuple[float, float]:
  """The mean of `values` and their spread: half of max - min (nan if any is)."""
  values = [float(v) for v in values]
  if not values or any(math.isnan(v) for v in values):
    return float("nan"), float("nan")
  return sum(values) / len(values), (max(values) - min(values)) / 2


def format_stat(values: Sequence[float], digits: int = 3) -> str:
  """'0.612 ± 0.021' over several seeds (mean ± half the range), '0.612' for one."""
  values = [float(v) for v in values]
  mean, spread = mean_and_spread(values)
  if len(values) == 1:
    return f"{mean:.{digits}f}"
  return f"{mean:.{digits}f} ± {spread:.{digits}f}"


def verdict(holds_for_mean: bool, holds_per_seed: Sequence[bool]) -> str:
  """HOLDS if the claim holds for the mean and for every seed, FAILS if it fails
  for the mean and for every seed, UNDECIDED otherwise."""
  if holds_for_mean and all(holds_per_seed):
    return HOLDS
  if not holds_for_mean and not any(holds_per_seed):
    return FAILS
  return UNDECIDED


def _mean(values: Sequence[float]) -> float:
  return mean_and_spread(values)[0]


def _ratio(student: float, teacher: float) -> float:
  return student / teacher if teacher else float("nan")


def comparison_rows(teachers: Seeded, student: Seeded, baselines: Seeded | None = None
                    ) -> list[dict]:
  """One row per task every seed's teacher and student were scored on.

  Args:
    teachers, student, baselines: seed -> task -> metrics (baselines: the
      single-task students; optional, or missing for some tasks).

  Returns:
    Rows of per-seed lists of the primary metric of the teacher, the MuST
    student and the single-task student (None where not run), the
    student/teacher ratio, and the verdict of the claim that the student
    reaches CLAIM_RATIO of the teacher.
  """
  seeds = [seed for seed in teachers if seed in student]
  if not seeds:
    return []
  common = set.intersection(*(set(teachers[s]) & set(student[s]) for s in seeds))
  rows = []
  for task in sorted(common):
    metric = tasks.get(task).primary_metric
    teacher = [teachers[s][task][metric] for s in seeds]
    pupil = [student[s][task][metric] for s in seeds]
    singles = [((baselines or {}).get(s) or {}).get(task, {}).get(metric) for s in seeds]
    ratios = [_ratio(p, t) for p, t in zip(pupil, teacher)]
    per_seed = [r >= CLAIM_RATIO for r in ratios]
    for_mean = _ratio(_mean(pupil), _mean(teacher)) >= CLAIM_RATIO
    rows.append({"task": task, "metric": metric, "seeds": seeds, "teacher": teacher,
                 "student": pupil,
                 "single_task": singles if all(v is not None for v in singles) else None,
                 "ratio": ratios, "holds_per_seed": per_seed, "holds_for_mean": for_mean,
                 "verdict": verdict(for_mean, per_seed)})
  return rows


def comparison_table(rows: list[dict]) -> str:
  """Markdown: the best model per task (by mean) in bold."""
  lines = ["| task | metric | teacher | MuST student | single-task student | "
           f"MuST / teacher | >= {CLAIM_RATIO} of teacher |", "|---|---|---|---|---|---|---|"]
  for row in rows:
    values = [row["teacher"], row["student"], row["single_task"]]
    best = max(_mean(v) for v in values if v is not None)
    cells = ["" if v is None else f"**{format_stat(v)}**" if _mean(v) == best
             else format_stat(v) for v in values]
    lines.append(f"| {row['task']} | {row['metric']} | " + " | ".join(cells) +
                 f" | {format_stat(row['ratio'], 2)} | {row['verdict']} |")
  return "\n".join(lines)


def undecided_details(rows: list[dict]) -> str:
  """Markdown bullets: the per-seed numbers of each undecided student claim."""
  lines = []
  for row in rows:
    if row["verdict"] == UNDECIDED:
      per_seed = "; ".join(
          f"seed {seed}: {ratio:.2f} ({pupil:.3f} / {teacher:.3f})"
          for seed, ratio, pupil, teacher in zip(row["seeds"], row["ratio"], row["student"],
                                                 row["teacher"]))
      lines.append(f"- {row['task']} is undecided; MuST / teacher per seed: {per_seed}.")
  return "\n".join(lines)


def _transfer_values(transfer: Seeded) -> dict[tuple[str, str, str], list[float]]:
  """(initialization, task, metric) -> values over the seeds that have it."""
  values = {}
  for by_init in transfer.values():
    for init, by_task in by_init.items():
      for task, metrics in by_task.items():
        for name, value in metrics.items():
          if name != "images":
            values.setdefault((init, task, name), []).append(value)
  return values


def transfer_table(transfer: Seeded) -> str:
  """Markdown: rows are initializations, columns each task's metrics (mean and
  spread over the seeds); best mean in bold.

  The best value is the highest, except for angles and errors (lowest).
  """
  values = _transfer_values(transfer)
  inits = list(dict.fromkeys(init for by_init in transfer.values() for init in by_init))
  columns = sorted({(task, name) for _, task, name in values})
  best = {}
  for task, name in columns:
    means = [_mean(v) for (_, t, n), v in values.items() if (t, n) == (task, name)]
    best[task, name] = min(means) if name in tasks.get(task).lower_is_better else max(means)
  lines = ["| initialization | " + " | ".join(f"{t} {n}" for t, n in columns) + " |",
           "|---" * (len(columns) + 1) + "|"]
  for init in inits:
    cells = []
    for task, name in columns:
      value = values.get((init, task, name))
      cells.append("" if value is None else f"**{format_stat(value)}**"
                   if _mean(value) == best[task, name] else format_stat(value))
    lines.append(f"| {init} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def transfer_verdicts(transfer: Seeded | None, claim: Mapping | None) -> list[dict] | None:
  """Whether the MuST backbone transfers better than each rival on the claim's
  task (primary metric), for the means and for every seed.

  `transfer` is seed -> initialization -> task -> metrics; `claim` is
  transfer.yaml's {'task', 'rivals'}. Returns None without a claim or a MuST
  run on its task; else per rival {"rival", "seeds", "must", "values" (the
  rival's, per seed), "verdict"}, the last two None where the rival did not run.
  """
  if not claim:
    return None
  task = claim["task"]
  metric = tasks.get(task).primary_metric

  def scores(init: str) -> dict:
    return {seed: by_init[init][task][metric] for seed, by_init in (transfer or {}).items()
            if metric in by_init.get(init, {}).get(task, {})}

  must = scores("MuST student")
  if not must:
    return None
  claims = []
  for rival in claim["rivals"]:
    theirs = scores(rival)
    seeds = [seed for seed in must if seed in theirs]
    if not seeds:
      claims.append({"rival": rival, "seeds": [], "must": list(must.values()), "values": None,
                     "verdict": None})
      continue
    ours, rivals = [must[s] for s in seeds], [theirs[s] for s in seeds]
    claims.append({"rival": rival, "seeds": seeds, "must": ours, "values": rivals,
                   "verdict": verdict(_mean(ours) > _mean(rivals),
                                      [a > b for a, b in zip(ours, rivals)])})
  return claims


def transfer_claim(transfer: Seeded | None, claim: Mapping | None) -> str:
  """Whether the MuST backbone transfers better than each of the claim's rivals
  on its task (primary metric), as a sentence; an undecided rival comes with
  the per-seed values."""
  if not claim:
    return "No transfer claim is configured (transfer.yaml: claim)."
  metric = tasks.get(claim["task"]).primary_metric
  claims = transfer_verdicts(transfer, claim)
  if claims is None:
    return f"The MuST student was not fine-tuned on {claim['task']}; the claim is untested."
  parts = []
  for rival in claims:
    if rival["verdict"] is None:
      parts.append(f"{rival['rival']}: not run")
      continue
    part = f"{rival['rival']} ({format_stat(rival['values'])}): {rival['verdict']}"
    if rival["verdict"] == UNDECIDED:
      part += " (per seed, MuST vs " + rival["rival"] + ": " + ", ".join(
          f"seed {s} {a:.3f} vs {b:.3f}"
          for s, a, b in zip(rival["seeds"], rival["must"], rival["values"])) + ")"
    parts.append(part)
  return (f"The paper's claim that the MuST backbone transfers better, on "
          f"{claim['task']} {metric} (MuST {format_stat(claims[0]['must'])}), than: " +
          "; ".join(parts) + ".")


def claims_sentence(rows: list[dict], transfer: Seeded | None, seeds: Sequence,
                    claim: Mapping | None = None) -> str:
  """One sentence: which of the paper's claims hold, which do not, which are
  undecided, over how many seeds."""
  buckets = {HOLDS: [], FAILS: [], UNDECIDED: []}
  for row in rows:
    buckets[row["verdict"]].append(f"student >= {CLAIM_RATIO} of teacher on {row['task']}")
  for rival in transfer_verdicts(transfer, claim) or []:
    if rival["verdict"] is not None:
      buckets[rival["verdict"]].append(
          f"MuST backbone beats {rival['rival']} on {claim['task']}")
  seeds = list(seeds)
  over = (f"Over {len(seeds)} training seeds ({', '.join(map(str, seeds))})" if len(seeds) > 1
          else f"With one training seed ({seeds[0]})" if seeds else "With no seed")
  return (f"{over}, the paper's claims that hold: {', '.join(buckets[HOLDS]) or 'none'}; "
          f"that do not hold: {', '.join(buckets[FAILS]) or 'none'}; "
          f"undecided: {', '.join(buckets[UNDECIDED]) or 'none'}.")


def pseudo_label_summary(task_stats: Mapping[str, Mapping]) -> str:
  """Markdown bullets: what the teachers' pseudo labels hold, per task (from the
  pipeline's summary.json), so that empty or one-class labels are seen."""
  lines = []
  for task, stats in sorted(task_stats.items()):
    facts = [f"{stats.get('pseudo', 0)} images pseudo-labeled"]
    if "boxes_per_image" in stats:
      facts.append(f"{stats['boxes_per_image']:.2f} boxes per image")
    if "ignored_pixel_fraction" in stats:
      facts.append(f"{100 * stats['ignored_pixel_fraction']:.1f} % of pixels ignored")
    histogram = stats.get("class_histogram") or {}
    if histogram:
      top_class, top_count = max(histogram.items(), key=lambda item: item[1])
      facts.append(f"{len(histogram)} classes, the most frequent (id {top_class}) "
                   f"{100 * top_count / sum(histogram.values()):.0f} %")
    lines.append(f"- {task}: " + ", ".join(facts))
  return "\n".join(lines)


def _number(value) -> str:
  return f"{value:.3f}" if isinstance(value, float) else str(value)


def label_quality_table(quality: Mapping[str, Any]) -> str:
  """A Markdown table of a labeling run's quality.json: per task the images
  scored, its primary metric on the teachers' outputs, and the suggested
  threshold with what it keeps and its criterion."""
  rows = ["| task | images | metric | suggested threshold | there | criterion |",
          "|---|---|---|---|---|---|"]
  for task, stats in sorted(quality.get("tasks", {}).items()):
    primary = stats.get("primary_metric", "")
    metric = f"{primary} {_number(stats.get('metric', {}).get(primary, ''))}"
    suggested = stats.get("suggested")
    if suggested:
      there = ", ".join(f"{k} {_number(v)}" for k, v in sorted(suggested.items())
                        if k not in ("threshold", "value", "criterion"))
      rows.append(f"| {task} | {stats['images']} | {metric} | {suggested['threshold']} "
                  f"{suggested['value']} | {there} | {suggested['criterion']} |")
    else:
      rows.append(f"| {task} | {stats['images']} | {metric} | none | | no threshold |")
  return "\n".join(rows)


def timing_rows(records: Iterable[Mapping]) -> list[dict]:
  """Per-stage timings summed over runs (seeds), then a total row.

  Args:
    records: one per stage run: {"stage", "seconds" (wall), and for stages
      that train "train_step_seconds" (summed over their training runs) and
      "parallel_slots" (cores its training kept busy; 1 if absent)}.

  Returns:
    {"stage", "seconds", "slots" (the distinct slot counts), "step_seconds"
    (None for stages that do not train), "share"}: share = step seconds /
    the sum of wall seconds x slots over the stage's records (or all records).
  """
  stages: dict[str, dict] = {}
  for record in records:
    row = stages.setdefault(record["stage"], {"stage": record["stage"], "seconds": 0.0,
                                              "slots": [], "step_seconds": None,
                                              "slot_seconds": 0.0})
    slots = int(record.get("parallel_slots") or 1)
    seconds = float(record.get("seconds") or 0.0)
    row["seconds"] += seconds
    row["slot_seconds"] += seconds * slots
    if slots not in row["slots"]:
      row["slots"].append(slots)
    if record.get("train_step_seconds") is not None:
      row["step_seconds"] = (row["step_seconds"] or 0.0) + float(record["train_step_seconds"])
  rows = list(stages.values())
  total = {"stage": "total", "seconds": sum(r["seconds"] for r in rows), "slots": [],
           "step_seconds": sum(r["step_seconds"] or 0.0 for r in rows),
           "slot_seconds": sum(r["slot_seconds"] for r in rows)}
  for row in rows + [total]:
    row["share"] = (row["step_seconds"] / row["slot_seconds"]
                    if row["step_seconds"] is not None and row["slot_seconds"] else None)
  return rows + [total]


def timings_table(records: Iterable[Mapping]) -> str:
  """Markdown of `timing_rows`, with the share's definition under it."""
  lines = ["| stage | wall seconds | parallel slots | training-step seconds | "
           "share of wall time in training steps |", "|---|---|---|---|---|"]
  for row in timing_rows(records):
    step = "" if row["step_seconds"] is None else f"{row['step_seconds']:.1f}"
    share = "" if row["share"] is None else f"{100 * row['share']:.0f} %"
    stage = "**total**" if row["stage"] == "total" else row["stage"]
    lines.append(f"| {stage} | {row['seconds']:.1f} | {', '.join(map(str, row['slots']))} | "
                 f"{step} | {share} |")
  lines.append("")
  lines.append("Share = training-step seconds (inside the training loops, from each run's "
               "`train_timing.json`, times its CPU replicas) / (wall seconds x parallel "
               "slots, the cores its training kept busy: runs at once, or a lone run's CPU "
               "replicas; 1 for a stage that does not train); the total row divides all "
               "training-step seconds by the sum of wall x slots over the stages.")
  return "\n".join(lines)


def _bars(axis, positions, series: list[Sequence[float]], width, label) -> None:
  """Bars at the means; min–max error bars when there is more than one seed."""
  means = [_mean(v) for v in series]
  error = None
  if any(len(v) > 1 for v in series):  # max(0, ...): rounding
    error = [[max(0.0, m - min(v)) for m, v in zip(means, series)],
             [max(0.0, max(v) - m) for m, v in zip(means, series)]]
  axis.bar(positions, means, width, yerr=error, capsize=3, label=label)


def _figure(rows: list[dict], transfer: Seeded | None, path: str) -> None:
  """Left: teachers vs students per task. Right: each transfer task's primary
  metric per initialization. Means over the seeds, min–max error bars."""
  values = _transfer_values(transfer or {})
  transfer_tasks = sorted({task for _, task, _ in values})
  inits = list(dict.fromkeys(init for init, _, _ in values))
  figure, axes = plt.subplots(1, 2 if transfer_tasks else 1, squeeze=False,
                              figsize=(1.6 + 1.4 * len(rows) + 4.5 * bool(transfer_tasks), 3.6))
  axis = axes[0][0]
  x = range(len(rows))
  _bars(axis, [i - 0.2 for i in x], [r["teacher"] for r in rows], 0.4, "teacher")
  _bars(axis, [i + 0.2 for i in x], [r["student"] for r in rows], 0.4, "MuST student")
  singles = [(i, r["single_task"]) for i, r in zip(x, rows) if r["single_task"] is not None]
  if singles:
    axis.scatter([i + 0.2 for i, _ in singles], [_mean(v) for _, v in singles], color="black",
                 marker="_", s=300, label="single-task student", zorder=3)
  axis.set_xticks(list(x), [f"{r['task']}\n{r['metric']}" for r in rows], fontsize=8)
  axis.set_ylim(0, 1)
  axis.legend(fontsize=8)
  seeds = len(rows[0]["seeds"]) if rows else 1
  over = f"\n(mean of {seeds} seeds, bars span min to max)" if seeds > 1 else ""
  axis.set_title("Held-out ground truth: teachers, MuST student, single-task students" + over,
                 fontsize=9)
  if transfer_tasks:
    axis = axes[0][1]
    width = 0.8 / len(inits)
    for i, init in enumerate(inits):
      series = [values.get((init, task, tasks.get(task).primary_metric), [0.0])
                for task in transfer_tasks]
      _bars(axis, [t + (i - (len(inits) - 1) / 2) * width for t in range(len(transfer_tasks))],
            series, width, init)
    axis.set_xticks(range(len(transfer_tasks)),
                    [f"{t}\n{tasks.get(t).primary_metric}" for t in transfer_tasks], fontsize=8)
    axis.set_ylim(0, 1)
    axis.legend(fontsize=7)
    axis.set_title("Transfer: fine-tuned from each initialization" + over, fontsize=9)
  figure.tight_layout()
  with tf.io.gfile.GFile(path, "wb") as f:
    figure.savefig(f, dpi=120, format="png")
  plt.close(figure)


def _every_metric(teachers: Seeded, student: Seeded) -> str:
  """Markdown bullets: every metric of each teacher and of the student, per task."""
  def stats(by_seed: Seeded, task: str) -> str:
    runs = [metrics[task] for metrics in by_seed.values() if task in metrics]
    if not runs:
      return "{}"
    names = [name for name in runs[0] if all(name in run for run in runs)]
    def number(values):  # counts (whole numbers above 1, e.g. images) without decimals
      whole = all(float(v).is_integer() and abs(v) > 1 for v in values)
      return format_stat(values, 0 if whole else 3)
    return "{" + ", ".join(f"{name}: {number([run[name] for run in runs])}"
                           for name in names) + "}"
  tasks_seen = sorted({task for metrics in teachers.values() for task in metrics})
  return "\n".join(f"- {task}: teacher {stats(teachers, task)}, student {stats(student, task)}"
                   for task in tasks_seen)


def _better(task: str, metric: str, value: float, than: float) -> bool:
  return value < than if metric in tasks.get(task).lower_is_better else value > than


def _round_rows(teachers: Seeded, rounds: Mapping[int, Seeded]) -> list[dict]:
  """Per task, then per transfer task: the primary metric by round (round 0: the
  teachers; transfer: the round's student backbone fine-tuned), over the seeds.

  Args:
    teachers: seed -> task -> metrics.
    rounds: round -> seed -> {"student": task -> metrics, "transfer": task ->
      metrics of the fine-tuning from that round's student}.
  """
  seeds = [seed for seed in teachers if all(seed in by_seed for by_seed in rounds.values())]
  rows = []
  for kind in ("student", "transfer"):
    names = set.intersection(*(set(rounds[r][s][kind]) for r in rounds for s in seeds))
    for task in sorted(names):
      metric = tasks.get(task).primary_metric
      values = {r: [rounds[r][s][kind][task][metric] for s in seeds] for r in rounds}
      if kind == "student":
        values = {0: [teachers[s][task][metric] for s in seeds], **values}
      last, first = max(rounds), min(rounds)
      per_seed = [_better(task, metric, a, b) for a, b in zip(values[last], values[first])]
      rows.append({"kind": kind, "task": task, "metric": metric, "values": values,
                   "verdict": verdict(_better(task, metric, _mean(values[last]),
                                              _mean(values[first])), per_seed)})
  return rows


def _rounds_figure(rows: list[dict], path: str) -> None:
  """Each task's primary metric against the round (0: the teachers), means over seeds."""
  figure, axis = plt.subplots(figsize=(7.5, 3.6))
  for row in rows:
    rounds = sorted(row["values"])
    axis.plot(rounds, [_mean(row["values"][r]) for r in rounds], marker="o",
              linestyle="-" if row["kind"] == "student" else "--",
              label=f"{row['task']} {row['metric']}" + (" (transfer)" if row["kind"] ==
                                                        "transfer" else ""))
  ticks = sorted({r for row in rows for r in row["values"]})
  axis.set_xticks(ticks, ["teachers" if r == 0 else f"round {r}" for r in ticks])
  axis.set_xlabel("self-training round")
  axis.set_ylim(0, 1)
  axis.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
  axis.set_title("Held-out ground truth by round", fontsize=9)
  figure.tight_layout()
  with tf.io.gfile.GFile(path, "wb") as f:
    figure.savefig(f, dpi=120, format="png")
  plt.close(figure)


def rounds_section(teachers: Seeded, rounds: Mapping[int, Seeded] | None,
                   report_dir: str) -> str:
  """Markdown (and `ROUNDS_FIGURE`): each task's metric by self-training round,
  and the transfer of each round's student backbone."""
  if not rounds or len(rounds) < 2:
    return ""
  rows = _round_rows(teachers, rounds)
  _rounds_figure(rows, os.path.join(report_dir, ROUNDS_FIGURE))
  first, last = min(rounds), max(rounds)
  def table(kind: str, head: list[str]) -> str:
    lines = ["| task | metric | " + " | ".join(head) + f" | round {last} beats round {first} |",
             "|---" * (len(head) + 3) + "|"]
    for row in (r for r in rows if r["kind"] == kind):
      cells = [format_stat(row["values"][r]) for r in sorted(row["values"])]
      lines.append(f"| {row['task']} | {row['metric']} | " + " | ".join(cells) +
                   f" | {row['verdict']} |")
    return "\n".join(lines)
  round_names = [f"round {r} student" for r in sorted(rounds)]
  transfer = f"""
Transfer of each round's student backbone (fine-tuned as in the transfer study
above):

{table("transfer", round_names)}
""" if any(row["kind"] == "transfer" for row in rows) else ""
  return f"""## Self-training rounds

Round 1's student learns from the specialized teachers; the teacher of every
task in round r+1 is round r's student, whose new student trains from scratch
with input noise and stochastic depth (Noisy Student; `rounds.yaml`). Each
task's primary metric on held-out ground truth by round:

{table("student", ["teachers"] + round_names)}
{transfer}
![rounds]({ROUNDS_FIGURE})
"""


def _quality_section(quality: Mapping[str, Any] | None, split: str) -> str:
  if not quality:
    return ""
  return f"""## Pseudo-label quality against ground truth

The teachers labeled the {split or 'labeled'} images too and were scored against their
ground truth (`quality.json` of that run): the metric on the teachers' raw outputs,
and the threshold the criterion suggests, with what the pseudo labels reach there.

{label_quality_table(quality)}

![label quality]({QUALITY_PLOT})
"""


def write(report_dir: str, teachers: Seeded, student: Seeded,
          timings: Iterable[Mapping], baselines: Seeded | None = None,
          transfer: Seeded | None = None,
          transfer_skipped: Mapping[str, str] | None = None,
          transfer_claim_config: Mapping | None = None,
          reproduce: str = "make demo",
          pseudo_labels: Seeded | None = None,
          label_quality: Mapping[str, Any] | None = None,
          label_quality_split: str = "",
          rounds: Mapping[int, Seeded] | None = None) -> str:
  """Writes report.md and metrics.png; returns the Markdown.

  Args:
    report_dir: where to write.
    teachers: seed -> each teacher's metrics on its task.
    student: seed -> the student's metrics per task.
    timings: one record per stage run (see `timing_rows`).
    baselines: seed -> single-task students' metrics per task.
    transfer: seed -> initialization -> downstream task -> metrics, when the
      transfer study ran.
    transfer_skipped: initialization -> why it was left out.
    transfer_claim_config: {'task', 'rivals'} of the transfer claim
      (transfer.yaml's `claim`).
    reproduce: the command that reran this demo; every binary it ran is
      listed in `commands.sh` beside the report.
    pseudo_labels: seed -> per-task label statistics of the pseudo-labeling run.
    label_quality: a labeling run's quality.json (its plot copied to
      `QUALITY_PLOT` in `report_dir`), scored on `label_quality_split`.
    rounds: with several self-training rounds, round -> seed -> {"student":
      task -> metrics, "transfer": task -> metrics of the fine-tuning from that
      round's student} (`rounds_section`).
  """
  tf.io.gfile.makedirs(report_dir)
  seeds = list(teachers)
  rows = comparison_rows(teachers, student, baselines)
  _figure(rows, transfer, os.path.join(report_dir, FIGURE_FILE))
  by_verdict = {v: [r["task"] for r in rows if r["verdict"] == v] for v in (HOLDS, FAILS,
                                                                             UNDECIDED)}
  numbers = (f"Each number is the mean over the {len(seeds)} training seeds ± {SPREAD} (the "
             f"figure's bars span min to max). A claim holds when it holds for the means and "
             f"for every seed, does not hold when it fails for the means and for every seed, "
             f"and is undecided otherwise." if len(seeds) > 1 else
             "Each number comes from one training seed; with more seeds (`--seeds`) every "
             "number becomes a mean ± spread and a claim can be undecided.")
  if pseudo_labels and len(pseudo_labels) > 1:
    labels = "\n\n".join(f"Seed {seed}'s teachers:\n\n{pseudo_label_summary(stats)}"
                         for seed, stats in pseudo_labels.items())
    labels += f"\n\nThe sheet shows seed {next(iter(pseudo_labels))}'s pseudo labels."
  else:
    labels = pseudo_label_summary(next(iter((pseudo_labels or {0: {}}).values())))
  text = f"""# MuST on the procedural world

{claims_sentence(rows, transfer, seeds, transfer_claim_config)}

{numbers}

## Student vs teachers (held-out ground truth)

Teacher: the specialized model on its own task. MuST student: one model
trained on every teacher's pseudo labels. Single-task student: the same
student recipe and schedule on one task's pseudo labels only.

{comparison_table(rows)}

The paper's claim that the student reaches at least {CLAIM_RATIO} of each
teacher's metric holds for: {', '.join(by_verdict[HOLDS]) or 'no task'}; it does not hold
for: {', '.join(by_verdict[FAILS]) or 'no task'}; it is undecided for:
{', '.join(by_verdict[UNDECIDED]) or 'no task'}.

{undecided_details(rows)}

![metrics]({FIGURE_FILE})

Every metric:

{_every_metric(teachers, student)}

## Transfer: fine-tuning from each initialization (same budget per row)

{transfer_table(transfer) if transfer else 'The transfer study did not run.'}

{transfer_claim(transfer, transfer_claim_config) if transfer else ''}

{chr(10).join(f"- {init} left out: {why}." for init, why in (transfer_skipped or {}).items())}

{rounds_section(teachers, rounds, report_dir)}

## Pseudo labels on corpus images

{labels}

![pseudo labels]({PSEUDO_LABEL_SHEET})

{_quality_section(label_quality, label_quality_split)}

## Timings

Wall seconds as recorded when each stage ran, summed over the seeds' runs.

{timings_table(timings)}

## Reproduce

```
""" + reproduce + """
```

With `--force` every stage is redone. Every binary the stages ran, with its
exact flags, is in [`""" + COMMANDS_FILE + """`](""" + COMMANDS_FILE + """).
"""
  with tf.io.gfile.GFile(os.path.join(report_dir, REPORT_FILE), "w") as f:
    f.write(text)
  return text
