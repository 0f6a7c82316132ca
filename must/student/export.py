"""Exports a trained student: the multi-task SavedModel and the backbone alone.

  python -m must.student.export --model_dir out/student \
      --export_dir out/student/export [--world_dir out/world] [--version 2]

Writes under `--export_dir`:

  saved_model.pb, variables/   one SavedModel with a signature per task, named
                               after the task, each the teacher contract's
                               signature (`encoded` images in, that task's
                               outputs in each image's frame out; see
                               `must.serving`), fitting images by `resize`
                               as the student's input pipeline does
  teacher.json                 what it serves: `tasks` (per task: class count
                               and names), input size, the training batch size
                               and learning rate, version
  backbone/ckpt-1.*            the backbone alone, a checkpoint any Model Garden
                               task loads with `init_checkpoint_modules: backbone`

So the student serves as the teachers of the next self-training round: list it
once per task in the pseudo-labeling teachers config (`must.serving.load(path,
task)` picks the task's signature).
"""
import dataclasses
import json
import os

from absl import flags
import tensorflow as tf

import must.student  # noqa: F401  (registers the student task and experiment)
from must import cli
from must import configs
from must import serving
from must.student import config as student_config
from must.student import task as task_lib

BACKBONE_DIR = "backbone"
SIZE_POLICY = "resize"  # the student's input pipeline resizes images to its input size


def load_params(model_dir: str):
  """The student's experiment config saved as params.yaml in its model dir."""
  return configs.load_saved(model_dir, [student_config.EXPERIMENT])


def latest_checkpoint(model_dir: str) -> str:
  checkpoint = tf.train.latest_checkpoint(model_dir)
  if checkpoint is None:
    raise FileNotFoundError(f"no checkpoint in {model_dir}: train the student first "
                            "(python -m must.train ... --model_dir DIR)")
  return checkpoint


class StudentModule(tf.Module):
  """The student behind one teacher signature per task."""

  def __init__(self, task: task_lib.StudentTask, model):
    super().__init__()
    self.model = model  # Saved with the module: the model's variables.
    self.serve_fns = {
        name: tf.function(serving.image_frame_serving(
            task.schema.tasks[name],
            lambda images, name=name: task.serve(model, images, [name])[name],
            task.input_size, SIZE_POLICY), input_signature=[serving.signature_spec()])
        for name in task.heads}


def export_student(model_dir: str, export_dir: str, *, checkpoint_path: str | None = None,
                   version: str | None = None, world_dir: str | None = None) -> dict:
  """Exports the trained student in `model_dir`; returns its metadata."""
  params = load_params(model_dir)
  checkpoint = checkpoint_path or latest_checkpoint(model_dir)
  task = task_lib.StudentTask(params.task)
  model = task.build_model()
  serving.restore(checkpoint, model=model)
  module = StudentModule(task, model)
  for name, serve in module.serve_fns.items():
    serving.probe(serve, task.schema.tasks[name], f"the student's {name} signature")
  tf.saved_model.save(module, export_dir, signatures=module.serve_fns)
  tf.train.Checkpoint(backbone=model.backbone).save(
      os.path.join(export_dir, BACKBONE_DIR, "ckpt"))
  class_names = None
  if world_dir:
    from must.world import writer  # pylint: disable=g-import-not-at-top
    class_names = writer.load_metadata(world_dir)["categories"]
  metadata = serving.TeacherMetadata(
      experiment=student_config.EXPERIMENT,
      version=version or f"step{checkpoint.rsplit('-', 1)[-1]}", input_size=task.input_size,
      size_policy=SIZE_POLICY,
      tasks={head.task: {"num_classes": head.num_classes or None,
                         "class_names": class_names if head.num_classes else None,
                         "loss_weight": task.loss_weights[head.task]}
             for head in params.task.model.heads},
      train_batch_size=configs.effective_batch_size(params),
      train_learning_rate=configs.initial_learning_rate(params.trainer),
      backbone_checkpoint=os.path.join(BACKBONE_DIR, "ckpt-1"),
      source=os.path.abspath(checkpoint))
  metadata.write(export_dir)
  return dataclasses.asdict(metadata)


def main(argv):
  del argv
  values = flags.FLAGS
  print(json.dumps(export_student(values.model_dir, values.export_dir,
                                  checkpoint_path=values.checkpoint_path,
                                  version=values.version, world_dir=values.world_dir),
                   indent=2))


def define_flags() -> None:
  """The binary's flags (defined only when run, so the module imports anywhere)."""
  flags.DEFINE_string("model_dir", None, "The trained student's model dir.")
  flags.DEFINE_string("export_dir", None, "Where to write the export.")
  flags.DEFINE_string("checkpoint_path", None, "Default: latest in --model_dir.")
  flags.DEFINE_string("version", None, "Version; default step<N>.")
  flags.DEFINE_string("world_dir", None, "Takes class names from its world.json.")
  flags.mark_flags_as_required(["model_dir", "export_dir"])


def run_cli():
  define_flags()
  cli.run_absl(main)


if __name__ == "__main__":
  run_cli()
