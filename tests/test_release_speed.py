"""scripts/release_speed.py's pure parts: the checks of its input, the
in-memory Python 2 -> 3 source transformations, the scoped sys.modules swap
and the contrib stand-in. No release checkout is needed (none is run)."""

import importlib.util
import os
import sys

import pytest

from tests.helpers import ROOT

SCRIPT = os.path.join(ROOT, "scripts", "release_speed.py")


@pytest.fixture(scope="module")
def rs():
  spec = importlib.util.spec_from_file_location("release_speed", SCRIPT)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _layout(folder, maml_source="class MAML(object):\n  pass\n", skip=()):
  os.makedirs(os.path.join(folder, "Data", "Office"), exist_ok=True)
  for name in ("MAML.py", "Dataset.py", "evaluator.py", "sampler.py",
               "Data/Office/train.csv", "Data/Office/test.csv"):
    if name in skip:
      continue
    with open(os.path.join(folder, name), "w") as f:
      f.write(maml_source if name == "MAML.py" else "")
  return str(folder)


def test_missing_dir_is_one_line_naming_flag_rule_and_value(rs, tmp_path, capsys):
  missing = str(tmp_path / "nowhere")
  assert rs.main([f"--release_dir={missing}"]) == 1
  err = capsys.readouterr().err.strip()
  assert "\n" not in err
  assert err.startswith("`--release_dir` must be a checkout of github.com/liufancs/MAML")
  assert err.endswith(f"Received: {missing} (not a directory)")
  assert rs.main([]) == 1
  assert capsys.readouterr().err.strip().endswith("Received: (none)")


def test_incomplete_or_foreign_checkout_is_refused(rs, tmp_path):
  folder = _layout(tmp_path / "a", skip=("sampler.py", "Data/Office/test.csv"))
  with pytest.raises(rs.UsageError, match=r"missing: sampler\.py, Data/Office/test\.csv\)$"):
    rs.check_release_dir(folder)
  folder = _layout(tmp_path / "b", maml_source="print('not the release')\n")
  with pytest.raises(rs.UsageError, match="defines no class MAML"):
    rs.check_release_dir(folder)
  folder = _layout(tmp_path / "c")
  assert rs.check_release_dir(folder) == os.path.abspath(folder)


def test_steps_and_thread_variables(rs):
  assert rs.check_steps(None, quick=False) == 40
  assert rs.check_steps(None, quick=True) == 3
  assert rs.check_steps("7", quick=True) == 7
  for bad in ("0", "-3", "2.5", "x"):
    with pytest.raises(rs.UsageError, match=f"^`--steps` must be an integer >= 1. Received: {bad}$"):
      rs.check_steps(bad, quick=False)
  assert rs.threads_from_env({}) == (0, 0)
  assert rs.threads_from_env({"TF_NUM_INTRAOP_THREADS": "1", "TF_NUM_INTEROP_THREADS": "2"}) == (1, 2)
  with pytest.raises(rs.UsageError, match="^`TF_NUM_INTEROP_THREADS` must be an integer >= 0. Received: two$"):
    rs.threads_from_env({"TF_NUM_INTEROP_THREADS": "two"})


def test_leading_tabs_expand_to_python2_columns(rs):
  # The release's case: a block indented with 12 spaces, one line with a tab + 4 spaces.
  source = "for a in b:\n    if c:\n            x = 1\n\t    y = 'p\\tq\t'\n            z = 3\n"
  with pytest.raises(TabError):
    compile(source, "t.py", "exec")
  fixed, lines = rs.expand_leading_tabs(source)
  assert lines == [4]
  assert fixed.splitlines()[3] == " " * 12 + "y = 'p\\tq\t'"  # tabs after the indent are kept
  compile(fixed, "t.py", "exec")
  # A tab moves to the next multiple of 8: "  \t" is 8 columns, "\t\t" 16.
  assert rs.expand_leading_tabs("  \tx\n\t\ty\nz\n") == (" " * 8 + "x\n" + " " * 16 + "y\nz\n", [1, 2])


def test_print_statements_become_calls(rs):
  source = ("print 'a', x\n  print x,\nprint\nprint(x)\nprinter = 1\nprint >>f, x\n"
            "print  'b'\r\n")
  fixed, lines = rs.convert_print_statements(source)
  assert lines == [1, 2, 3, 7]
  assert fixed == ("print('a', x)\n  print(x, end=\" \")\nprint()\nprint(x)\nprinter = 1\n"
                   "print >>f, x\nprint('b')\r\n")


def test_python3_source_transforms_only_what_does_not_compile(rs):
  fine = "print ('kept as the release wrote it')\n"
  assert rs.python3_source("ok.py", fine) == (fine, [])
  source = "if a:\n        print 'x'\n\tprint 'y'\n"
  fixed, notes = rs.python3_source("old.py", source)
  assert fixed == "if a:\n        print('x')\n        print('y')\n"
  assert notes == ["old.py: leading tabs expanded to 8-column stops (line 3)",
                   "old.py: print statements made calls (lines 2, 3)"]
  with pytest.raises(rs.UsageError, match=r"^`--release_dir` file bad.py must compile .* line 1: "):
    rs.python3_source("bad.py", "exec 'x' in d\n")


def test_partition_all_matches_toolz(rs):
  assert list(rs.partition_all(2, range(5))) == [(0, 1), (2, 3), (4,)]
  assert list(rs.partition_all(3, [])) == []


def test_swapped_modules_puts_the_old_entries_back(rs):
  json_module = sys.modules["json"]
  stand_in = rs._module("json")
  with rs.swapped_modules({"json": stand_in, "release_speed_test_absent": stand_in}):
    import json
    assert json is stand_in
    assert "release_speed_test_absent" in sys.modules
  assert sys.modules["json"] is json_module
  assert "release_speed_test_absent" not in sys.modules
  with pytest.raises(RuntimeError):
    with rs.swapped_modules({"json": stand_in}):
      raise RuntimeError("restored on errors too")
  assert sys.modules["json"] is json_module


def test_contrib_stand_in_imports_as_the_release_does_and_computes_l2(rs):
  import numpy as np
  import tensorflow as tf
  tf1 = tf.compat.v1
  replacements, shims = rs._stand_ins(tf1)
  assert shims[0].startswith("tensorflow.contrib.layers.python.layers.regularizers")
  with rs.swapped_modules(replacements):
    namespace = {}
    exec("import tensorflow as tf\n"
         "from tensorflow.contrib.layers.python.layers import regularizers\n", namespace)
  assert namespace["tf"] is tf1
  assert sys.modules["tensorflow"] is tf
  assert "tensorflow.contrib" not in sys.modules
  weights = np.array([[1.0, -2.0], [3.0, 0.5]], np.float32)
  with tf.Graph().as_default():
    penalty = namespace["regularizers"].l2_regularizer(100.0)(tf1.constant(weights))
    with tf1.Session() as sess:
      value = sess.run(penalty)
  assert value == pytest.approx(100.0 * (1 + 4 + 9 + 0.25) / 2)  # scale * sum(w^2) / 2
