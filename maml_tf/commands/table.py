"""Runs a results table's rows from its plan, resumably and across sessions:

  maml-tf table --plan=results/table2/table.json --rows=cmlf_all,vbpr_text

A plan is a JSON file (its "runs" object; a "docs" object beside it is for
tests/test_results.py):

  "tune":  the flags every row's search shares (the table's one budget);
  "train": the flags every seed's run adds (e.g. --noexport);
  "seeds": the seeds of every row, e.g. [0, 1, 2];
  "rows":  {name: {"flagfile": PATH} (a committed run), or {"tune": [the
            row's own search flags]} with an optional "flagfile" its search
            starts from; optionally "train": [flags only this row's runs
            add]}.

For each row (all of them, or --rows), in the plan's order:
  1. a row with "tune" and no search record: `maml-tf tune
     [--flagfile=<row's flagfile>] <tune> <row's tune> --max_trials=K
     --tune_dir=<runs_dir>/tune_<row>` (later flags win), for K = 1, 2, ...
     up to the search's --max_trials: one trial a call. After each call but
     the last, the search's small state (search.json, trials.jsonl, the
     oracle's keras_tuner/ and each trial's flags.txt and metrics.json, no
     checkpoints) is copied to the progress record
     <records>/tune_<row>.progress/, and a session that finds it but not the
     search's folder (a fresh machine) starts from it: the finished trials
     are kept, the trial that was running is run again from its start.
     When the search completes, its best.flags, trials.jsonl and
     search.json are copied to the search record <records>/tune_<row>/
     (best.flags's "# Run:" comment then names the copy), the progress
     record is removed, and its best.flags is the row's flagfile from then
     on (a later session refits from it without searching again);
  2. each seed without a record: `maml-tf train --flagfile=<the row's
     flagfile> <train> <row's train> --seed=S --workdir=<runs_dir>/<row>_sS`;
     when the run has finished, its record (flags.txt, metrics.json,
     per_user.npz) is copied to <records>/<row>_sS/.
<records> is the plan's folder. What is recorded is skipped; an interrupted
search or run resumes from its folder under --runs_dir when the same command
is run again (`maml-tf tune` and `train` resume). A record is written to a
temporary folder and renamed into place, so a record is whole or absent.
Each search and run is its own `python -m maml_tf` process, its output on
this console. The first one that fails stops the command (exit status 1)
with a line naming the row, the seed and the workdir.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
from typing import Callable, Dict, List, Optional, Sequence

from absl import app, flags

from maml_tf import cli
from maml_tf.errors import UsageError

flags.DEFINE_string("plan", None, "the table's plan: a JSON file whose `runs` "
                    "object names the rows, their searches or flagfiles, and "
                    "the seeds (records go to the plan's folder)")
flags.DEFINE_list("rows", [], "the rows to run, by their names in the plan; "
                  "empty: every row")
flags.DEFINE_string("runs_dir", None, "where searches and runs keep their "
                    "folders until recorded; default: runs/<the plan's folder "
                    "name>")
flags.DEFINE_boolean("dry_run", False, "print what would run (and what is "
                     "recorded already), run nothing")
FLAGS = flags.FLAGS

SEARCH_FILES = ("best.flags", "trials.jsonl", "search.json")
PROGRESS = ".progress"  # <records>/tune_<row>.progress: an unfinished search
PROGRESS_FILES = ("search.json", "trials.jsonl")
PROGRESS_DIRS = ("keras_tuner",)  # copied whole (the oracle's JSON files)
TRIAL_FILES = ("flags.txt", "metrics.json")  # of each trials/<id>/
RUN_FILES = ("flags.txt", "metrics.json")
OPTIONAL_RUN_FILES = ("per_user.npz",)
NAME = re.compile(r"^[a-z0-9][a-z0-9_]*$")


@dataclasses.dataclass(frozen=True)
class Row:
  name: str
  flagfile: Optional[str]  # the run's flagfile, or its search's base
  tune: Optional[List[str]]  # the row's search flags; None: not searched
  train: List[str]


@dataclasses.dataclass(frozen=True)
class Plan:
  path: str
  records: str  # the plan's folder
  tune: List[str]
  train: List[str]
  seeds: List[int]
  rows: Dict[str, Row]


def _flag_list(where, value):
  if not isinstance(value, list) or not all(isinstance(v, str) and v.startswith("--")
                                            for v in value):
    raise UsageError(f"{where} must be a list of flags, each starting with "
                     f"'--'. Received: {json.dumps(value)}")
  return list(value)


def read_plan(path: str) -> Plan:
  """The plan's `runs` object, checked; UsageError with one line naming the
  file, the key, the rule and the value otherwise."""
  where = f"`--plan` {path}"
  try:
    with open(path, encoding="utf-8") as f:
      document = json.load(f)
  except OSError as e:
    raise UsageError(f"{where}: cannot read it ({e.strerror})") from None
  except ValueError as e:
    raise UsageError(f"{where}: not JSON ({e})") from None
  runs = document.get("runs") if isinstance(document, dict) else None
  if not isinstance(runs, dict):
    raise UsageError(f"{where}: must hold a `runs` object")
  unknown = sorted(set(runs) - {"tune", "train", "seeds", "rows"})
  if unknown:
    raise UsageError(f"{where}: `runs` keys must be tune, train, seeds, rows. "
                     f"Received: {unknown[0]}")
  seeds = runs.get("seeds")
  if (not isinstance(seeds, list) or not seeds or len(set(seeds)) != len(seeds)
      or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0
                 for s in seeds)):
    raise UsageError(f"{where}: `runs.seeds` must be a non-empty list of "
                     f"distinct integers >= 0. Received: {json.dumps(seeds)}")
  tune = _flag_list(f"{where}: `runs.tune`", runs.get("tune", []))
  train = _flag_list(f"{where}: `runs.train`", runs.get("train", []))
  rows = {}
  spec_rows = runs.get("rows")
  if not isinstance(spec_rows, dict) or not spec_rows:
    raise UsageError(f"{where}: `runs.rows` must be a non-empty object of rows")
  for name, spec in spec_rows.items():
    at = f"{where}: row {name!r}"
    if not NAME.match(name):
      raise UsageError(f"{at}: a row's name must be lower-case letters, digits "
                       f"and '_' (it names folders)")
    if not isinstance(spec, dict):
      raise UsageError(f"{at} must be an object. Received: {json.dumps(spec)}")
    unknown = sorted(set(spec) - {"flagfile", "tune", "train"})
    if unknown:
      raise UsageError(f"{at}: keys must be flagfile, tune, train. Received: "
                       f"{unknown[0]}")
    if "flagfile" not in spec and "tune" not in spec:
      raise UsageError(f"{at} must have `flagfile` (a committed run), `tune` "
                       f"(the row's search flags), or both (a search from "
                       f"that flagfile)")
    flagfile = spec.get("flagfile")
    if flagfile is not None and (not isinstance(flagfile, str) or not flagfile):
      raise UsageError(f"{at}: `flagfile` must be a path. Received: "
                       f"{json.dumps(flagfile)}")
    search = (_flag_list(f"{at}: `tune`", spec["tune"]) if "tune" in spec
              else None)
    rows[name] = Row(name, flagfile, search,
                     _flag_list(f"{at}: `train`", spec.get("train", [])))
  return Plan(path, os.path.dirname(path) or ".", tune, train,
              list(seeds), rows)


def chosen_rows(plan: Plan, names: Sequence[str]) -> List[Row]:
  names = [n.strip() for n in names if n.strip()]
  unknown = [n for n in names if n not in plan.rows]
  if unknown:
    raise UsageError(f"`--rows` must name rows of {plan.path} "
                     f"({', '.join(plan.rows)}). Received: {unknown[0]}")
  if not names:
    return list(plan.rows.values())
  return [plan.rows[n] for n in plan.rows if n in names]


def copy_record(source: str, destination: str, files: Sequence[str],
                optional: Sequence[str] = (),
                rewrite: Optional[Dict[str, Callable[[str], str]]] = None) -> None:
  """Copies `files` (and those of `optional` that exist) from `source` into
  the new folder `destination`, whole or not at all (a temporary folder
  beside it, renamed); a file named in `rewrite` is copied as the text its
  function returns for the source's text."""
  missing = [f for f in files if not os.path.isfile(os.path.join(source, f))]
  if missing:
    raise UsageError(f"{source}: cannot record it, {missing[0]} is missing")
  temporary = f"{destination}.tmp-{os.getpid()}"
  shutil.rmtree(temporary, ignore_errors=True)
  os.makedirs(temporary)
  try:
    for name in list(files) + [f for f in optional
                               if os.path.isfile(os.path.join(source, f))]:
      shutil.copy2(os.path.join(source, name), os.path.join(temporary, name))
      if name in (rewrite or {}):
        path = os.path.join(temporary, name)
        with open(path, encoding="utf-8") as f:
          text = rewrite[name](f.read())
        with open(path, "w", encoding="utf-8") as f:
          f.write(text)
    os.rename(temporary, destination)
  except BaseException:
    shutil.rmtree(temporary, ignore_errors=True)
    raise


