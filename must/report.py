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


def comparison_rows(teachers: Metrics, student: Metrics) -> list[dict]:
  """One row per task both were scored on: primary metric, ratio, claim held."""
  rows = []
  for task in sorted(set(teachers) & set(student)):
    metric = tasks.get(task).primary_metric
    teacher, pupil = teachers[task].get(metric), student[task].get(metric)
    ratio = pupil / teacher if teacher else float("nan")
    rows.append({"task": task, "metric": metric, "teacher": teacher, "student": pupil,
                 "ratio": ratio, "holds": ratio >= CLAIM_RATIO})
  return rows


def comparison_table(rows: list[dict]) -> str:
  """Markdown: the better model per task in bold."""
  lines = ["| task | metric | teacher | MuST student | student / teacher | >= 0.9 of teacher |",
           "|---|---|---|---|---|---|"]
  for row in rows:
    best = max(row["teacher"], row["student"])
    cells = [f"**{v:.3f}**" if v == best else f"{v:.3f}" for v in (row["teacher"], row["student"])]
    lines.append(f"| {row['task']} | {row['metric']} | {cells[0]} | {cells[1]} | "
                 f"{row['ratio']:.2f} | {'holds' if row['holds'] else 'does not hold'} |")
  return "\n".join(lines)


def _figure(rows: list[dict], path: str) -> None:
  figure, axis = plt.subplots(figsize=(1.6 + 1.4 * len(rows), 3.2))
  x = range(len(rows))
  axis.bar([i - 0.2 for i in x], [r["teacher"] for r in rows], 0.4, label="teacher")
  axis.bar([i + 0.2 for i in x], [r["student"] for r in rows], 0.4, label="MuST student")
  axis.set_xticks(list(x), [f"{r['task']}\n{r['metric']}" for r in rows], fontsize=8)
  axis.set_ylim(0, 1)
  axis.legend(fontsize=8)
  axis.set_title("Held-out ground truth: each teacher vs the student", fontsize=9)
  figure.tight_layout()
  figure.savefig(path, dpi=120)
  plt.close(figure)


def write(report_dir: str, teachers: Metrics, student: Metrics,
          timings: Mapping[str, float | None]) -> str:
  """Writes report.md and metrics.png; returns the Markdown."""
  os.makedirs(report_dir, exist_ok=True)
  rows = comparison_rows(teachers, student)
  _figure(rows, os.path.join(report_dir, FIGURE_FILE))
  held = [r["task"] for r in rows if r["holds"]]
  missed = [r["task"] for r in rows if not r["holds"]]
  all_metrics = "\n".join(
      f"- {task}: teacher {dict(teachers[task])}, student {dict(student.get(task, {}))}"
      for task in sorted(teachers))
  text = f"""# MuST on the procedural world

## Student vs teachers (held-out ground truth)

{comparison_table(rows)}

The paper's claim that the student reaches at least {CLAIM_RATIO} of each
teacher's metric holds for: {', '.join(held) or 'no task'}; it does not hold
for: {', '.join(missed) or 'no task'}.

![metrics]({FIGURE_FILE})

Every metric:

{all_metrics}

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

Stage settings are in `configs/demo/`; the transfer study is not built yet.
"""
  with open(os.path.join(report_dir, REPORT_FILE), "w") as f:
    f.write(text)
  return text
