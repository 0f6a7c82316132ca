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
  lower_is_better = ("mean_angle", "abs_rel")
  best = {}
  for task, name in columns:
    values = [by_task[task][name] for by_task in transfer.values() if name in by_task.get(task, {})]
    best[task, name] = min(values) if name in lower_is_better else max(values)
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


def _figure(rows: list[dict], path: str) -> None:
  figure, axis = plt.subplots(figsize=(1.6 + 1.4 * len(rows), 3.2))
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
  figure.tight_layout()
  figure.savefig(path, dpi=120)
  plt.close(figure)


def write(report_dir: str, teachers: Metrics, student: Metrics,
          timings: Mapping[str, float | None], baselines: Metrics | None = None,
          transfer: Mapping[str, Metrics] | None = None,
          transfer_skipped: Mapping[str, str] | None = None) -> str:
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
  """
  os.makedirs(report_dir, exist_ok=True)
  rows = comparison_rows(teachers, student, baselines)
  _figure(rows, os.path.join(report_dir, FIGURE_FILE))
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

{chr(10).join(f"- {init} left out: {why}." for init, why in (transfer_skipped or {}).items())}

## Pseudo labels on corpus images

![pseudo labels]({PSEUDO_LABEL_SHEET})

## Timings

| stage | seconds |
|---|---|
""" + "\n".join(f"| {stage} | {seconds if seconds is not None else ''} |"
                for stage, seconds in timings.items()) + """

## Reproduce

```
make demo                      # or: .venv/bin/python -m must.demo --output_dir out/demo
make demo ARGS=--force         # redo every stage
```

Stage settings are in `configs/demo/`.
"""
  with open(os.path.join(report_dir, REPORT_FILE), "w") as f:
    f.write(text)
  return text
