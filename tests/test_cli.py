"""scripts/train.py end to end on a tiny flagfile, and its usage errors (the
real process where the process is the point: exit status of a whole run,
--debug's traceback; its main in this process for the many one-line errors)."""

import json
import os

import pytest

from tests.helpers import run, run_in_process, write_release_layout


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
  root = tmp_path_factory.mktemp("tiny")
  data = root / "data"
  features = write_release_layout(str(data))
  flagfile = root / "tiny.flags"
  flagfile.write_text("\n".join([
      "--dataset=custom", f"--data_dir={data}", f"--extra_features=meta={features}",
      "--embed_dim=8", "--hidden_layer_dim=16", "--batch_size=16",
      "--num_neg=2", "--train_steps=6", "--eva_batches=3", "--topk=5,10",
      "--select_metric=ndcg@10", f"--export_dir={root / 'exports'}",
      "--export_name=tiny", "--notensorboard",
      f"--cache_dir={root / 'cache'}"]) + "\n")
  return root, flagfile


@pytest.fixture(scope="module")
def trained(tiny):
  """The end-to-end run: scripts/train.py as a real process on the tiny
  flagfile, its workdir left for the tests that only read it."""
  root, flagfile = tiny
  workdir = root / "run1"
  return run([f"--flagfile={flagfile}", f"--workdir={workdir}"]), workdir


def test_train_script_end_to_end(tiny, trained):
  root, _ = tiny
  proc, workdir = trained
  assert proc.returncode == 0, proc.stderr[-3000:]
  records = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in records] == [3, 6]
  for r in records:
    for k in (5, 10):
      for m in ("ndcg", "recall", "hr", "precision"):
        assert 0.0 <= r["test"][f"{m}@{k}"] <= 1.0
  summary = json.loads((workdir / "metrics.json").read_text())
  assert summary["finished"] is True
  assert summary["last"]["step"] == 6
  assert "test" in summary["selection"]
  assert summary["modalities"] == ["meta"]
  # The final table and the progress both reach the user.
  assert "Selection:" in proc.stdout and "ndcg@10" in proc.stdout
  # The best round was exported as version 1 of the model, for TF Serving.
  assert summary["export"] == str(root / "exports" / "tiny" / "1")
  assert os.path.exists(os.path.join(summary["export"], "saved_model.pb"))
  assert "Exported the best round" in proc.stdout
  # flags.txt is itself a flagfile that reruns the experiment exactly (the
  # rerun in this process: the script's own start is the run above).
  flags_txt = (workdir / "flags.txt").read_text()
  assert "--num_neg=2" in flags_txt and "--overwrite" not in flags_txt
  rerun = root / "rerun"
  proc2 = run_in_process([f"--flagfile={workdir / 'flags.txt'}", f"--workdir={rerun}",
                          "--noexport"])
  assert proc2.returncode == 0, proc2.stderr[-3000:]
  again = [json.loads(l) for l in (rerun / "metrics.jsonl").read_text().splitlines()]
  assert len(again) == len(records)
  for a, b in zip(records, again):
    assert a["test"] == pytest.approx(b["test"], abs=1e-6)


def test_finished_workdir_is_not_silently_overwritten(tiny, trained):
  # The finished run is the end-to-end one (it exported; --noexport is not
  # what makes the refusal); the refused command runs in this process.
  _, flagfile = tiny
  proc, workdir = trained
  assert proc.returncode == 0, proc.stderr[-3000:]
  before = (workdir / "metrics.jsonl").read_text()
  exported = sorted(os.listdir(workdir.parent / "exports" / "tiny"))
  proc = run_in_process([f"--flagfile={flagfile}", f"--workdir={workdir}"])
  assert proc.returncode == 2
  assert "--overwrite" in proc.stderr and "Traceback" not in proc.stderr
  assert (workdir / "metrics.jsonl").read_text() == before
  assert sorted(os.listdir(workdir.parent / "exports" / "tiny")) == exported


@pytest.mark.parametrize("args, message", [
    (["--margin=-1"], "`--margin` must be > 0. Received: -1"),
    (["--dropout=1"], "`--dropout` must be < 1. Received: 1"),
    (["--batch_size=0"], "`--batch_size` must be >= 1. Received: 0"),
    (["--mode=fast"], "`--mode` must be one of faithful, paper. Received: 'fast'"),
    (["--attention=dot"], "`--attention` must be one of scaled, softmax, none"),
    (["--train_steps=10", "--eva_batches=4"], "`--train_steps` must be a multiple of --eva_batches"),
    (["--topk=10,x"], "`--topk` must be integers"),
    (["--select_metric=ndcg@20"], "`--select_metric` must be ndcg|recall|hr|precision@k"),
    (["--dataset=custom"], "`--data_dir` is required with --dataset=custom"),
    (["--dataset=custom", "--data_dir=/nonexistent"], "`--data_dir` must be an existing folder"),
    (["--modalities=text,image"], "image"),
    (["--num_neg=two"], "num_neg"),
    (["--learning_rate=0"], "`--learning_rate` must be > 0. Received: 0"),
    (["--network_lr_scale=-1"], "`--network_lr_scale` must be > 0. Received: -1"),
    (["--model=bpr"], "`--model` must be one of maml, lrml, cml, mf, lightgcn, mario, neumf, vbpr, cmlf, ngcf, mmgcn, grcn, lattice. Received: 'bpr'"),
    (["--model=lrml"], "`--num_neg` must be 1 with --model=lrml"),
    (["--protocol=ncf"], "`--protocol` must be one of release, loo, split. Received: 'ncf'"),
    (["--protocol=loo", "--select_metric=recall@10"],
     "`--select_metric` must be ndcg@k or hr@k with --protocol=loo"),
    (["--memory_slots=0"], "`--memory_slots` must be >= 1. Received: 0"),
])
def test_usage_errors_exit_2_with_one_line(tmp_path, args, message):
  proc = run_in_process(args + [f"--workdir={tmp_path / 'w'}", "--noexport",
                     f"--cache_dir={tmp_path / 'cache'}"])
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert message in proc.stderr
  assert "Traceback" not in proc.stderr
  assert not (tmp_path / "w" / "metrics.jsonl").exists()


def test_debug_flag_shows_the_traceback(tmp_path):
  proc = run_in_process(["--margin=-1", "--debug", f"--workdir={tmp_path / 'w'}"])
  assert proc.returncode == 2
  assert "Traceback" in proc.stderr and "`--margin` must be > 0" in proc.stderr
