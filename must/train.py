"""Trains the multi-task student on pseudo-labeled TFRecords.

  python -m must.train --experiment must_student \
      --config_file configs/student/student.yaml --mode train_and_eval \
      --model_dir out/student [--params_override ...] [--tpu ...] [--seed 0]

Flags are Model Garden's plus `--seed` (a reproducible run). Loss weights left
unset in the config are filled in by the paper's rule from the teachers'
metadata (`task.teachers`) before training, and the final config, weights
included, is saved as `params.yaml`. The strategy comes from `runtime` (one
device, `mirrored`, `multi_worker_mirrored` with TF_CONFIG, `tpu`); a restarted
run resumes from its latest checkpoint.
"""
from absl import flags
from absl import logging

import must.student  # noqa: F401  (registers the student task and experiment)
from must import training
from must.student import config as student_config

FLAGS = flags.FLAGS


def main(argv):
  del argv
  params = training.parse_params(FLAGS, [student_config.EXPERIMENT],
                                  resolve=student_config.resolve_loss_weights)
  logging.info("loss weights: %s",
               {head.task: head.loss_weight for head in params.task.model.heads})
  training.train_from_flags(params)


def run_cli():
  training.run_binary(main)


if __name__ == "__main__":
  run_cli()
