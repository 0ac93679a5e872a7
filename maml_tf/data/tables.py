"""Delimited text tables read with pandas, checked cell by cell with clear errors.

Every interaction or item table the loaders read (the release's CSVs, Office's
TSVs, RecBole and MMRec atomic files) goes through `read_table`, then the
`*_column` parsers below. What is accepted, for every table:

* a UTF-8 byte-order mark, CRLF line ends, blank (or whitespace-only) lines
  anywhere, extra columns (ignored) and rows with extra trailing fields;
* the header is the first non-blank line; line numbers in messages count
  every physical line, header = its own line number (usually 1).

Speed: pandas' C parser reads the columns a loader asks for, integer id and
time columns as int64 where that cannot differ from checking their text (see
`read_table`), the others as strings; the checks are vectorised, and one
pass over the file's bytes counts its lines and looks for the characters
that decide those shortcuts. A file whose rows cannot be mapped one to one onto
physical lines by pandas (quoted fields spanning lines), or that has rows
shorter than the header or blank lines (the C parser pads those with empty
cells, which would hide a missing field), is re-read row by row with the
`csv` module, so that messages still name the exact line and field count.

Errors are `DataError`s of one line: "<file>: line <n>: column `<c>` <rule>.
Received: <value>".
"""

from __future__ import annotations

import csv
import dataclasses
import os
import sys
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd

from maml_tf.errors import DataError

MAX_ID = 2**31 - 1
_CHUNK = 1 << 24


@dataclasses.dataclass
class Table:
  """The columns a loader asked for, one entry per non-blank data row.

  Attributes:
    path: the file.
    header: the header's column names, stripped.
    header_line: the header's line number (1-based).
    columns: name -> object array of str cells ('' for an empty cell).
    lines: int64 line number of each row.
    ints: name -> int64 values of the columns asked for as integers that
      pandas' C parser read as plain integers with nothing to doubt (see
      `read_table`); their cells are read only if `cells` asks.
    blank_free: no cell of the file has a space or tab (nothing to strip).
  """
  path: str
  header: List[str]
  header_line: int
  columns: Dict[str, np.ndarray]
  lines: np.ndarray
  ints: Dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
  blank_free: bool = False
  sep: str = ","
  quoting: int = csv.QUOTE_MINIMAL

  def __len__(self) -> int:
    return len(self.lines)

  def has(self, name: str) -> bool:
    return name in self.columns or name in self.ints

  def cells(self, name: str) -> np.ndarray:
    """The str cells of a column (read again if only its ints were kept)."""
    if name not in self.columns:
      self.columns[name] = _read_column(self, name)
    return self.columns[name]

  def fail(self, row: int, column: str, rule: str, cell) -> None:
    raise DataError(f"{self.path}: line {int(self.lines[row])}: column "
                    f"`{column}` {rule}. Received: {cell!r}")


def check_file(path: str, what: str = "file") -> str:
  path = os.fspath(path)
  if not os.path.exists(path):
    raise DataError(f"{path}: file not found")
  if os.path.isdir(path):
    raise DataError(f"{path}: is a directory, expected a {what}")
  return path


def read_header(path: str, sep: str = ",",
                quoting: int = csv.QUOTE_MINIMAL) -> Tuple[List[str], int]:
  """(stripped header names, its line number); ([], 0) for an empty file."""
  try:
    with open(path, "r", encoding="utf-8-sig", newline="") as f:
      for number, raw in enumerate(f, 1):
        if raw.strip():
          row = next(csv.reader([raw], delimiter=sep, quoting=quoting))
          return [c.strip() for c in row], number
  except UnicodeDecodeError as e:
    raise DataError(f"{path}: is not UTF-8 text (byte {e.start}: "
                    f"{e.reason})") from e
  except csv.Error as e:
    raise DataError(f"{path}: malformed header ({e})") from e
  except OSError as e:
    raise DataError(f"{path}: cannot read ({e.strerror or e})") from e
  return [], 0


