"""The command-line layer: absl flags -> Config, and clean exits.

Kept apart from the library (which never imports absl flags) so that
`train_and_evaluate` can be called directly with a Config.
Usage and data errors exit with status 2 and one line on stderr; `--debug`
shows the traceback instead.
"""

from __future__ import annotations

import contextlib
import os
import sys
import textwrap
import traceback

from absl import flags

from maml_tf import config as config_lib
from maml_tf.config import PROTOCOL_DEFAULTS, Config
from maml_tf.errors import MamlError, UsageError

FLAGS = flags.FLAGS
_D = Config()
# TensorFlow's C++ start-up lines (the CUDA probe, oneDNN and CPU-feature
# notices, "Unable to register cuDNN factory", ...) are written to the
# process's stderr before TF_CPP_MIN_LOG_LEVEL takes effect. They are hidden
# unless the user set TF_CPP_MIN_LOG_LEVEL themselves (then TF's own knob
# decides) or passed --debug.
TF_LOG_SET_BY_USER = "TF_CPP_MIN_LOG_LEVEL" in os.environ
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

def _shown_protocol_defaults(name):
  shown = []
  for protocol, defaults in PROTOCOL_DEFAULTS.items():
    value = defaults[name]
    if isinstance(value, tuple):
      value = ",".join(map(str, value))
    shown.append(f"{protocol}: {value}")
  return f"(default per --protocol, {'; '.join(shown)})"


def flag_help(field) -> str:
  """A field's help line as the command line shows it."""
  meta = field.metadata
  text = meta["help"]
  if meta["protocol_default"]:
    text = f"{text} {_shown_protocol_defaults(field.name)}"
  if meta["choices"] is not None:
    text = f"{text}. One of: {', '.join(meta['choices'])}"
  return text


def define_flags():
  """Defines one flag per Config field, same name, same default, the help
  and the choices the field carries."""
  for field in config_lib.fields():
    name, meta, default = field.name, field.metadata, getattr(_D, field.name)
    if meta["protocol_default"]:
      default = None  # unset means the protocol's default (Config fills it)
    help_ = flag_help(field)
    kind = meta["kind"]
    if kind == "list":
      flags.DEFINE_list(name, None if default is None
                        else list(map(str, default)), help_)
    elif kind == "float":
      flags.DEFINE_float(name, default, help_)
    elif kind == "int":
      flags.DEFINE_integer(name, default, help_)
    elif isinstance(default, bool):
      flags.DEFINE_boolean(name, default, help_)
    elif isinstance(default, int):
      flags.DEFINE_integer(name, default, help_)
    elif isinstance(default, float):
      flags.DEFINE_float(name, default, help_)
    else:
      flags.DEFINE_string(name, default, help_)
  flags.DEFINE_boolean("debug", False, "show tracebacks for usage and data errors")


HELP_ARGS = ("-h", "-?", "--help", "--helpshort")
_ABSL_MODULES = ("absl.", "tensorflow", "keras")


def _shown_default(flag) -> str:
  value = flag.default
  if value is None:
    return ""
  if isinstance(value, bool):
    return "true" if value else "false"
  if isinstance(value, (list, tuple)):
    return ",".join(map(str, value))
  return str(value)


def _flag_lines(name, default, text, width=79):
  head = f"  --{name}" + (f"={default}" if default else "")
  body = textwrap.fill(text, width, initial_indent=" " * 6,
                       subsequent_indent=" " * 6)
  return [head, body]


def help_text(prog: str) -> str:
  """`--help`: the command's own flags, the run's settings grouped as
  GROUPS (data, model, training, ...), each with its default and help."""
  lines = [f"usage: {prog} [--flagfile=FILE] [--flag=value ...]"]
  config_names = {f.name for f in config_lib.fields()}
  own = []
  for module, defined in FLAGS.flags_by_module_dict().items():
    if module.startswith(_ABSL_MODULES):
      continue
    own += [f for f in defined if f.name not in config_names and f.name != "debug"]
  if own:
    lines += ["", "this command:"]
    for f in sorted({f.name: f for f in own}.values(), key=lambda f: f.name):
      lines += _flag_lines(f.name, _shown_default(f), f.help)
  if "model" in FLAGS:
    for group in config_lib.GROUPS:
      lines += ["", f"{group}:"]
      for field in config_lib.fields():
        if field.metadata["group"] == group:
          lines += _flag_lines(field.name, _shown_default(FLAGS[field.name]),
                               flag_help(field))
    lines += ["", "  --flagfile=FILE", "      read flags from FILE, one a line "
              "(<workdir>/flags.txt reruns a run)"]
  if "debug" in FLAGS:
    lines += _flag_lines("debug", "", FLAGS["debug"].help)
  lines += ["", "absl's own flags (logging, ...): --helpfull"]
  return "\n".join(lines)


