"""Errors a user can cause, each rendered as one clear line.

`UsageError` covers flags and configuration, `DataError` covers input files and
arrays. Both are `ValueError`s so library callers can catch them generically;
the CLI turns them into exit code 2 with the message on stderr.
"""


class MamlError(ValueError):
  """Base class: a user-facing error whose message is a single line."""


class UsageError(MamlError):
  """A flag or configuration value breaks a rule.

  Message form: "`--margin` must be > 0. Received: -1".
  """


class DataError(MamlError):
  """An input file or array breaks a rule.

  Message form: "<file>: row 12: column `itemID` must be a non-negative
  integer. Received: 'abc'".
  """
