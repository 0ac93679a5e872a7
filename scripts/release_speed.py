"""The authors' release code's speed on this machine, for ratios beside ours.

  python scripts/release_speed.py --release_dir=DIR [--steps=N] [--quick]

DIR is a checkout of github.com/liufancs/MAML (TF 1.3, Python 2) that you
made; this script never downloads it and never writes into it. It imports
the release's MAML.py, Dataset.py, evaluator.py and sampler.py from DIR and
measures, on the release's own Office data (DIR/Data/Office):

- training: positive pairs per second over N whole steps of the release's
  loop (its WarpSampler's `next_batch()` and its `session.run` of
  `(model.optimize, model.loss, model.feature_loss)`), after 5 warm-up steps
  (`--quick`: 3 steps after 2);
- evaluation: one full evaluation of every Office test user with the
  release's RecallEvaluator in chunks of 100 users, as its `optimize` loop
  does, timed whole after one warm-up chunk (the first call builds the
  release's `item_scores` graph; each later call still adds a `top_k` op, as
  in the release). `--quick` evaluates the first 200 test users only.

Settings: the README's Office command (`--num_neg 4 --eva_batches 400
--batch_size 5000 --hidden_layer_dim 256 --margin 1.6 --dropout 0.2
--feature_l2_reg 5.0`), parsed by the release's own `parse_args` (its
argparse defaults have batch 256; 5000 is the paper's Office setting and the
one scripts/benchmark.py uses), with the model arguments MAML.py's `__main__`
passes (K 64, Adam 0.001, clip 1.0, rank weight, covariance loss 5.0).

How it runs under TF 2 (nothing in DIR is changed):
- the release's modules are read from DIR, transformed in memory (below) and
  executed as modules named MAML, Dataset, evaluator and sampler, with
  `sys.modules['tensorflow']` swapped to `tf.compat.v1` for the duration of
  those imports only (restored afterwards), after
  `tf.compat.v1.disable_v2_behavior()`; so `tf.*` in the release is the TF 1
  API (graph mode, sessions, placeholders);
- `tensorflow.contrib.layers.python.layers.regularizers` (gone in TF 2) is a
  stand-in module written here whose `l2_regularizer(scale)` returns
  `weights -> scale * tf.nn.l2_loss(weights)` (what contrib's did; the
  release never adds those losses to its objective, so they cost nothing);
- `tf.layers.dense` / `tf.layers.dropout` need the legacy Keras 2 package
  under TF 2.16+ (Keras 3 has no `tf.compat.v1.layers`): this script sets
  `TF_USE_LEGACY_KERAS=1` before importing TensorFlow and needs `tf_keras`
  installed (it is not a dependency of maml_tf);
- `toolz` and `tqdm` (imported by MAML.py) are used when installed, else
  stand-ins written here take their place for the import (`partition_all`;
  `tqdm` as the identity on its iterable);
- the session config is the release's (`allow_soft_placement`, GPU
  `allow_growth`) plus intra-/inter-op thread counts from the environment
  variables TF_NUM_INTRAOP_THREADS / TF_NUM_INTEROP_THREADS (0 or unset: TF's
  default). The release's sampler is 5 worker processes (its default) either
  way.

Source transformations (in memory, each one listed in the output):
- leading tabs expanded to 8-column stops, the way Python 2 read them (Python
  3 refuses MAML.py's line 366, a tab followed by 4 spaces inside a block
  indented with 12 spaces: TabError). Applied to every file; listed only
  where a line changed.
- only if a file still does not compile: Python 2 print statements become
  calls (`print x` -> `print(x)`, `print x,` -> `print(x, end=" ")`, `print`
  -> `print()`). The release's files need none of this; `print >>f` is not
  handled (a one-line error names the file and line).
No other change: Python 3's true division makes `hidden_layer_dim/2` 128.0,
which the legacy Keras Dense turns back into 128 units itself.

Features: the release reads a Doc2Vec model (DIR/Data/Office/doc2vecFile)
and image_feature.npy, which its repository does not include (Google Drive).
When both (and asin_sample.json) are there, the release's loader is tried.
Otherwise, or when the loader fails, random normal features of the release's
sizes (512-d text, 4096-d image; same cost) are put into the Dataset object
in its `textualfeatures` / `imagefeatures`, one row per item of the model:
Office's test.csv has item 2405, which train.csv lacks, so the model has
2406 items while the release's loader builds 2405 rows (max train itemID+1)
and its graph would refuse the difference; the random features therefore
have 2406 rows. The output says which features were used and why.

The last line printed is `RESULT {json}` with train_pairs_per_s, train_steps,
eval_seconds, eval_users, transformations, features, threads (and a few
more); the line before it is a human summary.
"""