def check_header(path: str, header: Sequence[str], header_line: int,
                 required: Sequence[str]) -> None:
  """A name appearing twice, or a required column missing (with a hint)."""
  seen = set()
  for name in header:
    if name and name in seen:
      raise DataError(f"{path}: line {header_line}: column `{name}` appears "
                      f"twice in the header")
    seen.add(name)
  for name in required:
    if name not in header:
      low = name.lower().replace("_", "")
      near = [h for h in header if h.lower().replace("_", "") == low]
      hint = f"; did you mean `{near[0]}`?" if near else ""
      raise DataError(
          f"{path}: line {header_line}: missing required column `{name}` "
          f"(header has: {', '.join(header) or 'nothing'}){hint}")


def read_table(path: str, header: Sequence[str], header_line: int,
               columns: Sequence[str], sep: str = ",",
               quoting: int = csv.QUOTE_MINIMAL,
               int_columns: Sequence[str] = ()) -> Table:
  """Reads the named columns (all in `header`) of every non-blank data row.

  `int_columns` (a subset of `columns`) are first left to pandas' C parser
  to read as integers. Its result is kept (in `Table.ints`) only when it
  cannot differ from reading the cells as text and checking them: the
  column came out as int64 and the file has no `+` and no `-0` anywhere
  (the C parser reads "+5" as 5 and "-0" as 0; "1.0", "1e3", "", "x" or a
  Unicode digit make the column float or text, never int64). Otherwise the
  column is read as text like the others and the caller checks each cell.

  Raises:
    DataError: not UTF-8, malformed, or a row with fewer fields than needed
      to reach the last requested column ("line 7: has 3 fields, the header
      has 4").
  """
  index = {c: list(header).index(c) for c in columns}
  use = sorted({0} | set(index.values()))
  want_int = {index[c] for c in int_columns}
  ints = {}
  blank_free = False
  try:
    n_lines, seen = _scan_bytes(path)
    blank_free = not (seen[b" "] or (seen[b"\t"] and sep != "\t"))
    trust = not (seen[b"+"] or seen[b"-0"])
    cols, lines, int_cols = _read_fast(path, len(header), header_line, use,
                                       sep, quoting, want_int if trust else
                                       set(), n_lines)
    if cols is None:
      cols, lines, n_fields = _read_slow(path, header_line, use, sep, quoting)
      short = n_fields < use[-1] + 1
      if short.any():
        k = int(np.argmax(short))
        raise DataError(f"{path}: line {int(lines[k])}: has {int(n_fields[k])}"
                        f" fields, the header has {len(header)}")
    else:
      ints = {c: int_cols[i] for c, i in index.items() if i in int_cols}
  except UnicodeDecodeError as e:
    raise DataError(f"{path}: is not UTF-8 text (byte {e.start}: "
                    f"{e.reason})") from e
  except (csv.Error, pd.errors.ParserError) as e:
    raise DataError(f"{path}: malformed table ({_one_line(e)})") from e
  except OSError as e:
    raise DataError(f"{path}: cannot read ({e.strerror or e})") from e
  return Table(path, list(header), header_line,
               {c: cols[i] for c, i in index.items() if i in cols}, lines,
               ints, blank_free, sep, quoting)


_MARKS = (b" ", b"\t", b"+", b"-0")


def _scan_bytes(path: str):
  """(physical lines, {mark: whether the file has it})."""
  n, last, seen, tail = 0, b"\n", dict.fromkeys(_MARKS, False), b""
  with open(path, "rb") as f:
    while True:
      chunk = f.read(_CHUNK)
      if not chunk:
        break
      n += chunk.count(b"\n")
      both = tail + chunk  # a mark may straddle two chunks
      for mark in _MARKS:
        seen[mark] = seen[mark] or mark in both
      last, tail = chunk[-1:], chunk[-1:]
  return n + (last != b"\n"), seen