def run_line_to(flagfile: str) -> Callable[[str], str]:
  """A rewrite for copy_record: the "# Run:" comment line of a search's
  best.flags names `flagfile` (its recorded copy) instead of the search
  folder, which a table's runs folder does not keep."""
  def rewrite(text: str) -> str:
    return "".join(
        f"# Run: maml-tf train --flagfile={flagfile} [--workdir=...]\n"
        if line.startswith("# Run: ") else line
        for line in text.splitlines(keepends=True))
  return rewrite


def finished(workdir: str) -> bool:
  try:
    with open(os.path.join(workdir, "metrics.json")) as f:
      return json.load(f).get("finished") is True
  except (OSError, ValueError):
    return False


def subprocess_runner(argv: Sequence[str]) -> int:
  """Runs `python -m maml_tf ARGV` as its own process; its exit status."""
  return subprocess.run([sys.executable, "-m", "maml_tf", *argv]).returncode


class Failed(Exception):
  """A search or run exited with an error: the command stops."""


def planned_trials(plan: Plan, row: Row) -> int:
  """The search's --max_trials: the last of the table's and the row's search
  flags, else `maml-tf tune`'s default."""
  from maml_tf.tuning.loop import TuneSettings  # pylint: disable=g-import-not-at-top
  value = None
  for flag in [*plan.tune, *(row.tune or [])]:
    if flag.startswith("--max_trials="):
      value = flag.split("=", 1)[1]
  if value is None:
    return TuneSettings().max_trials
  if not value.isdigit() or int(value) < 1:
    raise UsageError(f"`--plan` {plan.path}: row {row.name!r}: --max_trials "
                     f"must be an integer >= 1. Received: {value!r}")
  return int(value)