import argparse
import contextlib
import json
import os
import re
import sys
import time
import types
import warnings

RELEASE_FILES = ("MAML.py", "Dataset.py", "evaluator.py", "sampler.py",
                 os.path.join("Data", "Office", "train.csv"),
                 os.path.join("Data", "Office", "test.csv"))
RELEASE_MODULES = ("sampler", "evaluator", "Dataset", "MAML")
README_COMMAND = ["--dataset", "Office", "--num_neg", "4", "--eva_batches", "400",
                  "--batch_size", "5000", "--hidden_layer_dim", "256", "--margin", "1.6",
                  "--dropout", "0.2", "--feature_l2_reg", "5.0"]
TEXT_DIM, IMAGE_DIM = 512, 4096
EVAL_CHUNK = 100
SAMPLER_WORKERS = 5  # WarpSampler's default, which MAML.py keeps
THREAD_VARIABLES = ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS")
_ABSENT = object()


class UsageError(Exception):
  """Bad input; the message is the one line to print."""


# --- pure parts: arguments, checks, source transformations --------------------------


def parse_args(argv):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--release_dir", default=None,
                      help="a checkout of github.com/liufancs/MAML (never downloaded here)")
  parser.add_argument("--steps", default=None,
                      help="timed training steps after the warm-up (default 40; --quick 3)")
  parser.add_argument("--quick", action="store_true",
                      help="a smoke run: 3 steps after 2 warm-up, 200 test users")
  args = parser.parse_args(argv)
  args.release_dir = check_release_dir(args.release_dir)
  args.steps = check_steps(args.steps, args.quick)
  args.warmup = 2 if args.quick else 5
  args.max_eval_users = 200 if args.quick else None
  return args


def check_steps(value, quick):
  if value is None:
    return 3 if quick else 40
  try:
    steps = int(value)
  except ValueError:
    steps = 0
  if steps < 1 or str(steps) != str(value).strip():
    raise UsageError(f"`--steps` must be an integer >= 1. Received: {value}")
  return steps


def check_release_dir(path):
  """The checkout's absolute path, or UsageError naming what is missing."""
  rule = ("`--release_dir` must be a checkout of github.com/liufancs/MAML (MAML.py, "
          "Dataset.py, evaluator.py, sampler.py, Data/Office/train.csv and test.csv)")
  if not path:
    raise UsageError(f"{rule}. Received: (none)")
  if not os.path.isdir(path):
    raise UsageError(f"{rule}. Received: {path} (not a directory)")
  missing = [f for f in RELEASE_FILES if not os.path.isfile(os.path.join(path, f))]
  if missing:
    raise UsageError(f"{rule}. Received: {path} (missing: {', '.join(missing)})")
  with open(os.path.join(path, "MAML.py"), encoding="utf-8", errors="replace") as f:
    if "class MAML" not in f.read():
      raise UsageError(f"{rule}. Received: {path} (its MAML.py defines no class MAML)")
  return os.path.abspath(path)


def threads_from_env(environ):
  """(intra, inter) thread counts from TF_NUM_INTRAOP/INTEROP_THREADS; 0 = TF's default."""
  counts = []
  for name in THREAD_VARIABLES:
    value = environ.get(name, "").strip()
    if not value:
      counts.append(0)
      continue
    if not value.isdigit():
      raise UsageError(f"`{name}` must be an integer >= 0. Received: {value}")
    counts.append(int(value))
  return tuple(counts)


def expand_leading_tabs(source):
  """Leading tabs to 8-column stops, as Python 2's tokenizer read them.
  Returns (source, numbers of the lines changed)."""
  lines = source.splitlines(keepends=True)
  changed = []
  for n, line in enumerate(lines):
    indent = len(line) - len(line.lstrip(" \t"))
    if "\t" in line[:indent]:
      lines[n] = line[:indent].expandtabs(8) + line[indent:]
      changed.append(n + 1)
  return "".join(lines), changed


