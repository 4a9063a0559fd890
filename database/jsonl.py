"""The versioned JSON-lines exchange format for moving records between databases.

    line 1      {"format": "tunefleet-records", "version": 1, "exported_at": "..."}
    then        {"type": "target", ...} and {"type": "workload", ...}, each before first use
    then        {"type": "record", "uid": ..., "workload_key": ..., "target_fingerprint": ..., ...}
    last line   {"type": "end", "targets": T, "workloads": W, "records": R}

The end line makes a file cut at a line boundary detectable; records carry their uid so that
importing the same file twice adds nothing. Job ids are local to a database and not exported.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from tunefleet.database.errors import DatabaseError, ImportFileError, InvalidRecordError
from tunefleet.database.records import (
    CommittedRecord,
    TargetInfo,
    WorkloadInfo,
    added_fields,
    exchanged_fields,
    field_types,
    json_dict,
)

FORMAT_NAME = "tunefleet-records"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class EndLine:
    """The closing line with the counts the importer must have seen."""

    targets: int
    workloads: int
    records: int


Item = TargetInfo | WorkloadInfo | CommittedRecord | EndLine

# The type tag of each kind of line; a line holds the exchanged fields of its class.
LINE_TYPES: dict[str, type[Item]] = {
    "target": TargetInfo,
    "workload": WorkloadInfo,
    "record": CommittedRecord,
    "end": EndLine,
}


def header_line(source: str | None = None) -> dict[str, Any]:
    """The first line of every export; `source` names the database it came from (masked URL).

    Readers of version 1 ignore keys they do not know, so `source` needs no new version.
    """
    header = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "exported_at": datetime.now(UTC).isoformat(),
    }
    if source is not None:
        header["source"] = source
    return header


def describe_origin(path: str | Path) -> str:
    """Where the records of an export file come from, for the `origin` of what it imports:
    the file, and the time and database its header names (when it names them)."""
    origin = f"import of {Path(path).resolve()}"
    try:
        with Path(path).open("r", encoding="utf-8") as handle:
            header = json.loads(handle.readline())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return origin  # read_file reports what is wrong with the file
    if not isinstance(header, dict):
        return origin
    if isinstance(header.get("exported_at"), str):
        origin += f", exported {header['exported_at']}"
    if isinstance(header.get("source"), str):
        origin += f" from {header['source']}"
    return origin


def item_to_line(item: Item) -> dict[str, Any]:
    """The JSON object written for one item: its type tag and its exchanged fields."""
    for line_type, cls in LINE_TYPES.items():
        if isinstance(item, cls):
            line = json_dict(item, exchanged_fields(cls))
            for name in added_fields(cls):  # absent from files of the format's first fields
                if line.get(name) is None:
                    line.pop(name, None)
            return {"type": line_type, **line}
    raise TypeError(f"{type(item).__name__} is not an item of the exchange format")


def write_file(path: str | Path, items: Iterable[Item], source: str | None = None) -> EndLine:
    """Write the header (naming `source`), the items and the end line (counted here);
    returns the end line."""
    counts = {"target": 0, "workload": 0, "record": 0}
    path = Path(path)
    tmp = path.with_name(path.name + ".partial")
    try:
        out = tmp.open("w", encoding="utf-8")
    except OSError as err:
        raise DatabaseError(f"cannot write {path}: {err.strerror}") from None
    with out:
        out.write(json.dumps(header_line(source)) + "\n")
        for item in items:
            line = item_to_line(item)
            counts[line["type"]] += 1
            out.write(json.dumps(line, separators=(",", ":")) + "\n")
        end = EndLine(counts["target"], counts["workload"], counts["record"])
        out.write(json.dumps(item_to_line(end)) + "\n")
    tmp.replace(path)  # a reader never sees a half-written export under the final name
    return end


def read_file(path: str | Path) -> Iterator[tuple[int, Item]]:
    """Yield (line number, item) from an export, raising ImportFileError at the first bad line.

    The end line is yielded last after its counts were checked; a file without it is truncated.
    """
    name = str(path)
    try:
        handle = Path(path).open("r", encoding="utf-8")
    except OSError as err:
        raise ImportFileError(name, 0, f"cannot open the file ({err.strerror})") from None
    with handle:
        counts = {"target": 0, "workload": 0, "record": 0}
        ended = False
        number = 0
        for number, raw in enumerate(_lines(name, handle), start=1):
            if ended:
                raise ImportFileError(name, number, "data after the end line")
            obj = _parse_json(name, number, raw)
            if number == 1:
                _check_header(name, obj)
                continue
            item = parse_item(name, number, obj)
            if isinstance(item, EndLine):
                seen = EndLine(counts["target"], counts["workload"], counts["record"])
                if item != seen:
                    raise ImportFileError(
                        name, number, f"the end line announces {item} but the file holds {seen}"
                    )
                ended = True
            else:
                counts[obj["type"]] += 1
            yield number, item
        if number == 0:
            raise ImportFileError(name, 1, "the file is empty")
        if not ended:
            raise ImportFileError(
                name, number, "the file ends without its end line: it is truncated"
            )


def _lines(name: str, handle: TextIO) -> Iterator[str]:
    """The file's lines; bytes that are not UTF-8 stop the import at their line."""
    number = 0
    while True:
        try:
            raw = handle.readline()
        except UnicodeDecodeError:
            raise ImportFileError(name, number + 1, "not UTF-8 text") from None
        if not raw:
            return
        number += 1
        yield raw


