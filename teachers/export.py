"""Exports teachers as SavedModels with one uniform serving signature.

  python -m teachers.export --model_dir out/teachers/detection \
      --export_dir out/teachers/detection/export [--world_dir out/world] [--version 3]

  python -m teachers.export --model_garden_export_dir exported/retinanet \
      --export_dir out/teachers/retinanet     # adapt a Model Garden export

Signature `serving_default` (the teacher contract, `must.serving`): `encoded`,
string [B] of encoded images of any size, in; the task's outputs in each
image's own frame out:

  classification  probs [B, C]
  detection       boxes [B, N, 4] (ymin, xmin, ymax, xmax normalized to the
                  image), scores [B, N], classes [B, N] int32, num_detections [B]
  segmentation    classes [B, h, w] int32, confidence [B, h, w] (spanning the
                  image at the teacher's input size h x w)
  depth           depth [B, h, w] (relative inverse depth, spanning the image)

Images are fitted to the input size in the graph by `--size_policy` (default:
the task's first, `pad` but for classification, `resize`). Next to the
SavedModel, `teacher.json` says what it is: task, class names, input size and
size policy, the training batch size and learning rate (the student's loss
weights use them), version and experiment.

A Keras model or any SavedModel becomes a teacher through an adapter config
(`teachers.adapter`: input dtype, range and size policy, output mapping):

  python -m teachers.export --adapter_config my_model.yaml --export_dir out/teachers/mine

A SavedModel exported by Model Garden's own tool (`export_saved_model`, input
type `image_tensor`) for a stock classification, RetinaNet or segmentation
model becomes a teacher through `adapt_model_garden_export`: it wraps the
export's `serving_default` signature and maps its outputs, no retraining.
"""
import dataclasses
import json
import os

from absl import app
from absl import flags
import tensorflow as tf

from must import cli
from must import configs
from must import serving
import teachers
from teachers import adapter
from official.core import task_factory

SIGNATURE = serving.SIGNATURE


def _serve_fn(teacher, params, model, input_size):
  if hasattr(teacher, "model_garden_module"):
    module = teacher.model_garden_module(params, model, input_size)
    return lambda images: teacher.outputs_from_model_garden(module.serve(images), images, params)
  return lambda images: teacher.serve(model, images, params)


def _write_metadata(export_dir: str, teacher, params, version: str, class_names,
                    source: str, size_policy: str) -> dict:
  metadata = serving.TeacherMetadata(
      task=teacher.TASK, experiment=teacher.EXPERIMENT, version=version,
      input_size=list(params.task.model.input_size[:2]), size_policy=size_policy,
      num_classes=getattr(params.task.model, "num_classes", None), class_names=class_names,
      train_batch_size=configs.effective_batch_size(params),
      train_learning_rate=configs.initial_learning_rate(params.trainer), source=source)
  metadata.write(export_dir)
  return dataclasses.asdict(metadata)


def _class_names(world_dir: str | None, num_classes: int | None):
  if world_dir:
    from must.world import writer  # pylint: disable=g-import-not-at-top
    return writer.load_metadata(world_dir)["categories"]
  return [f"class_{i}" for i in range(num_classes)] if num_classes else None


def latest_checkpoint(model_dir: str, checkpoint_path: str | None = None) -> str:
  """The checkpoint to export, naming what is missing when there is none."""
  if checkpoint_path:
    if not tf.io.gfile.glob(checkpoint_path + ".index"):
      raise FileNotFoundError(f"checkpoint {checkpoint_path} does not exist "
                              f"(no {checkpoint_path}.index)")
    return checkpoint_path
  checkpoint = tf.train.latest_checkpoint(model_dir)
  if checkpoint is None:
    raise FileNotFoundError(f"no checkpoint in {model_dir}: train the teacher first "
                            "(python -m teachers.train ... --model_dir DIR)")
  return checkpoint


def load_params(model_dir: str):
  """The teacher experiment config saved as params.yaml in a model or export dir."""
  return configs.load_saved(model_dir, teachers.experiments())


def _served_task(teacher, params, size_policy: str | None):
  """(the `must.tasks` task, the size policy: `size_policy` or the task's default)."""
  task = serving.build_task(teacher.TASK, getattr(params.task.model, "num_classes", None))
  return task, size_policy or task.size_policies[0]


