"""Reading users' documents (JSONL) with errors that name the file, line and field."""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from .errors import InputError


@dataclass(frozen=True)
class Document:
    id: str
    text: str
    title: str = ""
    #: a first-stage score (e.g. BM25) when the input carries one
    score: float | None = None
    line: int = 0

    @property
    def full_text(self) -> str:
        """What the reranker reads: title and text, as BEIR evaluations join them."""
        return f"{self.title} {self.text}" if self.title else self.text


def _read_bytes(path: str) -> tuple[bytes, str]:
    if path == "-":
        stream: BinaryIO = sys.stdin.buffer
        return stream.read(), "<stdin>"
    file = Path(path)
    if not file.exists():
        raise InputError(f"{path}: no such file")
    if file.is_dir():
        raise InputError(f"{path}: is a folder, expected a JSONL file")
    try:
        return file.read_bytes(), path
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror})") from None


def text_lines(raw_lines: Iterable[bytes], name: str) -> Iterator[tuple[int, str]]:
    """(line number, text) of each non-blank line, decoded one by one so an error names the line; a byte-order
    mark on the first line is dropped."""
    for number, raw in enumerate(raw_lines, start=1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InputError(f"{name}:{number}: invalid UTF-8 (byte {exc.start + 1} of the line)") from None
        if number == 1:
            line = line.lstrip("\ufeff")
        if line.strip():
            yield number, line.rstrip("\r\n")


def load_documents(path: str) -> list[Document]:
    """Documents from a JSONL file (`-` for stdin): one object per line with `id` (or BEIR `_id`) and `text`,
    optional `title` and first-stage `score`. A missing id becomes the line number. Blank lines are skipped."""
    data, name = _read_bytes(path)
    documents: list[Document] = []
    seen: dict[str, int] = {}
    for number, line in text_lines(data.split(b"\n"), name):
        doc = parse_document(line, name, number)
        if doc.id in seen:
            raise InputError(f"{name}:{number}: field 'id': duplicate id {doc.id!r} (first on line {seen[doc.id]})")
        seen[doc.id] = number
        documents.append(doc)
    if not documents:
        raise InputError(f"{name}: no documents (the file is empty)")
    return documents


def unicode_problem(text: str) -> str | None:
    """Why `text` cannot be tokenized, or None: a lone UTF-16 surrogate, which valid JSON escapes such as
    "\\ud800" (or undecodable command-line bytes) produce, and which no tokenizer accepts."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return f"invalid Unicode: a lone surrogate U+{ord(text[exc.start]):04X} at character {exc.start + 1}"
    return None


def _invalid_string(value, path: str) -> tuple[str, str] | None:
    """(field path, problem) of the first string inside a parsed JSON value that is not valid Unicode."""
    if isinstance(value, str):
        problem = unicode_problem(value)
        return (path, problem) if problem else None
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        if isinstance(key, int):
            child = f"{path}[{key}]"
        elif problem := unicode_problem(key):
            return path or "(top level)", f"a field name is {problem}"
        else:
            child = f"{path}.{key}" if path else key
        found = _invalid_string(item, child)
        if found:
            return found
    return None


def parse_json_object(line: str, where: str) -> dict:
    """One JSONL line as a dict; anything else, or a string in it that is not valid Unicode, raises
    InputError naming `where` (file:line) and the field."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        raise InputError(f"{where}: invalid JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(record, dict):
        raise InputError(f"{where}: expected a JSON object, got {type(record).__name__}")
    invalid = _invalid_string(record, "")
    if invalid:
        raise InputError(f"{where}: field {invalid[0]!r}: {invalid[1]} (JSON \\u escapes of surrogates must "
                         "come in pairs)")
    return record


def parse_document(line: str, name: str, number: int) -> Document:
    where = f"{name}:{number}"
    record = parse_json_object(line, where)
    if "id" in record and "_id" in record and record["id"] != record["_id"]:
        raise InputError(f"{where}: fields 'id' and '_id' disagree")
    doc_id = record.get("id", record.get("_id", str(number)))
    if isinstance(doc_id, bool) or not isinstance(doc_id, (str, int)):
        raise InputError(f"{where}: field 'id': expected a string or integer, got {type(doc_id).__name__}")
    doc_id = str(doc_id)
    if "text" not in record:
        raise InputError(f"{where}: field 'text' is missing")
    text = record["text"]
    if not isinstance(text, str):
        raise InputError(f"{where}: field 'text': expected a string, got {type(text).__name__}")
    title = record.get("title") or ""
    if not isinstance(title, str):
        raise InputError(f"{where}: field 'title': expected a string, got {type(title).__name__}")
    score = record.get("score")
    if score is not None:
        if isinstance(score, bool) or not isinstance(score, (int, float)) or not math.isfinite(score):
            raise InputError(f"{where}: field 'score': expected a finite number")
        score = float(score)
    return Document(doc_id, text, title, score, number)
