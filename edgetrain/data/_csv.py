"""A strict reader for CSV tables of numbers (one sample per row).

Rules:
- Comma-separated (Python's `csv` dialect: quoted cells allowed); blank lines are skipped;
  cells are stripped of surrounding spaces; UTF-8 (a byte-order mark is dropped).
- Header optional: the first non-blank row is a header when any of its cells is not a number
  (so a header whose names are all numbers, e.g. ``0,1,2``, is read as data).
- Label column (`label`): a header name, or a column index (an int, or a string of an int;
  negative counts from the end); None picks a column named ``label`` (any case), else the last
  column — or, when `need_label` is false (a reconstruction task), no label column at all.
- Every other cell of a row is an input value, read as a float64 (Python's `float`: ``1e-3``,
  ``nan`` and ``inf`` parse; the loader refuses non-finite inputs later, naming the sample).
- Rows are numbered as the file's lines (1-based, the header included), as an editor shows them.

Every malformed table raises `DatasetCorruptError` naming the file, the row, the column and the
numbers; a bad `label` argument raises `InvalidArgumentError`.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass

import numpy as np

from edgetrain.errors import DatasetCorruptError, InvalidArgumentError


@dataclass(frozen=True, eq=False)
class CsvTable:
    """`x` (N, F) float64 inputs, `y` (N,) float64 labels (None without a label column),
    `columns` the header's names (None without a header), `label_column` the label's index in
    the file's columns (None without one), `rows` the file line of each sample."""

    x: np.ndarray
    y: np.ndarray | None
    columns: tuple[str, ...] | None
    label_column: int | None
    rows: tuple[int, ...]


def _number(cell: str) -> float | None:
    try:
        return float(cell)
    except ValueError:
        return None


def _shown(cell: str) -> str:
    return repr(cell) if len(cell) <= 40 else repr(cell[:37] + "...")


def _rows(text: str, where: str) -> list[tuple[int, list[str]]]:
    """The non-blank rows as (line number, stripped cells)."""
    reader = csv.reader(io.StringIO(text, newline=""))
    rows: list[tuple[int, list[str]]] = []
    try:
        for cells in reader:
            stripped = [c.strip() for c in cells]
            if any(stripped):
                rows.append((reader.line_num, stripped))
    except csv.Error as e:
        raise DatasetCorruptError(
            f"{where} line {reader.line_num + 1} is not valid CSV ({e}): save the table as "
            "plain comma-separated numbers"
        ) from None
    return rows


def _label_index(
    label: str | int | None, columns: tuple[str, ...] | None, width: int, need: bool, where: str
) -> int | None:
    if label is None:
        if columns is not None:
            named = [i for i, c in enumerate(columns) if c.lower() == "label"]
            if named:
                return named[0]
        return width - 1 if need else None
    if isinstance(label, str) and columns is not None and label in columns:
        return columns.index(label)
    index: int | None = None
    if isinstance(label, int) and not isinstance(label, bool):
        index = label
    elif isinstance(label, str) and label.strip().lstrip("-").isdigit():
        index = int(label.strip())
    if index is None:
        names = (
            f"its columns are {', '.join(map(repr, columns))}" if columns else "it has no header"
        )
        raise InvalidArgumentError(
            f"label column {label!r} is not in {where} ({names}): name a header column or give "
            "the column's index (0 is the first, -1 the last)"
        )
    if not -width <= index < width:
        raise InvalidArgumentError(
            f"label column index {index} is outside the {width} columns of {where}: give an "
            f"index from {-width} to {width - 1}"
        )
    return index % width


def _bad_cell(
    cells: list[str], line: int, columns: tuple[str, ...] | None, where: str
) -> DatasetCorruptError:
    for j, cell in enumerate(cells):
        if _number(cell) is None:
            name = f" ({columns[j]!r})" if columns else ""
            what = "is empty" if not cell else f"holds {_shown(cell)}, not a number"
            return DatasetCorruptError(
                f"{where} row {line} column {j + 1}{name} {what}: every cell after the header "
                "must be a number (write missing values as numbers or drop the row)"
            )
    return DatasetCorruptError(f"{where} row {line} cannot be read as numbers")


def parse_csv(
    text: str, *, where: str, label: str | int | None = None, need_label: bool = True
) -> CsvTable:
    """Parse `text` (the file's contents; `where` names it in errors) by the module's rules."""
    rows = _rows(text, where)
    columns: tuple[str, ...] | None = None
    if rows and any(_number(c) is None for c in rows[0][1]):
        columns = tuple(rows[0][1])
        rows = rows[1:]
    if columns is not None:
        width, against = len(columns), "the header has"
    elif rows:
        width, against = len(rows[0][1]), f"the first row (row {rows[0][0]}) has"
    else:
        return CsvTable(np.zeros((0, 0)), None, None, None, ())
    label_col = _label_index(label, columns, width, need_label, where)
    values = np.empty((len(rows), width), dtype=np.float64)
    for i, (line, cells) in enumerate(rows):
        if len(cells) != width:
            raise DatasetCorruptError(
                f"{where} row {line} has {len(cells)} values, {against} {width}: every row "
                "needs one value per column"
            )
        try:
            values[i] = [float(c) for c in cells]
        except ValueError:
            raise _bad_cell(cells, line, columns, where) from None
    keep = [j for j in range(width) if j != label_col]
    if not keep:
        raise DatasetCorruptError(
            f"{where} has only the label column ({width} column): add the input values as "
            "further columns"
        )
    y = None if label_col is None else values[:, label_col].copy()
    x = values[:, keep] if label_col is not None else values
    return CsvTable(np.ascontiguousarray(x), y, columns, label_col, tuple(r for r, _ in rows))


def read_csv(
    path: str, *, where: str, label: str | int | None = None, need_label: bool = True
) -> CsvTable:
    """Read and parse a CSV file (see `parse_csv`)."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise DatasetCorruptError(f"{where} cannot be read: {e}") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise DatasetCorruptError(
            f"{where} line {line} is not UTF-8 text (byte {e.start}): save the table as UTF-8 CSV"
        ) from None
    return parse_csv(text, where=where, label=label, need_label=need_label)
