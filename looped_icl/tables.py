"""CSV tables of result rows (sweeps, reproductions): written with a header, read back typed."""

from __future__ import annotations

import csv
import os
from collections.abc import Mapping, Sequence

import numpy as np


def write_csv(path: str, rows: Sequence[Mapping]) -> str:
  """One row per mapping; the header is the union of keys in first-seen order. Floats are
  written with repr (round-trip exact). The file is replaced atomically."""
  header: list[str] = []
  for row in rows:
    header.extend(k for k in row if k not in header)
  tmp = f"{path}.tmp.{os.getpid()}"   # written whole, then renamed over the old table
  with open(tmp, "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=header)
    writer.writeheader()
    for row in rows:
      writer.writerow({k: _cell(v) for k, v in row.items()})
  os.replace(tmp, path)
  return path


def _cell(value):
  if isinstance(value, (float, np.floating)):
    return repr(float(value))
  if isinstance(value, (np.integer,)):
    return int(value)
  return value


def read_csv(path: str) -> list[dict]:
  """Rows of a CSV written by :func:`write_csv`, numbers parsed back to float/int."""
  with open(path, newline="") as f:
    return [{k: _parse(v) for k, v in row.items()} for row in csv.DictReader(f)]


def _parse(value: str):
  for cast in (int, float):
    try:
      return cast(value)
    except ValueError:
      pass
  return value
