"""Reading records from files or ``datasets`` sources, and validating their fields.

Every stage reads its data through :func:`read_records`, so every stage accepts the same sources
(JSONL, JSON, parquet, CSV, ``.txt`` or any ``datasets.load_dataset`` arguments) and reports bad
input the same way: a :class:`RecordError` that names the source, the record and the field.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

from lit_rlhf.errors import UserError

#: A data source: a file path, or keyword arguments for ``datasets.load_dataset`` (e.g.
#: ``{"path": "json", "data_files": "x.jsonl"}`` or a hub dataset ``{"path": "org/name", "split": "train"}``).
DataSource = Union[str, dict]

FILE_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv", ".txt")


class RecordError(UserError, ValueError):
    """A bad record: the message names the source, the record (line or row) and the field."""

    def __init__(self, source: str, index: int | None, field_name: str | None, problem: str):
        where = source
        if index is not None:
            where += f": record {index}"
        if field_name is not None:
            where += f": field '{field_name}'"
        super().__init__(f"{where}: {problem}")
        self.source, self.index, self.field_name, self.problem = source, index, field_name, problem


@dataclass
class Record:
    """One record with where it came from, so any later check can say which one is bad."""

    data: dict[str, Any]
    source: str
    index: int  # 1-based line (JSONL, .txt) or row (JSON, CSV, parquet, datasets)

    def error(self, field_name: str | None, problem: str) -> RecordError:
        return RecordError(self.source, self.index, field_name, problem)


@dataclass
class FieldMap:
    """Remaps the canonical field names (``prompt``, ``response``, ...) to the names in a dataset."""

    names: dict[str, str] = field(default_factory=dict)

    def __call__(self, canonical: str) -> str:
        return self.names.get(canonical, canonical)


def read_records(source: DataSource) -> list[Record]:
    """All records of ``source``. Raises :class:`RecordError` for a missing file or an unreadable record."""
    if isinstance(source, Mapping):
        return _read_with_datasets(dict(source))
    path = Path(source).expanduser()
    if not path.exists():
        if path.suffix.lower() in FILE_SUFFIXES or source.startswith((".", "/", "~")):
            raise RecordError(str(source), None, None, "file not found")
        return _read_with_datasets({"path": source})  # a dataset name, e.g. on the hub
    if path.is_dir():
        raise RecordError(
            str(source), None, None, f"is a directory; give a file ({', '.join(FILE_SUFFIXES)}) or datasets arguments"
        )
    readers = {
        ".jsonl": _read_jsonl,
        ".json": _read_json,
        ".txt": _read_txt,
        ".parquet": _read_table,
        ".csv": _read_csv,
    }
    reader = readers.get(path.suffix.lower())
    if reader is None:
        raise RecordError(
            str(source), None, None, f"unknown file type '{path.suffix}'; expected one of {', '.join(FILE_SUFFIXES)}"
        )
    records = reader(path)
    if not records:
        raise RecordError(str(source), None, None, "contains no records")
    return records


def _text_lines(path: Path):
    """(line number, text) of a UTF-8 file; bytes that are not UTF-8 fail with the line they are on."""
    with open(path, "rb") as f:
        for line_no, raw in enumerate(f, start=1):
            try:
                yield line_no, raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise RecordError(
                    str(path),
                    line_no,
                    None,
                    f"is not UTF-8 text (byte 0x{raw[e.start]:02x} at column {e.start + 1}); save the file as UTF-8",
                ) from None


def _read_jsonl(path: Path) -> list[Record]:
    records = []
    for line_no, line in _text_lines(path):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
        except json.JSONDecodeError as e:
            raise RecordError(
                str(path),
                line_no,
                None,
                f"not valid JSON ({e.msg} at column {e.colno}){_whole_json_hint(path, records)}",
            ) from None
        if not isinstance(data, dict):
            raise RecordError(
                str(path),
                line_no,
                None,
                f"expected a JSON object, got {type(data).__name__}{_whole_json_hint(path, records)}",
            )
        records.append(Record(data, str(path), line_no))
    return records


def _whole_json_hint(path: Path, records_so_far: list) -> str:
    """A hint when a ``.jsonl`` file that failed on its first record is one JSON document (e.g. a pretty-printed
    array)."""
    if records_so_far:
        return ""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return ""
    kind = "array" if isinstance(data, list) else "document"
    return (
        f"; the whole file is one JSON {kind}, not JSON Lines (one object a line): name it "
        f"{path.with_suffix('.json').name} (.json), or write one object per line"
    )


def _read_json(path: Path) -> list[Record]:
    try:
        data = json.loads("".join(line for _, line in _text_lines(path)))
    except json.JSONDecodeError as e:
        raise RecordError(str(path), None, None, f"not valid JSON ({e.msg} at line {e.lineno})") from None
    if isinstance(data, dict) and len(data) == 1 and isinstance(next(iter(data.values())), list):
        data = next(iter(data.values()))  # {"data": [...]} style files
    if not isinstance(data, list):
        raise RecordError(str(path), None, None, "expected a JSON list of objects (or JSONL, one object a line)")
    records = []
    for row, item in enumerate(data, start=1):
        if not isinstance(item, dict):
            raise RecordError(str(path), row, None, f"expected a JSON object, got {type(item).__name__}")
        records.append(Record(item, str(path), row))
    return records


def _read_txt(path: Path) -> list[Record]:
    """Plain text counts as pretraining text: one record per non-empty line."""
    return [Record({"text": line.rstrip("\n")}, str(path), n) for n, line in _text_lines(path) if line.strip()]


def _read_csv(path: Path) -> list[Record]:
    """CSV cells are text (a response "42" stays the string "42", an empty cell is an empty string). A row
    with more or fewer cells than the header fails with its record number (the header is not a record)."""
    import csv

    text = "".join(line for _, line in _text_lines(path))
    rows = csv.reader(text.splitlines(keepends=True))
    header = next(rows, None)
    if not header:
        raise RecordError(str(path), None, None, "has no header row naming the columns")
    records = []
    for index, row in enumerate(rows, start=1):
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != len(header):
            raise RecordError(
                str(path),
                index,
                None,
                f"has {len(row)} cells but the header has {len(header)} columns ({', '.join(header)})",
            )
        records.append(Record(dict(zip(header, row)), str(path), index))
    return records


def _read_table(path: Path) -> list[Record]:
    kind = "parquet" if path.suffix.lower() == ".parquet" else "csv"
    return _read_with_datasets({"path": kind, "data_files": str(path), "split": "train"}, name=str(path))


def _read_with_datasets(kwargs: dict, name: str | None = None) -> list[Record]:
    import datasets

    kwargs.setdefault("split", "train")
    name = name or str(kwargs.get("data_files") or kwargs.get("path"))
    try:
        dataset = datasets.load_dataset(**kwargs)
    except Exception as e:  # datasets raises many types; the user needs the source and the cause
        raise RecordError(name, None, None, f"could not be loaded with datasets.load_dataset({kwargs}): {e}") from e
    return [Record(dict(row), name, i) for i, row in enumerate(dataset, start=1)]


# ----------------------------------------------------------------------------------------------
# Field validation


def get_str(record: Record, fields: FieldMap, canonical: str, *, allow_empty: bool = False) -> str:
    """A required string field (remapped), non-empty unless ``allow_empty``."""
    name = fields(canonical)
    if name not in record.data:
        raise record.error(name, f"missing (record has fields: {', '.join(sorted(record.data)) or 'none'})")
    if record.data[name] is None:
        raise record.error(name, "is null; expected a string")
    value = record.data[name]
    if not isinstance(value, str):
        raise record.error(name, f"expected a string, got {type(value).__name__}")
    if not allow_empty and not value.strip():
        raise record.error(name, "is empty")
    return value


CHAT_ROLES = ("system", "user", "assistant")


def get_messages(record: Record, fields: FieldMap, *, must_end_with: str | None = None) -> list[dict[str, str]]:
    """A chat: optional system turn, then user/assistant alternating, starting with user."""
    name = fields("messages")
    messages = record.data.get(name)
    if not isinstance(messages, Sequence) or isinstance(messages, str) or not messages:
        raise record.error(name, "expected a non-empty list of {'role', 'content'} objects")
    expected = "user"
    clean = []
    for i, message in enumerate(messages):
        where = f"{name}[{i}]"
        if not isinstance(message, Mapping):
            raise record.error(where, f"expected an object with 'role' and 'content', got {type(message).__name__}")
        role, content = message.get("role"), message.get("content")
        if role not in CHAT_ROLES:
            raise record.error(f"{where}.role", f"expected one of {', '.join(CHAT_ROLES)}, got {role!r}")
        if not isinstance(content, str) or not content.strip():
            raise record.error(f"{where}.content", "expected a non-empty string")
        if role == "system":
            if i != 0:
                raise record.error(f"{where}.role", "a system message may only come first")
        elif role != expected:
            raise record.error(f"{where}.role", f"roles out of order: expected '{expected}', got '{role}'")
        else:
            expected = "assistant" if role == "user" else "user"
        clean.append({"role": role, "content": content})
    if must_end_with is not None and clean[-1]["role"] != must_end_with:
        raise record.error(name, f"the last message must be from the {must_end_with}, got '{clean[-1]['role']}'")
    return clean
