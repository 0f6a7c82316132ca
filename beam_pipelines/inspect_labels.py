"""A look at pseudo labels before trusting them: a contact sheet and statistics plots.

  python -m beam_pipelines.inspect_labels --runner=DirectRunner \\
      --input_pattern 'out/pseudo_labeled/pseudo_labeled-*.tfrecord' \\
      --output_dir out/inspect [--num_images 8] [--seed 0] \\
      [--classes cube,torus] [--min_score 0.5 --max_score 0.6] [--sort_by uncertainty]

(Not `inspect.py`: that would shadow the standard library's module.) A Beam
pipeline with the labeling pipeline's runner options, reading the shards like
the export does (`shards.ReadLabeledShards`; categories from the labeling
run's `summary.json` beside them, or `--metadata`). Outputs under
`--output_dir`:

  contact_sheet.png   `--num_images` images, one row each: the image captioned
                      with its top classes, its boxes with class and score, the
                      mask over it, the depth colour map
  label_stats.png     bar charts of the label statistics of every image read:
                      class histograms per task, detection scores, boxes per
                      image, ignored-pixel fraction per image
  inspect.json        counts, the sampled ids, the statistics, the config
  dead_letters.jsonl  records that could not be read, with their reason

The sample is the images with the smallest hash of (`--seed`, image id) among
those that pass the filters: the same seed and shards give the same sheet, and
a sheet of N images is the first N of a larger one. Filters: `--classes` keeps
images with a top-1 class, a box or mask pixels of one of the classes;
`--min_score` / `--max_score` keep images with a top-1 probability or box score
in that range (both together: one label that passes both). With `--sort_by
uncertainty` the sheet shows the most uncertain images first, the ones a
person should look at: the mean over an image's pseudo labels of each task's
`Task.uncertainty` (the entropy of a class distribution, 1 - the mean box
score, the fraction of ignored pixels), ties broken by the seeded hash. The
statistics cover every image read, not only the sample.
"""
import argparse
import json
import logging
from typing import Any, Mapping, Sequence

import apache_beam as beam
from apache_beam.options import pipeline_options
import numpy as np

import must  # noqa: F401  (legacy Keras switch before TensorFlow loads)
from beam_pipelines import common
from beam_pipelines import pseudo_label
from beam_pipelines import quality
from beam_pipelines import run_dir
from beam_pipelines import shards
from must import cli
from must import schema as schema_lib
from must import visualize

CONTACT_SHEET_FILE = "contact_sheet.png"
LABEL_STATS_FILE = "label_stats.png"
REPORT_FILE = "inspect.json"
DEAD_LETTERS_FILE = "dead_letters.jsonl"
_NAMESPACE = "inspect_labels"
SAMPLE, UNCERTAINTY = "sample", "uncertainty"  # --sort_by


class InspectOptions(shards.LabeledShardsOptions, pipeline_options.PipelineOptions):
  """Options of the inspection (beside Beam's, `common.DataOptions` and the shard
  reader's: --classes, --min_score, --seed and --top_k)."""

  @classmethod
  def _add_argparse_args(cls, parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--num_images", type=int, default=8,
                        help="Images on the contact sheet.")
    parser.add_argument("--max_score", type=float, default=1.0,
                        help="Highest top-1 probability / box score of the images shown.")
    parser.add_argument("--scale", type=int, default=2,
                        help="Upscaling of the contact sheet's panels.")
    parser.add_argument("--sort_by", default=SAMPLE, choices=(SAMPLE, UNCERTAINTY),
                        help="sample: the seeded sample; uncertainty: the images whose "
                        "pseudo labels are the most uncertain, most uncertain first.")


def run_config(options: pipeline_options.PipelineOptions) -> dict[str, Any]:
  """The resolved, JSON-serializable config of an inspection run."""
  view = options.view_as(InspectOptions)
  config = shards.resolve(view)
  if view.num_images < 1 or view.scale < 1 or view.top_k < 1:
    raise ValueError("--num_images, --scale and --top_k must be >= 1")
  if not 0.0 <= view.min_score <= view.max_score:
    raise ValueError(f"need 0 <= --min_score <= --max_score, got {view.min_score}, "
                     f"{view.max_score}")
  config.update({
      "filters": {"classes": shards.parse_classes(view.classes, config["categories"]),
                  "min_score": view.min_score, "max_score": view.max_score},
      "num_images": view.num_images, "seed": view.seed, "scale": view.scale,
      "top_k": view.top_k, "sort_by": view.sort_by,
      "runner": options.view_as(pipeline_options.StandardOptions).runner})
  return config


