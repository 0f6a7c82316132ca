"""The demo's report: teachers against the MuST student, as a table and a figure.

`write` puts `report.md` and `metrics.png` in the report folder. Every number
comes from the stages' own evaluation files; nothing is typed in.
"""
import os
from typing import Mapping

import matplotlib

matplotlib.use("Agg")
from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top

from must import tasks

REPORT_FILE = "report.md"
FIGURE_FILE = "metrics.png"
PSEUDO_LABEL_SHEET = "pseudo_labels/contact_sheet.png"
CLAIM_RATIO = 0.9  # the student should reach this fraction of each teacher's metric
COMMANDS_FILE = "commands.sh"
TRANSFER_CLAIM_TASK = "surface_normals"  # no teacher taught it
TRANSFER_CLAIM_RIVALS = ("scratch", "classification teacher")
LOWER_IS_BETTER = ("mean_angle", "abs_rel")

Metrics = Mapping[str, Mapping[str, float]]  # task -> metric name -> value


def comparison_rows(teachers: Metrics, student: Metrics,
                    baselines: Metrics | None = None) -> list[dict]:
  """One row per task teacher and student were scored on: the primary metric of
  the teacher, the MuST student and the single-task student (None if not run),
  the student/teacher ratio and whether the claim holds."""
  rows = []
  for task in sorted(set(teachers) & set(student)):
    metric = tasks.get(task).primary_metric
    teacher, pupil = teachers[task].get(metric), student[task].get(metric)
    single = (baselines or {}).get(task, {}).get(metric)
    ratio = pupil / teacher if teacher else float("nan")
    rows.append({"task": task, "metric": metric, "teacher": teacher, "student": pupil,
                 "single_task": single, "ratio": ratio, "holds": ratio >= CLAIM_RATIO})
  return rows


def comparison_table(rows: list[dict]) -> str:
  """Markdown: the best model per task in bold."""
  lines = ["| task | metric | teacher | MuST student | single-task student | "
           "MuST / teacher | >= 0.9 of teacher |", "|---|---|---|---|---|---|---|"]
  for row in rows:
    values = [row["teacher"], row["student"], row["single_task"]]
    best = max(v for v in values if v is not None)
    cells = ["" if v is None else f"**{v:.3f}**" if v == best else f"{v:.3f}" for v in values]
    lines.append(f"| {row['task']} | {row['metric']} | " + " | ".join(cells) +
                 f" | {row['ratio']:.2f} | {'holds' if row['holds'] else 'does not hold'} |")
  return "\n".join(lines)