def exit_on_help(argv=None):
  """Prints `help_text` and exits 0 when argv asks for help (before absl,
  whose own `--help` lists flags by module)."""
  argv = sys.argv if argv is None else argv
  if any(arg in HELP_ARGS for arg in argv[1:]):
    print(help_text(os.path.basename(argv[0]) if argv[0].endswith(".py")
                    else argv[0]))
    sys.exit(0)


def usage_error(message):
  print(f"error: {message}", file=sys.stderr)
  sys.exit(2)


def parse_flags(argv):
  """absl parsing, with flag errors as one line and exit status 2."""
  try:
    return FLAGS(argv)
  except flags.Error as e:
    usage_error(str(e).splitlines()[0])


def config_from_flags() -> Config:
  values = {}
  for field in config_lib.fields():
    value = FLAGS[field.name].value
    if field.name == "topk" and value is not None:
      try:
        value = tuple(int(k) for k in value)
      except ValueError:
        raise UsageError(f"`--topk` must be integers. Received: {','.join(value)!r}") from None
    elif field.metadata["kind"] == "list" and value is not None:
      value = tuple(v.strip() for v in value if v.strip())
    elif field.metadata["kind"] == "list" and field.default is not None:
      value = ()  # an unset list flag whose default is empty
    values[field.name] = value
  return Config(**values).validate()


@contextlib.contextmanager
def native_stderr_hidden(hide: bool):
  """Points file descriptor 2 at /dev/null inside the block (C++ writes go
  there directly, past sys.stderr); restores it on the way out."""
  if not hide:
    yield
    return
  sys.stderr.flush()
  saved = os.dup(2)
  try:
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 2)
    os.close(null)
    yield
  finally:
    sys.stderr.flush()
    os.dup2(saved, 2)
    os.close(saved)


def import_tensorflow_quietly():
  """Imports TF and probes its devices with the start-up lines hidden."""
  with native_stderr_hidden(not TF_LOG_SET_BY_USER and not FLAGS.debug):
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    tf.config.list_physical_devices()


def config_from_workdir(argv, what="the run"):
  """A finished or running run's Config, for a script that works on its
  workdir: <workdir>/flags.txt first, then this command line on top."""
  if not FLAGS["workdir"].present:
    raise UsageError(f"`--workdir` is required: the folder of {what}")
  flagfile = os.path.join(FLAGS.workdir, "flags.txt")
  if not os.path.isfile(flagfile):
    raise UsageError(f"`--workdir` must hold a run's flags.txt. Received: "
                     f"{FLAGS.workdir!r} ({flagfile} not found)")
  FLAGS.unparse_flags()
  try:
    FLAGS([argv[0], f"--flagfile={flagfile}"] + list(argv[1:]))
  except flags.Error as e:
    FLAGS.unparse_flags()
    FLAGS(list(argv))  # parsed before: keeps FLAGS usable for the error path
    raise UsageError(f"{flagfile}: {str(e).splitlines()[0]}") from None
  FLAGS.restore_from = None  # the run's starting point is irrelevant here
  FLAGS.init_from = None
  FLAGS.overwrite = False
  return config_from_flags()


def train_main():
  import_tensorflow_quietly()
  from maml_tf.train.run import train_and_evaluate  # heavy import after flag checks
  # The live progress bar on a terminal; one line per round when the output
  # goes to a file or a pipe (the bar's redraws would flood a log).
  verbose = 1 if sys.stdout.isatty() else 2
  train_and_evaluate(config_from_flags(), verbose=verbose)
  return 0


def run(fn):
  """Calls fn(); MamlError -> one line on stderr and exit status 2."""
  try:
    return fn()
  except MamlError as e:
    if FLAGS.debug:
      traceback.print_exc()
    print(f"error: {e}", file=sys.stderr)
    return 2
  except KeyboardInterrupt:
    print("interrupted", file=sys.stderr)
    return 130
