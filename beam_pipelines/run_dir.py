"""Each pipeline run owns its output dir: a lock, a private staging dir, one publish.

  with run_dir.RunDir(output_dir, overwrite) as out:
    ... the pipeline writes everything under out.staging ...
    summary = out.publish("summary.json")

On entering, the run
  - takes the lock `<output_dir>/.run.lock` (who holds it: run id, host, pid),
    so that a second run into the dir stops at once naming the lock and its
    holder. Locally the lock is created atomically (`O_CREAT | O_EXCL`); a lock
    left by a killed process of this host is taken over. On other file
    systems (gs://) it is an exists-then-write through `tf.io.gfile`, which two
    runs starting in the same instant can both pass;
  - removes what killed runs left (`.staging-*`, Beam's `beam-temp-*`), and
    their checkpoints (`.checkpoints/`) unless `resume`, which keeps them for
    the run to read;
  - refuses a dir holding another run's output unless `overwrite`, which
    removes that output first.
`publish` adds the list of written files to the summary (`files`, relative
paths), moves every file from the staging dir into place, the summary last,
and removes the staging dir (with Beam's temp folders in it) and the checkpoints. A reader of the
documented globs sees no file of a run before it is complete, and never two
runs' files together. A run that fails leaves its staging dir to look at; the
next run removes it.
"""
import json
import os
import socket
import time
import uuid

import tensorflow as tf

from beam_pipelines import common
from must import cli

LOCK_FILE = ".run.lock"
STAGING_PREFIX = ".staging-"
BEAM_TEMP_PREFIX = "beam-temp-"
CHECKPOINTS = ".checkpoints"  # work a run commits as it goes, read by a resumed run


def _is_local(path: str) -> bool:
  return "://" not in path


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  return True


def _remove(path: str) -> None:
  if tf.io.gfile.isdir(path):
    tf.io.gfile.rmtree(path)
  else:
    tf.io.gfile.remove(path)