_PRINT = re.compile(r"^(?P<indent>[ \t]*)print(?:[ \t]+(?P<args>[^(\s>].*?)|[ \t]*)(?P<end>\r?\n)?$")


def convert_print_statements(source):
  """Python 2 print statements to calls. Returns (source, lines changed)."""
  lines = source.splitlines(keepends=True)
  changed = []
  for n, line in enumerate(lines):
    match = _PRINT.match(line)
    if not match:
      continue
    args = (match.group("args") or "").rstrip()
    if args.endswith(","):
      call = f"print({args[:-1].rstrip()}, end=\" \")"
    else:
      call = f"print({args})"
    lines[n] = match.group("indent") + call + (match.group("end") or "")
    changed.append(n + 1)
  return "".join(lines), changed


def _compiles(source, filename):
  try:
    compile(source, filename, "exec")
  except SyntaxError as error:
    return error
  return None


def _lines(numbers):
  return ("line " if len(numbers) == 1 else "lines ") + ", ".join(map(str, numbers))


def python3_source(filename, source):
  """(source Python 3 compiles, transformations as sentences); UsageError if none does."""
  notes = []
  source, tabs = expand_leading_tabs(source)
  if tabs:
    notes.append(f"{filename}: leading tabs expanded to 8-column stops ({_lines(tabs)})")
  if _compiles(source, filename) is not None:
    source, prints = convert_print_statements(source)
    if prints:
      notes.append(f"{filename}: print statements made calls ({_lines(prints)})")
  error = _compiles(source, filename)
  if error is not None:
    raise UsageError(f"`--release_dir` file {filename} must compile under Python 3 after the "
                     f"transformations {notes or 'none'}. Received: line {error.lineno}: "
                     f"{error.msg}")
  return source, notes


# --- running the release ----------------------------------------------------------


@contextlib.contextmanager
def swapped_modules(replacements):
  """sys.modules entries replaced for the block, the old ones put back after."""
  saved = {name: sys.modules.get(name, _ABSENT) for name in replacements}
  sys.modules.update(replacements)
  try:
    yield
  finally:
    for name, old in saved.items():
      if old is _ABSENT:
        sys.modules.pop(name, None)
      else:
        sys.modules[name] = old


def _module(name, **attributes):
  module = types.ModuleType(name)
  module.__dict__.update(attributes)
  return module


def partition_all(n, items):
  """toolz.partition_all: tuples of n items, the last one shorter."""
  items = list(items)
  for start in range(0, len(items), n):
    yield tuple(items[start:start + n])


def _stand_ins(tf1):
  """Modules the release imports that TF 2 (or this environment) lacks."""
  def l2_regularizer(scale, scope=None):
    def l2(weights):
      with tf1.name_scope(scope, "l2_regularizer", [weights]) as name:
        factor = tf1.convert_to_tensor(scale, dtype=weights.dtype.base_dtype)
        return tf1.multiply(factor, tf1.nn.l2_loss(weights), name=name)
    return l2

  regularizers = _module("tensorflow.contrib.layers.python.layers.regularizers",
                         l2_regularizer=l2_regularizer)
  layers = _module("tensorflow.contrib.layers.python.layers", regularizers=regularizers)
  python = _module("tensorflow.contrib.layers.python", layers=layers)
  contrib_layers = _module("tensorflow.contrib.layers", python=python)
  contrib = _module("tensorflow.contrib", layers=contrib_layers)
  modules = {"tensorflow": tf1, "tensorflow.contrib": contrib,
             "tensorflow.contrib.layers": contrib_layers,
             "tensorflow.contrib.layers.python": python,
             "tensorflow.contrib.layers.python.layers": layers,
             "tensorflow.contrib.layers.python.layers.regularizers": regularizers}
  shims = ["tensorflow.contrib.layers.python.layers.regularizers (l2_regularizer)"]
  try:
    import toolz  # noqa: F401
  except ImportError:
    modules["toolz"] = _module("toolz", partition_all=partition_all)
    shims.append("toolz (partition_all)")
  try:
    import tqdm  # noqa: F401
  except ImportError:
    modules["tqdm"] = _module("tqdm", tqdm=lambda iterable=None, *args, **kwargs: iterable)
    shims.append("tqdm (identity)")
  return modules, shims