def transfer_table(transfer: Mapping[str, Metrics]) -> str:
  """Markdown: rows are initializations, columns each task's metrics; best in bold.

  The best value is the highest, except for angles and errors (lowest).
  """
  columns = sorted({(task, name) for by_task in transfer.values()
                    for task, values in by_task.items() for name in values
                    if name != "images"})
  best = {}
  for task, name in columns:
    values = [by_task[task][name] for by_task in transfer.values() if name in by_task.get(task, {})]
    best[task, name] = min(values) if name in LOWER_IS_BETTER else max(values)
  lines = ["| initialization | " + " | ".join(f"{t} {n}" for t, n in columns) + " |",
           "|---" * (len(columns) + 1) + "|"]
  for init, by_task in transfer.items():
    cells = []
    for task, name in columns:
      value = by_task.get(task, {}).get(name)
      cells.append("" if value is None else
                   f"**{value:.3f}**" if value == best[task, name] else f"{value:.3f}")
    lines.append(f"| {init} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def transfer_claim(transfer: Mapping[str, Metrics] | None) -> str:
  """Whether the MuST backbone transfers better than scratch and than the
  classification teacher on surface normals (primary metric), as a sentence."""
  metric = tasks.get(TRANSFER_CLAIM_TASK).primary_metric
  scores = {init: by_task[TRANSFER_CLAIM_TASK][metric] for init, by_task in (transfer or {}).items()
            if metric in by_task.get(TRANSFER_CLAIM_TASK, {})}
  if "MuST student" not in scores:
    return f"The MuST student was not fine-tuned on {TRANSFER_CLAIM_TASK}; the claim is untested."
  must = scores["MuST student"]
  verdicts = []
  for rival in TRANSFER_CLAIM_RIVALS:
    if rival not in scores:
      verdicts.append(f"{rival}: not run")
    else:
      better = must > scores[rival]
      verdicts.append(f"{rival} ({scores[rival]:.3f}): "
                      f"{'holds' if better else 'does not hold'}")
  return (f"The paper's claim that the MuST backbone transfers better, on "
          f"{TRANSFER_CLAIM_TASK} {metric} (MuST {must:.3f}), than: " + "; ".join(verdicts) + ".")


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


def _figure(rows: list[dict], transfer: Mapping[str, Metrics] | None, path: str) -> None:
  """Left: teachers vs students per task. Right: each transfer task's primary
  metric per initialization."""
  transfer_tasks = sorted({task for by_task in (transfer or {}).values() for task in by_task})
  figure, axes = plt.subplots(1, 2 if transfer_tasks else 1, squeeze=False,
                              figsize=(1.6 + 1.4 * len(rows) + 4.5 * bool(transfer_tasks), 3.4))
  axis = axes[0][0]
  x = range(len(rows))
  axis.bar([i - 0.2 for i in x], [r["teacher"] for r in rows], 0.4, label="teacher")
  axis.bar([i + 0.2 for i in x], [r["student"] for r in rows], 0.4, label="MuST student")
  singles = [(i, r["single_task"]) for i, r in zip(x, rows) if r["single_task"] is not None]
  if singles:
    axis.scatter([i + 0.2 for i, _ in singles], [v for _, v in singles], color="black",
                 marker="_", s=300, label="single-task student", zorder=3)
  axis.set_xticks(list(x), [f"{r['task']}\n{r['metric']}" for r in rows], fontsize=8)
  axis.set_ylim(0, 1)
  axis.legend(fontsize=8)
  axis.set_title("Held-out ground truth: teachers, MuST student, single-task students",
                 fontsize=9)
  if transfer_tasks:
    axis = axes[0][1]
    inits = list(transfer)
    width = 0.8 / len(inits)
    for i, init in enumerate(inits):
      values = [transfer[init].get(task, {}).get(tasks.get(task).primary_metric, 0.0)
                for task in transfer_tasks]
      axis.bar([t + (i - (len(inits) - 1) / 2) * width for t in range(len(transfer_tasks))],
               values, width, label=init)
    axis.set_xticks(range(len(transfer_tasks)),
                    [f"{t}\n{tasks.get(t).primary_metric}" for t in transfer_tasks], fontsize=8)
    axis.set_ylim(0, 1)
    axis.legend(fontsize=7)
    axis.set_title("Transfer: fine-tuned from each initialization", fontsize=9)
  figure.tight_layout()
  figure.savefig(path, dpi=120)
  plt.close(figure)


def write(report_dir: str, teachers: Metrics, student: Metrics,
          timings: Mapping[str, float | None], baselines: Metrics | None = None,
          transfer: Mapping[str, Metrics] | None = None,
          transfer_skipped: Mapping[str, str] | None = None,
          reproduce: str = "make demo",
          pseudo_labels: Mapping[str, Mapping] | None = None) -> str:
  """Writes report.md and metrics.png; returns the Markdown.

  Args:
    report_dir: where to write.
    teachers: each teacher's metrics on its task.
    student: the student's metrics per task.
    timings: stage -> seconds.
    baselines: single-task students' metrics per task.
    transfer: initialization -> downstream task -> metrics, when the transfer
      study ran.
    transfer_skipped: initialization -> why it was left out.
    reproduce: the command that reran this demo; every binary it ran is
      listed in `commands.sh` beside the report.
    pseudo_labels: per-task label statistics of the pseudo-labeling run.
  """
  os.makedirs(report_dir, exist_ok=True)
  rows = comparison_rows(teachers, student, baselines)
  _figure(rows, transfer, os.path.join(report_dir, FIGURE_FILE))
  held = [r["task"] for r in rows if r["holds"]]
  missed = [r["task"] for r in rows if not r["holds"]]
  all_metrics = "\n".join(
      f"- {task}: teacher {dict(teachers[task])}, student {dict(student.get(task, {}))}"
      for task in sorted(teachers))
  text = f"""# MuST on the procedural world

## Student vs teachers (held-out ground truth)

Teacher: the specialized model on its own task. MuST student: one model
trained on every teacher's pseudo labels. Single-task student: the same
student recipe and schedule on one task's pseudo labels only.

{comparison_table(rows)}

The paper's claim that the student reaches at least {CLAIM_RATIO} of each
teacher's metric holds for: {', '.join(held) or 'no task'}; it does not hold
for: {', '.join(missed) or 'no task'}.

![metrics]({FIGURE_FILE})

Every metric:

{all_metrics}

## Transfer: fine-tuning from each initialization (same budget per row)

{transfer_table(transfer) if transfer else 'The transfer study did not run.'}

{transfer_claim(transfer) if transfer else ''}

{chr(10).join(f"- {init} left out: {why}." for init, why in (transfer_skipped or {}).items())}

## Pseudo labels on corpus images

{pseudo_label_summary(pseudo_labels or {})}

![pseudo labels]({PSEUDO_LABEL_SHEET})

## Timings

| stage | seconds |
|---|---|
""" + "\n".join(f"| {stage} | {seconds if seconds is not None else ''} |"
                for stage, seconds in timings.items()) + """

## Reproduce

```
""" + reproduce + """
```

With `--force` every stage is redone. Every binary the stages ran, with its
exact flags, is in [`""" + COMMANDS_FILE + """`](""" + COMMANDS_FILE + """).
"""
  with open(os.path.join(report_dir, REPORT_FILE), "w") as f:
    f.write(text)
  return text