class RunDir:
  """The output dir of one run (module docstring).

  Args:
    output_dir: the run's `--output_dir` (any tf.io.gfile path).
    overwrite: remove another run's output there instead of refusing.
    input_pattern: the run's input, which must not lie in the output dir.
    resume: keep the checkpoints a killed run left (`checkpoints`).
  """

  def __init__(self, output_dir: str, overwrite: bool = False, input_pattern: str = "",
               resume: bool = False):
    self.output_dir, self.overwrite, self.resume = output_dir, overwrite, resume
    absolute = os.path.abspath if _is_local(output_dir) else str
    if input_pattern and absolute(input_pattern).startswith(absolute(output_dir) + "/"):
      raise cli.UserError(f"--output_dir {output_dir} holds the input --input_pattern "
                          f"{input_pattern}; write elsewhere")
    self.run_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}"
    self.lock = common.join(output_dir, LOCK_FILE)
    self.staging = common.join(output_dir, STAGING_PREFIX + self.run_id)
    self.checkpoints = common.join(output_dir, CHECKPOINTS)
    self._locked = False

  def __enter__(self) -> "RunDir":
    try:
      tf.io.gfile.makedirs(self.output_dir)
    except (tf.errors.OpError, OSError) as e:
      raise cli.UserError(f"--output_dir {self.output_dir}: cannot create it: {e}") from None
    self._take_lock()
    try:
      self._clear()
      tf.io.gfile.makedirs(self.staging)
    except BaseException:
      self._release()
      raise
    return self

  def __exit__(self, *exc) -> None:
    self._release()

  def _holder(self) -> dict:
    try:
      return json.loads(tf.io.gfile.GFile(self.lock).read())
    except (tf.errors.OpError, ValueError):
      return {}

  def _take_lock(self) -> None:
    holder = {"run": self.run_id, "host": socket.gethostname(), "pid": os.getpid()}
    text = json.dumps(holder).encode()
    for _ in range(2):  # a second try after taking over a dead process's lock
      try:
        if _is_local(self.lock):
          fd = os.open(self.lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
          with os.fdopen(fd, "wb") as f:
            f.write(text)
        elif tf.io.gfile.exists(self.lock):
          raise FileExistsError(self.lock)
        else:
          with tf.io.gfile.GFile(self.lock, "wb") as f:
            f.write(text)
        self._locked = True
        return
      except FileExistsError:
        other = self._holder()
        if (_is_local(self.lock) and other.get("host") == holder["host"]
            and isinstance(other.get("pid"), int) and not _alive(other["pid"])):
          os.remove(self.lock)  # left by a killed run of this host
          continue
        raise cli.UserError(
            f"--output_dir {self.output_dir}: locked by {self.lock}, held by run "
            f"{other.get('run', '?')} (host {other.get('host', '?')}, pid "
            f"{other.get('pid', '?')}); wait for it, or delete the lock if that run is "
            "gone") from None
      except (PermissionError, tf.errors.OpError) as e:
        raise cli.UserError(f"--output_dir {self.output_dir}: not writable: {e}") from None
    raise cli.UserError(f"--output_dir {self.output_dir}: cannot take the lock {self.lock}")

  def _release(self) -> None:
    if self._locked:
      self._locked = False
      if tf.io.gfile.exists(self.lock):
        tf.io.gfile.remove(self.lock)

  def _clear(self) -> None:
    """Removes killed runs' temp folders (and checkpoints unless `resume`), then
    another run's output if `overwrite`."""
    output = []
    for name in sorted(tf.io.gfile.listdir(self.output_dir)):
      name = name.rstrip("/")
      if name == LOCK_FILE or name == CHECKPOINTS and self.resume:
        continue
      if name == CHECKPOINTS:
        _remove(common.join(self.output_dir, name))
        continue
      if name.startswith((STAGING_PREFIX, BEAM_TEMP_PREFIX)):
        _remove(common.join(self.output_dir, name))
      else:
        output.append(name)
    if output and not self.overwrite:
      shown = ", ".join(output[:5]) + (", ..." if len(output) > 5 else "")
      raise cli.UserError(f"--output_dir {self.output_dir} holds another run's output "
                          f"({shown}); pass --overwrite to replace it")
    for name in output:
      _remove(common.join(self.output_dir, name))

  def _staged_files(self) -> list[str]:
    files = []
    for folder, _, names in tf.io.gfile.walk(self.staging):
      relative = folder[len(self.staging):].strip("/")
      if relative.startswith(BEAM_TEMP_PREFIX):
        continue
      files += [f"{relative}/{name}" if relative else name for name in names]
    return sorted(files)

  def publish(self, summary_file: str) -> dict:
    """Lists the staged files in the summary, moves them into place (the summary
    last) and returns the summary."""
    summary_path = common.join(self.staging, summary_file)
    summary = json.loads(tf.io.gfile.GFile(summary_path).read())
    files = [f for f in self._staged_files() if f != summary_file]
    summary["files"] = files
    with tf.io.gfile.GFile(summary_path, "w") as f:
      f.write(json.dumps(summary, indent=2, sort_keys=True))
    for name in [*files, summary_file]:
      target = common.join(self.output_dir, name)
      tf.io.gfile.makedirs(os.path.dirname(target))
      tf.io.gfile.rename(common.join(self.staging, name), target, overwrite=True)
    tf.io.gfile.rmtree(self.staging)
    if tf.io.gfile.exists(self.checkpoints):
      tf.io.gfile.rmtree(self.checkpoints)
    return summary


def run_owned(options, output_dir: str, input_pattern: str, build, namespace: str,
              summary_file: str, resume: bool = False) -> dict:
  """Runs a pipeline into its own `output_dir` and returns its published summary.

  Checks that `input_pattern` matches files, takes the dir (`RunDir`, honouring
  --overwrite and `resume`), builds the pipeline with `build(pipeline, staging_dir)`,
  runs it (`common.run_pipeline`, logging `namespace`'s counters) and publishes.
  """
  common.require_files(input_pattern)
  overwrite = options.view_as(common.DataOptions).overwrite
  with RunDir(output_dir, overwrite, input_pattern, resume) as out:
    common.run_pipeline(options, lambda p: build(p, out.staging), namespace)
    return out.publish(summary_file)