def import_release(release_dir, tf1):
  """The release's modules by name, plus (transformations, shims)."""
  import multiprocessing  # noqa: F401  (imported before the swap, on purpose)
  import numpy  # noqa: F401
  import pandas  # noqa: F401
  import scipy.sparse  # noqa: F401
  replacements, shims = _stand_ins(tf1)
  transformations = []
  modules = {}
  with swapped_modules(replacements):
    for name in RELEASE_MODULES:
      path = os.path.join(release_dir, name + ".py")
      with open(path, encoding="utf-8") as f:
        source, notes = python3_source(name + ".py", f.read())
      transformations += notes
      module = _module(name, __file__=path)
      sys.modules[name] = module  # MAML.py imports the other three by these names
      exec(compile(source, path, "exec"), module.__dict__)
      modules[name] = module
  return modules, transformations, shims


def _release_settings(maml):
  saved = sys.argv
  sys.argv = ["MAML.py"] + README_COMMAND
  try:
    return maml.parse_args()
  finally:
    sys.argv = saved


def load_office(release, data_dir, n_items_of):
  """The release's Dataset with its rating matrices and some features."""
  import numpy as np
  Dataset = release["Dataset"].Dataset
  dataset = Dataset.__new__(Dataset)  # its __init__ would insist on the feature files
  dataset.trainMatrix = dataset.load_rating_file_as_matrix(os.path.join(data_dir, "train.csv"))
  dataset.testRatings = dataset.load_rating_file_as_matrix(os.path.join(data_dir, "test.csv"))
  dataset.num_users, dataset.num_items = dataset.trainMatrix.shape
  n_items = n_items_of(dataset.trainMatrix, dataset.testRatings)
  wanted = ("asin_sample.json", "doc2vecFile", "image_feature.npy")
  missing = [f for f in wanted if not os.path.exists(os.path.join(data_dir, f))]
  reason = f"{', '.join(missing)} not in {data_dir}"
  if not missing:
    try:
      real_load = np.load
      np.load = lambda *a, **k: real_load(*a, **dict(k, allow_pickle=True))  # a pickled dict
      try:
        text, image = dataset.load_textual_image_features(data_dir)
      finally:
        np.load = real_load
      if len(text) == n_items and len(image) == n_items:
        dataset.textualfeatures, dataset.imagefeatures = text, image
        return dataset, (f"the release's own ({text.shape[1]}-d text, {image.shape[1]}-d image, "
                         "read by its loader with np.load(allow_pickle=True))")
      reason = (f"the release's loader gave {len(text)} rows for {n_items} items "
                "(its graph refuses the difference)")
    except Exception as error:  # measured either way; the reason is printed
      reason = f"the release's loader failed: {type(error).__name__}: {error}"
  rng = np.random.default_rng(0)
  dataset.textualfeatures = rng.normal(size=(n_items, TEXT_DIM)).astype(np.float32)
  dataset.imagefeatures = rng.normal(size=(n_items, IMAGE_DIM)).astype(np.float32)
  return dataset, (f"random normal, {TEXT_DIM}-d text + {IMAGE_DIM}-d image, {n_items} rows "
                   f"(the model's item count; same cost as the real ones): {reason}")


def _session(tf1, intra, inter):
  config = tf1.ConfigProto(allow_soft_placement=True, intra_op_parallelism_threads=intra,
                           inter_op_parallelism_threads=inter)
  config.gpu_options.allow_growth = True
  return tf1.Session(config=config)


