"""Trains a teacher: Model Garden's training driver over the teacher experiments.

  python -m teachers.train --experiment must_detection_teacher \
      --config_file configs/teachers/detection.yaml --mode train_and_eval \
      --model_dir out/teachers/detection [--params_override ...] [--tpu ...] [--seed 0]

Flags are Model Garden's (`official.common.flags`) plus `--seed`, which makes
the run reproducible (`must.training.make_deterministic`). The final config is
saved as `params.yaml` in the model dir; a restarted run resumes from the
latest checkpoint there (Model Garden's orbit controller restores it). The
work is done by `must.training`, shared with the student's binary.
"""
from absl import flags

from must import training
import teachers

FLAGS = flags.FLAGS


def main(argv):
  del argv
  params = training.parse_params(FLAGS, teachers.experiments())
  training.train_from_flags(params)


def run_cli():
  training.run_binary(main)


if __name__ == "__main__":
  run_cli()
