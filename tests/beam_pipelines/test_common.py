"""Progress logging of the Beam pipelines."""
import logging

from beam_pipelines import common


def test_progress_logs_counts_and_rate_every_interval(caplog):
  progress = common.Progress("job", "images", "failures", interval=0.0)
  with caplog.at_level(logging.INFO):
    progress.add("images")
    progress.add("failures")
    progress.add("images", 2)
  lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("job:")]
  assert len(lines) == 3
  assert lines[-1].startswith("job: 3 images (") and lines[-1].endswith(", 1 failures")


def test_progress_is_quiet_between_intervals_and_before_any_element(caplog):
  progress = common.Progress("job", "images", interval=3600.0)
  with caplog.at_level(logging.INFO):
    progress.log()
    for _ in range(5):
      progress.add("images")
  assert not [r for r in caplog.records if r.getMessage().startswith("job:")]