def measure(args, intra, inter):
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
  os.environ["TF_USE_LEGACY_KERAS"] = "1"  # tf.compat.v1.layers needs Keras 2
  try:
    import tf_keras  # noqa: F401
  except ImportError:
    raise UsageError("the release's tf.layers need the `tf_keras` package under TF 2.16+ "
                     "(pip install tf_keras). Received: not importable") from None
  import numpy
  import tensorflow as tf
  tf1 = tf.compat.v1
  tf1.disable_v2_behavior()
  tf1.logging.set_verbosity(tf1.logging.ERROR)
  warnings.filterwarnings("ignore", message=r"`tf\.layers\.\w+` is deprecated")
  release, transformations, shims = import_release(args.release_dir, tf1)
  settings = _release_settings(release["MAML"])
  n_items_of = lambda train, test: max(train.shape[1], test.shape[1])
  dataset, features = load_office(release, os.path.join(args.release_dir, "Data", "Office"),
                                  n_items_of)
  train, test = dataset.trainMatrix, dataset.testRatings
  n_users = max(train.shape[0], test.shape[0])
  n_items = n_items_of(train, test)
  tf1.set_random_seed(0)
  numpy.random.seed(0)
  sampler = release["sampler"].WarpSampler(train, batch_size=settings.batch_size,
                                           n_negative=settings.num_neg, check_negative=True)
  try:
    model = release["MAML"].MAML(
        n_users, n_items, imagefeatures=dataset.imagefeatures,
        textualfeatures=dataset.textualfeatures, embed_dim=64,
        batch_size=settings.batch_size, n_negative=settings.num_neg, margin=settings.margin,
        clip_norm=1.0, master_learning_rate=0.001, hidden_layer_dim=settings.hidden_layer_dim,
        dropout_rate=settings.dropout, feature_projection_scaling_factor=1.0,
        feature_l2_reg=settings.feature_l2_reg, use_rank_weight=True, use_cov_loss=True,
        cov_loss_weight=5.0)
    sess = _session(tf1, intra, inter)
    sess.run(tf1.global_variables_initializer())
    sess.run(tf1.assign(model.item_embeddings, model.feature_projection))
    fetches = (model.optimize, model.loss, model.feature_loss)
    waited = ran = 0.0
    for step in range(args.warmup + args.steps):
      if step == args.warmup:
        waited = ran = 0.0
      start = time.perf_counter()
      user_pos, neg = sampler.next_batch()
      got = time.perf_counter()
      sess.run(fetches, {model.user_positive_items_pairs: user_pos,
                         model.negative_samples: neg})
      waited += got - start
      ran += time.perf_counter() - got
  finally:
    sampler.close()
  pairs = settings.batch_size * args.steps

  test_users = numpy.asarray(list(set(test.nonzero()[0])), dtype=numpy.int32)
  if args.max_eval_users:
    test_users = test_users[:args.max_eval_users]
  evaluator = release["evaluator"].RecallEvaluator(model, train, test)
  evaluator.eval(sess, test_users[:EVAL_CHUNK])  # builds item_scores (warm-up)
  totals = {"ndcg": [], "recall": [], "hr": [], "pr": []}
  start = time.perf_counter()
  for chunk in partition_all(EVAL_CHUNK, test_users):
    recalls, ndcgs, hit_ratios, precisions = evaluator.eval(sess, chunk)
    for key, values in zip(("recall", "ndcg", "hr", "pr"),
                           (recalls, ndcgs, hit_ratios, precisions)):
      totals[key].extend(values)
  eval_seconds = time.perf_counter() - start
  sess.close()
  return {
      "train_pairs_per_s": pairs / (waited + ran),
      "train_steps": args.steps, "warmup_steps": args.warmup,
      "train_ms_per_step": 1000 * (waited + ran) / args.steps,
      "session_pairs_per_s": pairs / ran, "sampler_wait_s": waited,
      "eval_seconds": eval_seconds, "eval_users": int(len(test_users)),
      "eval_metrics_at_10": {k: sum(v) / len(v) for k, v in totals.items()},
      "transformations": transformations, "shims": shims, "features": features,
      "threads": {"intra_op": intra or "TF default", "inter_op": inter or "TF default",
                  "sampler_processes": SAMPLER_WORKERS},
      "settings": {"batch_size": settings.batch_size, "num_neg": settings.num_neg,
                   "embed_dim": 64, "hidden_layer_dim": settings.hidden_layer_dim,
                   "n_users": n_users, "n_items": n_items},
      "tensorflow": tf.__version__,
  }


def main(argv=None):
  try:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    intra, inter = threads_from_env(os.environ)
    result = measure(args, intra, inter)
  except UsageError as error:
    print(error, file=sys.stderr)
    return 1
  print(f"release ({result['tensorflow']} compat.v1, threads intra {intra or 'default'} / "
        f"inter {inter or 'default'}): training {result['train_pairs_per_s']:,.0f} pairs/s "
        f"({result['train_ms_per_step']:.0f} ms/step over {result['train_steps']} steps); "
        f"evaluation of {result['eval_users']} test users {result['eval_seconds']:.1f} s; "
        f"features: {result['features'].split(':')[0]}; "
        f"transformations: {'; '.join(result['transformations']) or 'none'}")
  print("RESULT " + json.dumps(result, sort_keys=True))
  return 0


if __name__ == "__main__":
  sys.exit(main())