def _read_fast(path, n_header, header_line, use, sep, quoting, want_int,
               n_lines):
  """pandas' C parser; (None, None, None) when the slow path must decide."""
  dtype = {i: str for i in use if i not in want_int}
  try:
    frame = pd.read_csv(
        path, sep=sep, header=None, names=list(range(n_header)), usecols=use,
        skiprows=header_line, dtype=dtype, keep_default_na=False,
        na_values=[], skip_blank_lines=False, quoting=quoting,
        encoding="utf-8", engine="c", index_col=False)
  except (pd.errors.ParserError, pd.errors.EmptyDataError, ValueError,
          IndexError):
    # Every row shorter than the header, no data rows (pandas 3 raises
    # IndexError with a dtype for an empty file), or a quoting problem:
    # the csv module says exactly what and where. (UnicodeDecodeError is a
    # ValueError too: re-raised as is.)
    if sys.exc_info()[0] is UnicodeDecodeError:
      raise
    return None, None, None
  n = len(frame)
  if n != n_lines - header_line:
    return None, None, None  # a quoted field spans lines: rows != lines
  cols, int_cols = {}, {}
  for i in use:
    if i in want_int and frame[i].dtype == np.int64:
      int_cols[i] = frame[i].to_numpy()
    elif i in want_int:  # not plain integers: the cells as text
      cols[i] = None
    else:
      cols[i] = frame[i].to_numpy(dtype=object)
  if any(v is None for v in cols.values()):
    redo = [i for i, v in cols.items() if v is None]
    again = pd.read_csv(
        path, sep=sep, header=None, names=list(range(n_header)), usecols=redo,
        skiprows=header_line, dtype=str, keep_default_na=False, na_values=[],
        skip_blank_lines=False, quoting=quoting, encoding="utf-8",
        engine="c", index_col=False)
    for i in redo:
      cols[i] = again[i].to_numpy(dtype=object)
  last = use[-1]
  if last in cols:
    suspect = cols[last] == ""
    if last == 0:
      suspect |= np.char.strip(cols[last].astype(str)) == ""
    if suspect.any():
      return None, None, None  # blank or short rows look alike here
  return (cols, np.arange(header_line + 1, header_line + 1 + n,
                          dtype=np.int64), int_cols)


def _read_column(table: Table, name: str) -> np.ndarray:
  """One column's cells as text, rows as in `table` (fast path only)."""
  i = table.header.index(name)
  frame = pd.read_csv(
      table.path, sep=table.sep, header=None,
      names=list(range(len(table.header))), usecols=[i],
      skiprows=table.header_line, dtype=str, keep_default_na=False,
      na_values=[], skip_blank_lines=False, quoting=table.quoting,
      encoding="utf-8", engine="c", index_col=False)
  return frame[i].to_numpy(dtype=object)


def _read_slow(path, header_line, use, sep, quoting):
  """Row by row with the csv module: exact lines and field counts."""
  cells = {i: [] for i in use}
  lines, n_fields = [], []
  with open(path, "r", encoding="utf-8-sig", newline="") as f:
    reader = csv.reader(f, delimiter=sep, quoting=quoting)
    for row in reader:
      if reader.line_num <= header_line:
        continue
      if not row or (len(row) == 1 and not row[0].strip()):
        continue
      lines.append(reader.line_num)
      n_fields.append(len(row))
      for i in use:
        cells[i].append(row[i] if i < len(row) else "")
  cols = {}
  for i in use:
    arr = np.empty(len(lines), object)
    arr[:] = cells[i]
    cols[i] = arr
  return cols, np.array(lines, np.int64), np.array(n_fields, np.int64)


# ---------------------------------------------------------------------------
# column parsers: (values, None) or (None, index of the first bad cell)


def table_ids(table: Table, name: str):
  """`id_column` of a table's column, from its C-parsed ints when kept."""
  values = table.ints.get(name)
  if values is not None:
    bad = (values < 0) | (values > MAX_ID)
    if not bad.any():
      return values.astype(np.int64), None
  return id_column(table.cells(name))