def _parse_json(name: str, number: int, raw: str) -> dict[str, Any]:
    if not raw.endswith("\n"):
        raise ImportFileError(name, number, "the line is cut off (no newline): truncated file")
    try:
        obj = json.loads(raw)
    except json.JSONDecodeError as err:
        raise ImportFileError(name, number, f"not valid JSON ({err.msg})") from None
    if not isinstance(obj, dict):
        raise ImportFileError(name, number, "expected a JSON object")
    return obj


def _check_header(name: str, obj: dict[str, Any]) -> None:
    if obj.get("format") != FORMAT_NAME:
        raise ImportFileError(name, 1, f"not a {FORMAT_NAME} file (no such header)")
    version = obj.get("version")
    if version != FORMAT_VERSION:
        raise ImportFileError(
            name,
            1,
            f"format version {version!r}; this tunefleet reads version {FORMAT_VERSION}"
            + (": upgrade tunefleet" if isinstance(version, int) and version > 1 else ""),
        )


def parse_item(name: str, number: int, obj: dict[str, Any]) -> Item:
    """Turn one parsed JSON object into a typed item, checking every field's type.

    Records are validated as NewRecords are (status, median, finite timings).
    """
    kind = obj.get("type")
    cls = LINE_TYPES.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise ImportFileError(name, number, f"unknown line type {kind!r}")
    try:
        return cls(**_FieldReader(name, number, obj).fields(cls))
    except InvalidRecordError as err:
        raise ImportFileError(name, number, str(err)) from None


class _FieldReader:
    """Typed access to the fields of one line, failing with the line number and field name."""

    def __init__(self, name: str, number: int, obj: dict[str, Any]) -> None:
        self.name, self.number, self.obj = name, number, obj

    def _get(self, key: str, types: type | tuple[type, ...], what: str) -> Any:
        if key not in self.obj:
            raise ImportFileError(self.name, self.number, f"missing field {key!r}")
        value = self.obj[key]
        if not isinstance(value, types) or isinstance(value, bool):
            raise ImportFileError(self.name, self.number, f"field {key!r} must be {what}")
        return value

    def fields(self, cls: type) -> dict[str, Any]:
        """The exchanged fields of record class `cls`, each read by its annotated type."""
        types, added = field_types(cls), added_fields(cls)
        return {
            key: READERS[types[key]](self, key)
            for key in exchanged_fields(cls)
            if key in self.obj or key not in added
        }

    def str(self, key: str) -> str:
        return self._get(key, str, "a string")

    def int(self, key: str) -> int:
        return self._get(key, int, "an integer")

    def dict(self, key: str) -> dict[str, Any]:
        return self._get(key, dict, "an object")

    def optional_float(self, key: str) -> float | None:
        if self.obj.get(key, ...) is None:
            return None
        return float(self._get(key, (int, float), "a number or null"))

    def optional_int(self, key: str) -> int | None:
        if self.obj.get(key, ...) is None:
            return None
        return self._get(key, int, "an integer or null")

    def floats(self, key: str) -> tuple[float, ...]:
        values = self._get(key, list, "a list of numbers")
        if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
            raise ImportFileError(self.name, self.number, f"field {key!r} must hold numbers")
        out = tuple(float(v) for v in values)
        if not all(math.isfinite(v) for v in out):
            raise ImportFileError(self.name, self.number, f"field {key!r} must be finite")
        return out

    def time(self, key: str) -> datetime:
        text = self.str(key)
        try:
            value = datetime.fromisoformat(text)
        except ValueError:
            raise ImportFileError(
                self.name, self.number, f"field {key!r} is not an ISO 8601 time"
            ) from None
        return value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)


READERS: dict[Any, Callable[[_FieldReader, str], Any]] = {
    str: _FieldReader.str,
    int: _FieldReader.int,
    Mapping[str, Any]: _FieldReader.dict,
    float | None: _FieldReader.optional_float,
    int | None: _FieldReader.optional_int,
    Sequence[float]: _FieldReader.floats,
    datetime: _FieldReader.time,
}
