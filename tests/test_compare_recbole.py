"""scripts/compare_recbole.py's speed table (no RecBole, no TensorFlow, no
timing): which repeats count, how runs pool, and the --repeats check."""

import os
import sys

import pytest

from tests.helpers import ROOT

sys.path.insert(0, os.path.join(ROOT, "scripts"))

import compare_recbole  # noqa: E402


def _row(system, epochs, evals, repeats=None, batch="ours"):
  row = {"size": "items100k", "model": "lightgcn-2", "threads": 1,
         "system": system, "epoch_seconds": list(epochs), "steps": 10,
         "train_pairs": 20_000, "pairs_per_epoch": 20_000 if system == "ours" else 20_480,
         "n_users": 7, "n_items": 5, "eval_users": 7,
         "eval": {batch: {"seconds": list(evals), "users_per_batch": 3}}}
  if repeats is not None:
    row["repeats"] = repeats
  return row


def test_the_warm_up_is_left_out_and_the_fastest_timed_repeat_kept():
  # A row without "repeats" (every row written before --repeats=0) had a
  # warm-up: its first figure never counts, even when it is the fastest.
  ours = _row("ours", [1.0, 9.0, 8.0], [0.5, 4.0, 3.0])
  rb = _row("RecBole", [2.0, 20.0, 24.0], [1.0, 12.0, 15.0], batch=1048576)
  table = compare_recbole.speed_table([ours, rb])
  lines = table.splitlines()
  assert lines[1].split()[7:9] == ["8.00", "400.00"]  # 8 s / 20,000 pairs
  assert lines[1].split()[9] == "3.00"
  assert lines[2].split()[7] == "20.00" and lines[2].split()[9] == "12.00"
  assert lines[3] == ("items100k lightgcn-2, 1 thread(s): RecBole / ours: epoch "
                      "2.50x (2.44x per pair); evaluation 4.0x at eval_batch_size "
                      "1048576")
  assert "no warm-up" not in table


def test_repeats_zero_times_the_first_epoch_and_says_so():
  ours = _row("ours", [30.0], [6.0], repeats=0)
  rb = _row("RecBole", [45.0], [9.0], repeats=0, batch=1048576)
  lines = compare_recbole.speed_table([ours, rb]).splitlines()
  assert lines[1].split()[7] == "30.00" and lines[1].endswith("3 (no warm-up)")
  assert lines[2].split()[7] == "45.00"
  assert lines[2].endswith("(eval_batch_size 1048576) (no warm-up)")
  assert lines[3] == ("items100k lightgcn-2, 1 thread(s), no warm-up: RecBole / ours: "
                      "epoch 1.50x (1.46x per pair); evaluation 1.5x at "
                      "eval_batch_size 1048576")


def test_runs_pool_their_timed_figures_and_never_mix_warm_and_cold_rows():
  first = _row("ours", [1.0, 9.0], [0.5, 4.0], repeats=1)
  second = _row("ours", [1.0, 7.0], [0.5, 5.0], repeats=1)
  cold = _row("ours", [6.0], [2.0], repeats=0)
  merged = compare_recbole.merge_rows([first, second, cold])
  assert len(merged) == 2
  warm = next(m for m in merged if m["repeats"] == 1)
  assert warm["runs"] == 2 and warm["epoch_seconds"] == [1.0, 9.0, 7.0]
  assert warm["eval"]["ours"]["seconds"] == [0.5, 4.0, 5.0]
  cold_merged = next(m for m in merged if m["repeats"] == 0)
  assert cold_merged["epoch_seconds"] == [6.0]
  # A second cold run keeps its only figure.
  again = compare_recbole.merge_rows([cold, _row("ours", [5.0], [3.0], repeats=0)])
  assert again[0]["epoch_seconds"] == [6.0, 5.0]
  assert again[0]["eval"]["ours"]["seconds"] == [2.0, 3.0]


def test_negative_repeats_is_a_one_line_usage_error(capsys, tmp_path):
  with pytest.raises(SystemExit) as e:
    compare_recbole.main(["--speed", "--repeats=-1", f"--workdir={tmp_path}"])
  assert e.value.code == 2
  assert "`--repeats` must be >= 0. Received: -1" in capsys.readouterr().err
  assert not os.listdir(tmp_path)