def trials_ended(tune_dir: str) -> int:
  """How many trials of the search in `tune_dir` ended (completed or
  failed), by its trials.jsonl; 0 without one."""
  try:
    with open(os.path.join(tune_dir, "trials.jsonl"), encoding="utf-8") as f:
      records = [json.loads(line) for line in f if line.strip()]
  except (OSError, ValueError):
    return 0
  return sum(r.get("status") in ("COMPLETED", "FAILED") for r in records)


def save_progress(tune_dir: str, progress: str) -> None:
  """Replaces the progress record `progress` with the search's small state
  in `tune_dir` (PROGRESS_FILES, PROGRESS_DIRS, each trial's TRIAL_FILES),
  whole: written beside it and renamed into place."""
  temporary = f"{progress}.tmp-{os.getpid()}"
  shutil.rmtree(temporary, ignore_errors=True)
  try:
    os.makedirs(temporary)
    for name in PROGRESS_FILES:
      shutil.copy2(os.path.join(tune_dir, name), os.path.join(temporary, name))
    for name in PROGRESS_DIRS:
      shutil.copytree(os.path.join(tune_dir, name),
                      os.path.join(temporary, name))
    trials = os.path.join(tune_dir, "trials")
    for trial in sorted(os.listdir(trials)) if os.path.isdir(trials) else []:
      for name in TRIAL_FILES:
        source = os.path.join(trials, trial, name)
        if os.path.isfile(source):
          os.makedirs(os.path.join(temporary, "trials", trial), exist_ok=True)
          shutil.copy2(source, os.path.join(temporary, "trials", trial, name))
    old = f"{progress}.old-{os.getpid()}"
    if os.path.isdir(progress):
      os.rename(progress, old)
    os.rename(temporary, progress)
    shutil.rmtree(old, ignore_errors=True)
  except BaseException:
    shutil.rmtree(temporary, ignore_errors=True)
    raise


def search_row(row: Row, argv: Sequence[str], tune_dir: str, record: str,
               total: int, runner: Callable[[Sequence[str]], int],
               say: Callable[[str], None]) -> None:
  """Runs the row's search one trial a call (see the module's docstring),
  from its progress record when `tune_dir` holds no search."""
  progress = record + PROGRESS
  if (os.path.isdir(progress)
      and not os.path.isfile(os.path.join(tune_dir, "search.json"))):
    shutil.copytree(progress, tune_dir, dirs_exist_ok=True)
    say(f"{row.name}: search resumed from {progress} "
        f"({trials_ended(tune_dir)} of {total} trials ended)")
  first = min(trials_ended(tune_dir) + 1, total)
  for trials in range(first, total + 1):
    status = runner([*argv, f"--max_trials={trials}", f"--tune_dir={tune_dir}"])
    if status != 0:
      raise Failed(f"row {row.name}: the search exited with status "
                   f"{status} (its folder: {tune_dir})")
    if trials < total:
      save_progress(tune_dir, progress)
      say(f"{row.name}: {trials_ended(tune_dir)} of {total} trials ended; "
          f"progress recorded in {progress}")


