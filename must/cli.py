"""The one error rule of every binary and pipeline of the project.

Exit codes:
  0  the job did what was asked;
  1  an internal error (a bug, or the runner failed): the traceback is shown;
  2  a user error (a bad flag, config value, input or output dir), found before
     any work: one line naming the file, key or flag and what was expected;
  3  the job ran but did not do what was asked (e.g. counts that do not
     balance, a stage whose job failed): one line saying what and where.

`--verbose` shows the traceback of user errors and failed jobs too. absl
binaries start through `run_absl`, the Beam pipelines through `run_main`; both
check first that a gs:// path among the arguments has credentials to go with it
(`check_credentials`).
"""
import logging
import sys
import traceback
from typing import Callable, NoReturn, Sequence

from absl import app
from absl import flags

from must import configs

USER_ERROR, JOB_FAILED = 2, 3
VERBOSE_FLAG = "--verbose"


class UserError(ValueError):
  """A bad flag, config value, input or output: says what and where."""


class JobFailed(RuntimeError):
  """A job that ran but did not do what was asked: says what and where."""


USER_ERRORS = (UserError, configs.ConfigError, app.UsageError, flags.Error)


def _stop(prog: str, error: BaseException, code: int, verbose: bool) -> NoReturn:
  if verbose:
    traceback.print_exception(error)
  message = " ".join(str(error).split()) or type(error).__name__
  print(f"{prog}: error: {message}", file=sys.stderr, flush=True)
  sys.exit(code)


def _cloud_argument(argv: Sequence[str]) -> str | None:
  """The first argument naming a gs:// path, with its flag ('--output_dir gs://b/o'), or None."""
  for i, arg in enumerate(argv):
    flag, equals, value = arg.partition("=") if arg.startswith("-") else ("", "", arg)
    if (value if equals else arg).startswith("gs://"):
      flag = flag or (argv[i - 1] if i and argv[i - 1].startswith("-") else "")
      return f"{flag} {value or arg}".strip()
  return None


def check_credentials(argv: Sequence[str]) -> None:
  """Raises `UserError` when an argument names a gs:// path and no Google Cloud
  credentials can be found (Application Default Credentials: a key file, gcloud's,
  or a GCE/Dataflow/TPU VM's metadata server).

  Without this, Beam's GCS client goes on anonymously and retries for minutes
  before failing; here it is one line, before any work.
  """
  where = _cloud_argument(argv)
  if where is None:
    return
  import google.auth  # pylint: disable=import-outside-toplevel  (only for gs:// runs)
  from google.auth import exceptions  # pylint: disable=import-outside-toplevel
  try:
    google.auth.default()
  except exceptions.DefaultCredentialsError:
    raise UserError(
        f"{where}: no Google Cloud credentials found for gs:// paths; set "
        "GOOGLE_APPLICATION_CREDENTIALS to a service account key file or run "
        "`gcloud auth application-default login`") from None


def call(prog: str, main: Callable[[], object], verbose: bool = False):
  """Runs `main()` under the rule: a user error exits 2, a failed job 3, each
  with one line on stderr; anything else propagates (exit 1, traceback)."""
  try:
    return main()
  except USER_ERRORS as e:
    _stop(prog, e, USER_ERROR, verbose)
  except JobFailed as e:
    _stop(prog, e, JOB_FAILED, verbose)


def program_name() -> str:
  """The running module (`python -m NAME`) or script name."""
  spec = getattr(sys.modules["__main__"], "__spec__", None)
  return spec.name if spec else sys.argv[0].rpartition("/")[2]


def run_main(prog: str, main: Callable[[list[str]], object],
             argv: Sequence[str] | None = None):
  """An argparse/Beam entry point: `main(argv without --verbose)` under the rule."""
  argv = list(sys.argv[1:] if argv is None else argv)
  verbose = VERBOSE_FLAG in argv
  argv = [a for a in argv if a != VERBOSE_FLAG]

  def checked_main():
    check_credentials(argv)
    return main(argv)

  return call(prog, checked_main, verbose)


def _log_once() -> None:
  """TensorFlow, imported before absl's handler is on the root logger, gives its
  logger a stderr handler of its own: each of its lines would print twice, in
  both formats. absl's handler (installed by `app.run`) prints them once."""
  if logging.getLogger().handlers:
    tf_logger = logging.getLogger("tensorflow")
    for handler in list(tf_logger.handlers):
      tf_logger.removeHandler(handler)


def run_absl(main: Callable[[list[str]], object], cloud_paths: bool = True) -> None:
  """An absl binary's entry point: flags parsed (unknown or bad ones are user
  errors), then `main(argv)` under the rule. `cloud_paths`: the binary takes
  gs:// paths, so their credentials are checked first."""
  if "verbose" not in flags.FLAGS:
    flags.DEFINE_bool("verbose", False, "Show the traceback of user errors too.")
  prog = program_name()

  def parse(argv: list[str]) -> list[str]:
    def parsed() -> list[str]:
      rest = flags.FLAGS(argv)
      if cloud_paths:
        check_credentials(argv[1:])
      return rest

    return call(prog, parsed, VERBOSE_FLAG in argv)

  def checked_main(argv: list[str]):
    _log_once()
    return call(prog, lambda: main(argv), flags.FLAGS.verbose)

  app.run(checked_main, flags_parser=parse)