def table_times(table: Table, name: str):
  """`time_column` of a table's column, from its C-parsed ints when kept."""
  values = table.ints.get(name)
  if values is not None:
    if not (np.abs(values) >= 10**18).any():
      return values.astype(np.int64), None
  return time_column(table.cells(name))


def stripped(table: Table, name: str) -> np.ndarray:
  """A text column's cells without surrounding blanks."""
  cells = table.cells(name)
  if table.blank_free:
    return cells
  out = np.empty(len(cells), object)
  out[:] = [c.strip() for c in cells]
  return out


def id_column(cells: np.ndarray) -> Tuple[Optional[np.ndarray], Optional[int]]:
  """Non-negative integers <= MAX_ID, ASCII digits, surrounding blanks ok."""
  if len(cells) == 0:
    return np.zeros(0, np.int64), None
  joined = "".join(cells)
  if not joined.isascii():
    for k, cell in enumerate(cells):
      if not id_ok(cell):
        return None, k
    return np.array([int(c) for c in cells], np.int64), None
  text = np.array(cells, dtype=str)
  if not joined.isdigit():
    text = np.strings.strip(text)
  bad = ~np.strings.isdigit(text) | (np.strings.str_len(text) > 10)
  if not bad.any():
    values = text.astype(np.int64)
    bad = values > MAX_ID
    if not bad.any():
      return values, None
  return None, int(np.argmax(bad))


def id_ok(cell: str) -> bool:
  text = cell.strip()
  return text.isascii() and text.isdigit() and int(text) <= MAX_ID


def id_rule(cell: str) -> str:
  """The rule a bad id cell breaks, for the message."""
  text = cell.strip()
  if text.isascii() and text.isdigit():
    return f"must be <= {MAX_ID} (2**31-1)"
  return "must be a non-negative integer"


def time_column(
    cells: np.ndarray) -> Tuple[Optional[np.ndarray], Optional[int]]:
  """Signed integers of at most 18 digits (unix seconds)."""
  if len(cells) == 0:
    return np.zeros(0, np.int64), None
  if not "".join(cells).isascii():
    for k, cell in enumerate(cells):
      text = cell.strip()
      body = text[1:] if text.startswith("-") else text
      if not (body.isascii() and body.isdigit() and len(body) <= 18):
        return None, k
    return np.array([int(c) for c in cells], np.int64), None
  text = np.strings.strip(np.array(cells, dtype=str))
  neg = np.strings.startswith(text, "-")
  body = np.where(neg, np.strings.slice(text, 1, None), text)
  bad = ~np.strings.isdigit(body) | (np.strings.str_len(body) > 18)
  if bad.any():
    return None, int(np.argmax(bad))
  return text.astype(np.int64), None


def float_column(
    cells: np.ndarray) -> Tuple[Optional[np.ndarray], Optional[int]]:
  """Finite decimal numbers (e.g. ratings, float timestamps)."""
  values = pd.to_numeric(pd.Series(cells, dtype=object), errors="coerce")
  values = values.to_numpy(dtype=np.float64, na_value=np.nan)
  bad = ~np.isfinite(values)
  if bad.any():
    return None, int(np.argmax(bad))
  return values, None


def first_error(table: Table, found: Sequence[Tuple[Optional[int], str, str]]):
  """Raises for the first bad cell in file order.

  Args:
    found: (index of the first bad row or None, column, rule) in the order
      columns are ranked when two bad cells share a row.
  """
  ranked = [(k, rank, column, rule) for rank, (k, column, rule) in
            enumerate(found) if k is not None]
  if ranked:
    k, _, column, rule = min(ranked)
    cell = table.cells(column)[k]
    table.fail(k, column, rule(cell) if callable(rule) else rule, cell)


def _one_line(err: BaseException) -> str:
  return " ".join(str(err).split())[:200]


__all__ = ["MAX_ID", "Table", "check_file", "check_header", "first_error",
           "float_column", "id_column", "id_ok", "id_rule", "read_header",
           "read_table", "stripped", "table_ids", "table_times",
           "time_column"]