def run_row(plan: Plan, row: Row, runs_dir: str,
            runner: Callable[[Sequence[str]], int], dry_run: bool,
            say: Callable[[str], None]) -> None:
  flagfile = row.flagfile
  if row.tune is not None:
    record = os.path.join(plan.records, f"tune_{row.name}")
    flagfile = os.path.join(record, "best.flags")
    if os.path.isdir(record):
      shutil.rmtree(record + PROGRESS, ignore_errors=True)  # a stale one
      say(f"{row.name}: search recorded ({record})")
    else:
      tune_dir = os.path.join(runs_dir, f"tune_{row.name}")
      base = [f"--flagfile={row.flagfile}"] if row.flagfile else []
      argv = ["tune", *base, *plan.tune, *row.tune]
      total = planned_trials(plan, row)
      say(f"{row.name}: search: maml-tf {' '.join(argv)} "
          f"--tune_dir={tune_dir} (one trial a call, --max_trials=1 to "
          f"{total})")
      if dry_run:
        flagfile = os.path.join(tune_dir, "best.flags") + " (once searched)"
      else:
        search_row(row, argv, tune_dir, record, total, runner, say)
        copy_record(tune_dir, record, SEARCH_FILES,
                    rewrite={"best.flags": run_line_to(flagfile)})
        shutil.rmtree(record + PROGRESS, ignore_errors=True)
        say(f"{row.name}: search recorded in {record}")
  for seed in plan.seeds:
    run = f"{row.name}_s{seed}"
    record = os.path.join(plan.records, run)
    if os.path.isdir(record):
      say(f"{run}: recorded ({record})")
      continue
    workdir = os.path.join(runs_dir, run)
    argv = ["train", f"--flagfile={flagfile}", *plan.train, *row.train,
            f"--seed={seed}", f"--workdir={workdir}"]
    say(f"{run}: maml-tf {' '.join(argv)}")
    if dry_run:
      continue
    status = runner(argv)
    if status != 0 or not finished(workdir):
      raise Failed(f"row {row.name} seed {seed}: the run exited with status "
                   f"{status}{'' if status else ' without finishing'} (its "
                   f"workdir: {workdir})")
    copy_record(workdir, record, RUN_FILES, OPTIONAL_RUN_FILES)
    say(f"{run}: recorded in {record}")


def run_table(plan: Plan, rows: Sequence[Row], runs_dir: str,
              runner: Callable[[Sequence[str]], int] = subprocess_runner,
              dry_run: bool = False, say: Callable[[str], None] = print) -> None:
  """Runs `rows` of `plan` (see the module's docstring). Raises Failed at
  the first search or run that fails."""
  for row in rows:
    if row.flagfile is not None and not os.path.isfile(row.flagfile):
      raise UsageError(f"`--plan` {plan.path}: row {row.name!r}: its flagfile "
                       f"must exist (paths are from the current folder). "
                       f"Received: {row.flagfile}")
  for row in rows:
    run_row(plan, row, runs_dir, runner, dry_run, say)


def main(argv):
  if len(argv) > 1:
    cli.usage_error(f"unexpected arguments: {' '.join(argv[1:])}")
  try:
    if not FLAGS.plan:
      raise UsageError("`--plan` must name a table's plan (a JSON file), e.g. "
                       "results/table2/table.json. Received: ''")
    plan = read_plan(FLAGS.plan)
    rows = chosen_rows(plan, FLAGS.rows)
    runs_dir = FLAGS.runs_dir or os.path.join(
        "runs", os.path.basename(plan.records))
    run_table(plan, rows, runs_dir, dry_run=FLAGS.dry_run,
              say=lambda line: print(line, flush=True))
  except UsageError as e:
    cli.usage_error(str(e))
  except Failed as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  return 0


def entry(argv=None):
  """`maml-tf table ...` (argv[0] is the command's name)."""
  cli.exit_on_help(argv)
  app.run(main, argv=argv)
