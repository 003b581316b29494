"""User task files: a CSV with columns ``input,output`` or a JSON list of ``{"input": ..., "output": ...}``.

Every problem becomes a one-line :class:`TaskError` naming the file, the problem and, where there is one,
the line (CSV: the physical line, header = line 1; JSON: the line of the item or of the syntax error).
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from analysis.errors import TaskError, parse_json
from analysis.tasks.task import DEFAULT_TEMPLATE, Task

REQUIRED_COLUMNS = ("input", "output")
MAX_TASK_BYTES = 5 * 2**20  # a task file larger than this is refused before parsing (a hosted demo's bound)
MAX_TASK_PAIRS = 50_000


def load_task_file(path: str | Path, name: str | None = None, template: str = DEFAULT_TEMPLATE,
                   case_sensitive: bool = False, min_pairs: int = 1) -> Task:
    """Read a user task from ``path`` (``.csv`` or ``.json``); reject it with a clear one-line reason."""
    path = Path(path)
    if path.is_dir():
        raise TaskError(f"task file {path}: a directory, not a .csv or .json file")
    if not path.is_file():
        raise TaskError(f"task file {path}: no such file")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise TaskError(f"task file {path}: cannot be read ({exc.strerror or type(exc).__name__})") from None
    return parse_task_bytes(data, path.name, name=name or path.stem, template=template,
                            case_sensitive=case_sensitive, min_pairs=min_pairs, source=str(path))


def parse_task_bytes(data: bytes, filename: str, name: str | None = None, template: str = DEFAULT_TEMPLATE,
                     case_sensitive: bool = False, min_pairs: int = 1, source: str | None = None) -> Task:
    """Parse task file contents (also used for app uploads, which have bytes but no path)."""
    where = f"task file {filename}"
    if len(data) > MAX_TASK_BYTES:
        raise TaskError(f"{where}: {len(data) / 2**20:.1f} MB; task files may hold at most "
                        f"{MAX_TASK_BYTES / 2**20:.0f} MB")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise TaskError(f"{where}: not UTF-8 text (byte 0x{data[exc.start]:02x} on line {line})") from None
    if not text.strip():
        raise TaskError(f"{where}: the file is empty")
    suffix = Path(filename).suffix.lower()
    if suffix == ".csv":
        pairs = _parse_csv(text, where)
    elif suffix == ".json":
        pairs = _parse_json(text, where)
    else:
        raise TaskError(f"{where}: unknown file type {suffix or '(none)'!r}; use .csv or .json")
    if len(pairs) > MAX_TASK_PAIRS:
        raise TaskError(f"{where}: {len(pairs)} pairs; a task may hold at most {MAX_TASK_PAIRS}")
    if len(pairs) < min_pairs:
        raise TaskError(f"{where}: {len(pairs)} pairs, but at least {min_pairs} are needed")
    return Task(name=name or Path(filename).stem, pairs=tuple(pairs), template=template,
                case_sensitive=case_sensitive, source=source or filename)


def _check_field(value, column: str, where: str, at: str) -> str:
    if not isinstance(value, str):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = str(value)
        else:
            raise TaskError(f"{where}: {at}: {column!r} must be a string, got {type(value).__name__}")
    value = value.strip()
    if not value:
        raise TaskError(f"{where}: {at}: blank {column!r}")
    if "\n" in value or "\r" in value:
        raise TaskError(f"{where}: {at}: {column!r} spans several lines")
    return value


def _parse_csv(text: str, where: str) -> list[tuple[str, str]]:
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = [h.strip().lower() for h in next(reader)]
    except StopIteration:
        raise TaskError(f"{where}: the file is empty") from None
    except csv.Error as exc:
        raise TaskError(f"{where}: line 1: malformed CSV ({exc})") from None
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    extra = [c for c in header if c not in REQUIRED_COLUMNS]
    if missing or extra or len(header) != len(set(header)):
        raise TaskError(f"{where}: line 1: expected the columns input,output; got {','.join(header) or '(none)'}")
    col = {c: header.index(c) for c in REQUIRED_COLUMNS}
    pairs: list[tuple[str, str]] = []
    try:
        for row in reader:
            line = reader.line_num
            if not any(cell.strip() for cell in row):
                continue  # skip blank lines
            if len(row) != len(header):
                raise TaskError(f"{where}: line {line}: expected {len(header)} fields, got {len(row)}")
            pairs.append((_check_field(row[col["input"]], "input", where, f"line {line}"),
                          _check_field(row[col["output"]], "output", where, f"line {line}")))
    except csv.Error as exc:
        raise TaskError(f"{where}: line {reader.line_num}: malformed CSV ({exc})") from None
    if not pairs:
        raise TaskError(f"{where}: a header but no rows")
    return pairs


def _parse_json(text: str, where: str) -> list[tuple[str, str]]:
    items = parse_json(text, where, TaskError)  # also [[[...]]] thousands deep, or a 100 000-digit number
    if not isinstance(items, list):
        raise TaskError(f"{where}: expected a JSON list of {{\"input\": ..., \"output\": ...}} objects")
    if not items:
        raise TaskError(f"{where}: the list is empty")
    if len(items) > MAX_TASK_PAIRS:
        raise TaskError(f"{where}: {len(items)} items; a task may hold at most {MAX_TASK_PAIRS}")
    lines = _item_lines(text, len(items))
    pairs: list[tuple[str, str]] = []
    for i, item in enumerate(items):
        at = f"item {i + 1}" + (f" (line {lines[i]})" if lines else "")
        if not isinstance(item, dict):
            raise TaskError(f"{where}: {at}: expected an object with keys input and output")
        keys = set(item)
        if keys != set(REQUIRED_COLUMNS):
            got = ",".join(map(str, item)) or "(none)"
            raise TaskError(f"{where}: {at}: expected the keys input,output; got {got}")
        pairs.append((_check_field(item["input"], "input", where, at),
                      _check_field(item["output"], "output", where, at)))
    return pairs


def _item_lines(text: str, count: int) -> list[int] | None:
    """Line numbers of the top-level list's items, found by one raw_decode walk that counts newlines only
    between consecutive items (linear in the text); None if it fails."""
    decoder = json.JSONDecoder()
    pos = text.index("[") + 1
    lines, line, counted = [], 1, 0
    try:
        for _ in range(count):
            while text[pos] in " \t\r\n,":
                pos += 1
            line += text.count("\n", counted, pos)
            counted = pos
            lines.append(line)
            _, pos = decoder.raw_decode(text, pos)
    except (ValueError, IndexError, RecursionError):
        return None
    return lines