def export_teacher(model_dir: str, export_dir: str, *, checkpoint_path: str | None = None,
                   version: str | None = None, world_dir: str | None = None,
                   size_policy: str | None = None) -> dict:
  """Exports the trained teacher in `model_dir`; returns its metadata."""
  params = load_params(model_dir)
  teacher = teachers.for_params(params)
  checkpoint = latest_checkpoint(model_dir, checkpoint_path)
  task = task_factory.get_task(params.task, logging_dir=None)
  model = task.build_model()
  serving.restore(checkpoint, model=model)
  input_size = list(params.task.model.input_size[:2])
  served, size_policy = _served_task(teacher, params, size_policy)
  serving.TeacherModule(served, _serve_fn(teacher, params, model, input_size), input_size, size_policy,
                model).save(export_dir)
  step = checkpoint.rsplit("-", 1)[-1]
  return _write_metadata(export_dir, teacher, params, version or f"step{step}",
                         _class_names(world_dir, getattr(params.task.model, "num_classes", None)),
                         source=os.path.abspath(checkpoint), size_policy=size_policy)


def adapt_model_garden_export(model_garden_export_dir: str, export_dir: str, *,
                              version: str = "model_garden", world_dir: str | None = None,
                              size_policy: str | None = None) -> dict:
  """Wraps a Model Garden SavedModel (image_tensor input) as a teacher."""
  params = load_params(model_garden_export_dir)
  teacher = teachers.for_params(params)
  if not hasattr(teacher, "outputs_from_model_garden"):
    raise ValueError(f"Model Garden has no {teacher.TASK} export to adapt")
  saved_model_dir = model_garden_export_dir
  if tf.io.gfile.exists(os.path.join(model_garden_export_dir, "saved_model", "saved_model.pb")):
    saved_model_dir = os.path.join(model_garden_export_dir, "saved_model")
  loaded = tf.saved_model.load(saved_model_dir)
  signature = loaded.signatures[SIGNATURE]
  input_name = next(iter(signature.structured_input_signature[1]))
  input_size = list(params.task.model.input_size[:2])

  def serve(images):
    outputs = signature(**{input_name: images})
    return teacher.outputs_from_model_garden(outputs, images, params)

  served, size_policy = _served_task(teacher, params, size_policy)
  serving.TeacherModule(served, serve, input_size, size_policy, loaded).save(export_dir)
  return _write_metadata(export_dir, teacher, params, version,
                         _class_names(world_dir, getattr(params.task.model, "num_classes", None)),
                         source=os.path.abspath(model_garden_export_dir),
                         size_policy=size_policy)


_MODEL_DIR = flags.DEFINE_string("model_dir", None, "A trained teacher's model dir.")
_MG_EXPORT_DIR = flags.DEFINE_string(
    "model_garden_export_dir", None, "A Model Garden export to adapt instead.")
_ADAPTER_CONFIG = flags.DEFINE_string(
    "adapter_config", None, "Or wrap a Keras model or SavedModel by this adapter config "
    "(YAML, `teachers.adapter`).")
_EXPORT_DIR = flags.DEFINE_string("export_dir", None, "Where to write the teacher.",
                                  required=True)
_CHECKPOINT = flags.DEFINE_string("checkpoint_path", None, "Default: latest in --model_dir.")
_VERSION = flags.DEFINE_string("version", None, "Teacher version; default step<N>.")
_WORLD_DIR = flags.DEFINE_string("world_dir", None, "Takes class names from its world.json.")
_SIZE_POLICY = flags.DEFINE_enum("size_policy", None, serving.SIZE_POLICIES,
                                 "How images are fitted to the input size; default: the task's.")


def main(argv):
  del argv
  sources = [_MODEL_DIR.value, _MG_EXPORT_DIR.value, _ADAPTER_CONFIG.value]
  if sum(map(bool, sources)) != 1:
    raise app.UsageError("give exactly one of --model_dir, --model_garden_export_dir "
                         "and --adapter_config")
  if _ADAPTER_CONFIG.value:
    metadata = adapter.export_adapted(_ADAPTER_CONFIG.value, _EXPORT_DIR.value)
  elif _MODEL_DIR.value:
    metadata = export_teacher(_MODEL_DIR.value, _EXPORT_DIR.value,
                              checkpoint_path=_CHECKPOINT.value, version=_VERSION.value,
                              world_dir=_WORLD_DIR.value, size_policy=_SIZE_POLICY.value)
  else:
    metadata = adapt_model_garden_export(_MG_EXPORT_DIR.value, _EXPORT_DIR.value,
                                         version=_VERSION.value or "model_garden",
                                         world_dir=_WORLD_DIR.value,
                                         size_policy=_SIZE_POLICY.value)
  print(json.dumps(metadata, indent=2))


def run_cli():
  cli.run_absl(main)


if __name__ == "__main__":
  run_cli()