def matches(example: shards.LabeledExample, filters: Mapping[str, Any],
            tasks: Mapping[str, Any]) -> bool:
  """Whether one (class, score) item of the example's labels passes every filter.

  `tasks` maps task names to their `must.tasks` objects.
  """
  classes = filters["classes"]
  scored = filters["min_score"] > 0.0 or filters["max_score"] < 1.0
  if classes is None and not scored:
    return True
  for task, label in example.labels.items():
    for cls, score in tasks[task].scored_classes(label):
      if classes is not None and cls not in classes:
        continue
      if scored and (score is None or not filters["min_score"] <= score <= filters["max_score"]):
        continue
      return True
  return False


def example_stats(example: shards.LabeledExample,
                  tasks: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
  """One example's per-task statistics, as the labeling pipeline counts them."""
  return {task: {"source": example.provenance[task].source, **tasks[task].label_stats(label)}
          for task, label in example.labels.items()}


def sample_rank(example: shards.LabeledExample, seed: int) -> int:
  """The example's place in the sample of `seed` (smallest first)."""
  return common.stable_hash(f"{seed}:{example.id}")


def example_uncertainty(example: shards.LabeledExample, tasks: Mapping[str, Any]) -> float:
  """The mean `Task.uncertainty` of the example's pseudo labels (ground truth is certain)."""
  return quality.uncertainty({t: label for t, label in example.labels.items()
                              if example.provenance[t].source == schema_lib.PSEUDO}, tasks)


def rank(example: shards.LabeledExample, config: Mapping[str, Any],
         tasks: Mapping[str, Any]) -> tuple[float, int]:
  """The example's place on the sheet (smallest first): (-uncertainty, hash)
  with --sort_by uncertainty, else (0, hash)."""
  first = (-example_uncertainty(example, tasks)
           if config.get("sort_by") == UNCERTAINTY else 0.0)
  return first, sample_rank(example, config["seed"])


def draw_sheet(sample: Sequence[tuple[Any, shards.LabeledExample]],
               config: Mapping[str, Any]) -> np.ndarray:
  """The contact sheet of the sampled examples, in sample order."""
  tasks = schema_lib.Schema(config["task_params"]).tasks
  rows = []
  by_uncertainty = config.get("sort_by") == UNCERTAINTY
  for order, example in sorted(sample, key=lambda item: item[0]):
    source = example.source_path.rsplit("/", 1)[-1] or example.path
    sources = ",".join(f"{t}:{example.provenance[t].source[0]}" for t in sorted(example.labels))
    shown = f"  uncertainty {-order[0]:.2f}" if by_uncertainty else ""
    rows.append((f"{example.id}  {source}  [{sources}]{shown}", visualize.labels_panels(
        example.image, example.labels, tasks, config["categories"], scale=config["scale"],
        top_k=config["top_k"])))
  filters = {k: v for k, v in config["filters"].items() if v not in (None, 0.0, 1.0)}
  title = (f"{len(rows)} images, " + ("most uncertain first" if by_uncertainty else
                                       f"seed {config['seed']}")
           + (f", filters {filters}" if filters else "") + "  (p = pseudo, g = ground truth)")
  if not rows:
    return visualize.caption(np.full([16, 400, 3], 255, np.uint8),
                             f"no image passes the filters {filters}")
  return visualize.contact_sheet(rows, title)


def draw_stats(task_stats: Mapping[str, Any], config: Mapping[str, Any]) -> np.ndarray:
  """The label statistics plots."""
  return visualize.plot_label_stats(
      task_stats, config["categories"], title=f"label statistics of {config['input_pattern']}")


def _save(image: np.ndarray, path: str) -> None:
  visualize.save_png(image, path)


def make_report(_, records_in: int, images: int, matching: int, reasons: dict,
                sample: Sequence[tuple[Any, shards.LabeledExample]], task_stats: dict,
                config: Mapping[str, Any]) -> str:
  """The run's report as JSON text."""
  dead = sum(reasons.values())
  return json.dumps({
      "counts": {"records_in": records_in, "images": images, "dead_letters": dead,
                 "matching": matching, "sampled": len(sample),
                 "balanced": records_in == images + dead},
      "dead_letter_reasons": reasons,
      "sampled_ids": [e.id for _, e in sorted(sample, key=lambda item: item[0])],
      "tasks": task_stats,
      "config": config,
  }, indent=2, sort_keys=True)


class Inspect(beam.PTransform):
  """Reads the shards, samples and draws; writes every output under the output dir.

  Returns:
    {'sample': one list of (rank, LabeledExample), 'stats': one dict of task
     statistics, 'report': the report as JSON text}.
  """

  def __init__(self, config: Mapping[str, Any], write_dir: str = ""):
    super().__init__()
    self.config = dict(config)
    self.write_dir = write_dir or self.config["output_dir"]  # `run`: its staging dir

  def expand(self, pbegin):
    config, output_dir = self.config, self.write_dir
    read = pbegin | "ReadShards" >> shards.ReadLabeledShards(
        config["input_pattern"], config["task_params"])
    examples = read["examples"]
    tasks = schema_lib.Schema(config["task_params"]).tasks
    stats = (examples
             | "ExampleStats" >> beam.Map(example_stats, tasks)
             | "TaskStats" >> pseudo_label.LabelStats(config["task_params"]))
    matching = examples | "Filter" >> beam.Filter(matches, config["filters"], tasks)
    sample = (matching
              | "Rank" >> beam.Map(lambda e: (rank(e, config, tasks), e))
              | "Sample" >> beam.combiners.Top.Of(config["num_images"], key=lambda r: r[0],
                                                  reverse=True))
    (sample
     | "DrawSheet" >> beam.Map(draw_sheet, config)
     | "WriteSheet" >> beam.Map(_save, common.join(output_dir, CONTACT_SHEET_FILE)))
    (stats
     | "DrawStats" >> beam.Map(draw_stats, config)
     | "WriteStats" >> beam.Map(_save, common.join(output_dir, LABEL_STATS_FILE)))
    read["dead_letters"] | "WriteDeadLetters" >> common.WriteJsonLines(
        common.join(output_dir, DEAD_LETTERS_FILE))
    report = (pbegin
              | "One" >> beam.Create([None])
              | "Report" >> beam.Map(
                  make_report, beam.pvalue.AsSingleton(read["count"]),
                  beam.pvalue.AsSingleton(examples | "CountImages" >>
                                          beam.combiners.Count.Globally()),
                  beam.pvalue.AsSingleton(matching | "CountMatching" >>
                                          beam.combiners.Count.Globally()),
                  beam.pvalue.AsSingleton(read["dead_letters"] | "CountReasons" >>
                                          common.CountReasons()),
                  beam.pvalue.AsSingleton(sample), beam.pvalue.AsSingleton(stats), config))
    report | "WriteReport" >> common.WriteSingleFile(common.join(output_dir, REPORT_FILE))
    return {"sample": sample, "stats": stats, "report": report}


def run(argv: Sequence[str] | None = None) -> dict[str, Any]:
  """Checks the flags and input, runs the inspection into its own output dir
  (`run_dir.RunDir`) and returns its published report."""
  options, config = common.configure(InspectOptions, argv, run_config)
  return run_dir.run_owned(options, config["output_dir"], config["input_pattern"],
                           lambda p, staging: p | "Inspect" >> Inspect(config, staging),
                           _NAMESPACE, REPORT_FILE)


def main(argv: Sequence[str] | None = None) -> None:
  cli.run_main("beam_pipelines.inspect_labels", _main, argv)


def _main(argv: Sequence[str]) -> None:
  logging.getLogger().setLevel(logging.INFO)
  report = run(argv)
  print(json.dumps({"counts": report["counts"], "sampled_ids": report["sampled_ids"]},
                   indent=2))
  for name in (CONTACT_SHEET_FILE, LABEL_STATS_FILE):
    print(common.join(report["config"]["output_dir"], name))


if __name__ == "__main__":
  main()
