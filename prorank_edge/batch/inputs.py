"""Batch inputs: JSONL or Parquet rows of {query_id, query, candidates}, or a TREC run over a BEIR corpus.

Every row is validated before anything is scored. A bad row does not stop the job: it becomes a `Skipped`
entry naming the file, line (or Parquet row) and, where it can be read, the query id; the rest go on.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ..documents import Document, load_documents, parse_json_object, unicode_problem
from ..errors import InputError, MissingExtraError
from ..evaluation.metrics import trec_run_fields

INPUT_KINDS = ("jsonl", "parquet", "trec")
# Best effort only: the id of a line that is not valid JSON, so that its report can still name the query.
_QUERY_ID_PATTERN = re.compile(r'"query_id"\s*:\s*("(?:[^"\\]|\\.)*"|-?\d+)')


@dataclass
class QueryTask:
    """One query and its candidates, in input order; `line` is the input line (or Parquet row) it came from."""

    query_id: str
    query: str
    candidates: list[Document]
    line: int = 0

    def to_dict(self) -> dict:
        return {"query_id": self.query_id, "query": self.query, "line": self.line,
                "candidates": [[d.id, d.text, d.title, d.score] for d in self.candidates]}

    @classmethod
    def from_dict(cls, data: dict) -> QueryTask:
        line = data["line"]
        docs = [Document(doc_id, text, title, score, line) for doc_id, text, title, score in data["candidates"]]
        return cls(data["query_id"], data["query"], docs, line)


@dataclass(frozen=True)
class Skipped:
    """A query (or a line that could not even name one) left out, and why."""

    where: str
    line: int
    query_id: str | None
    reason: str

    def __str__(self) -> str:
        query = f" (query {self.query_id!r})" if self.query_id is not None else ""
        return f"{self.where}{query}: {self.reason}"

    def to_dict(self) -> dict:
        return {"where": self.where, "line": self.line, "query_id": self.query_id, "reason": self.reason}


@dataclass(frozen=True)
class Checks:
    """What the rest of the job needs of each row, checked up front so that no query fails half-way."""

    #: --fusion-weight: every candidate needs a first-stage score
    require_scores: bool = False
    #: --trec-out: TREC run lines split on whitespace, so ids must have none
    trec_ids: bool = False


@dataclass
class InputData:
    tasks: list[QueryTask] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)

    @property
    def pairs(self) -> int:
        return sum(len(t.candidates) for t in self.tasks)


# ---- one query's fields -------------------------------------------------------------------------------

def _id_value(value, name: str) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise InputError(f"field {name!r}: expected a string or integer, got {type(value).__name__}")
    text = str(value)
    if not text.strip():
        raise InputError(f"field {name!r} is empty")
    return text


def _string(record: dict, key: str, name: str, required: bool = True) -> str:
    value = record.get(key)
    if value is None:
        if required:
            raise InputError(f"field {name!r} is missing")
        return ""
    if not isinstance(value, str):
        raise InputError(f"field {name!r}: expected a string, got {type(value).__name__}")
    # JSONL strings were checked by parse_json_object; Parquet ones are checked here.
    problem = unicode_problem(value)
    if problem:
        raise InputError(f"field {name!r}: {problem}")
    return value


def _check_trec_id(value: str, name: str) -> None:
    if any(c.isspace() for c in value):
        raise InputError(f"field {name!r}: {value!r} holds whitespace, which a TREC run (--trec-out) cannot hold")


def _candidate(record, name: str, line: int, checks: Checks) -> Document:
    if not isinstance(record, dict):
        raise InputError(f"field {name!r}: expected an object, got {type(record).__name__}")
    if "id" in record and "_id" in record and record["id"] != record["_id"]:
        raise InputError(f"field {name!r}: fields 'id' and '_id' disagree")
    raw_id = record.get("id", record.get("_id"))
    if raw_id is None:
        raise InputError(f"field '{name}.id' is missing")
    doc_id = _id_value(raw_id, f"{name}.id")
    if checks.trec_ids:
        _check_trec_id(doc_id, f"{name}.id")
    text = _string(record, "text", f"{name}.text")
    title = _string(record, "title", f"{name}.title", required=False)
    score = record.get("score")
    if score is not None:
        if isinstance(score, bool) or not isinstance(score, (int, float)) or not math.isfinite(score):
            raise InputError(f"field '{name}.score': expected a finite number")
        score = float(score)
    elif checks.require_scores:
        raise InputError(f"field '{name}.score' is missing; --fusion-weight needs a first-stage score on every "
                         "candidate")
    return Document(doc_id, text, title, score, line)


def parse_query(record: dict, line: int, checks: Checks) -> QueryTask:
    """A validated QueryTask from one row's fields; InputError names the first bad field."""
    if record.get("query_id") is None:
        raise InputError("field 'query_id' is missing")
    query_id = _id_value(record["query_id"], "query_id")
    if checks.trec_ids:
        _check_trec_id(query_id, "query_id")
    query = _string(record, "query", "query")
    if not query.strip():
        raise InputError("field 'query' is empty")
    candidates = record.get("candidates")
    if candidates is None:
        raise InputError("field 'candidates' is missing")
    if not isinstance(candidates, list):
        raise InputError(f"field 'candidates': expected a list, got {type(candidates).__name__}")
    docs: list[Document] = []
    seen: dict[str, int] = {}
    for index, item in enumerate(candidates):
        doc = _candidate(item, f"candidates[{index}]", line, checks)
        if doc.id in seen:
            # Scored twice, the pair would be written twice: the whole query is refused instead.
            raise InputError(f"field 'candidates[{index}].id': duplicate id {doc.id!r} (first at "
                             f"candidates[{seen[doc.id]}])")
        seen[doc.id] = index
        docs.append(doc)
    return QueryTask(query_id, query, docs, line)


def _query_id_of(record) -> str | None:
    """The query id of a bad row, for its report, where one can be read."""
    value = record.get("query_id") if isinstance(record, dict) else None
    if isinstance(value, (str, int)) and not isinstance(value, bool) and not unicode_problem(str(value)):
        return str(value)
    return None


class _Collector:
    """Gathers rows in input order; a repeated query id is skipped (its pairs would otherwise be written twice)."""

    def __init__(self):
        self.data = InputData()
        self._first: dict[str, int] = {}

    def add(self, task: QueryTask, where: str) -> None:
        if task.query_id in self._first:
            self.skip(where, task.line, task.query_id, f"query id repeats (first on line {self._first[task.query_id]})")
            return
        self._first[task.query_id] = task.line
        self.data.tasks.append(task)

    def skip(self, where: str, line: int, query_id: str | None, reason: str) -> None:
        self.data.skipped.append(Skipped(where, line, query_id, reason))


# ---- JSONL ----------------------------------------------------------------------------------------------

def _raw_lines(path: Path) -> Iterator[tuple[int, bytes]]:
    with open(path, "rb") as stream:
        for number, raw in enumerate(stream, start=1):
            if number == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]
            if raw.strip():
                yield number, raw


def read_jsonl(path: Path, checks: Checks = Checks()) -> InputData:
    """One {query_id, query, candidates: [{id, text, title?, score?}]} object per line; blank lines are skipped."""
    collector = _Collector()
    for number, raw in _raw_lines(path):
        where = f"{path}:{number}"
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            match = _QUERY_ID_PATTERN.search(raw.decode("utf-8", "replace"))
            query_id = _loads_id(match.group(1)) if match else None
            collector.skip(where, number, query_id, f"invalid UTF-8 (byte {exc.start + 1} of the line)")
            continue
        try:
            record = parse_json_object(line, where)
        except InputError as exc:
            match = _QUERY_ID_PATTERN.search(line)
            query_id = _loads_id(match.group(1)) if match else None
            collector.skip(where, number, query_id, str(exc).removeprefix(f"{where}: "))
            continue
        try:
            collector.add(parse_query(record, number, checks), where)
        except InputError as exc:
            collector.skip(where, number, _query_id_of(record), str(exc))
    return collector.data


def _loads_id(token: str) -> str | None:
    try:
        value = json.loads(token)
    except json.JSONDecodeError:
        return None
    return _query_id_of({"query_id": value})


# ---- Parquet --------------------------------------------------------------------------------------------

def import_pyarrow(feature: str):
    """pyarrow and pyarrow.parquet, or one line saying which extra brings them."""
    try:
        import pyarrow
        import pyarrow.parquet
    except ImportError:
        raise MissingExtraError(feature, "ray", "pyarrow") from None
    return pyarrow, pyarrow.parquet


PARQUET_INPUT_COLUMNS = ("query_id", "query", "candidates")


def read_parquet(path: Path, checks: Checks = Checks()) -> InputData:
    """Rows with the JSONL fields as columns; `candidates` a list of structs {id, text, title?, score?}.
    Reports name the row (1-based) as their line."""
    pa, pq = import_pyarrow("Parquet input")
    try:
        parquet = pq.ParquetFile(path)
    except (OSError, pa.ArrowException) as exc:
        raise InputError(f"{path}: cannot read as Parquet ({str(exc).splitlines()[0]})") from None
    missing = [c for c in PARQUET_INPUT_COLUMNS if c not in parquet.schema_arrow.names]
    if missing:
        raise InputError(f"{path}: no column {', '.join(map(repr, missing))} (expected query_id, query, candidates)")
    collector = _Collector()
    number = 0
    # 1,024 rows per batch: queries of 100 candidates of ~1 KB each keep a batch near 100 MB.
    for batch in parquet.iter_batches(batch_size=1024, columns=list(PARQUET_INPUT_COLUMNS)):
        for record in batch.to_pylist():
            number += 1
            where = f"{path}: row {number}"
            try:
                collector.add(parse_query(record, number, checks), where)
            except InputError as exc:
                collector.skip(where, number, _query_id_of(record), str(exc))
    return collector.data


# ---- TREC run + BEIR corpus ---------------------------------------------------------------------------

def read_run_input(run_path: Path, data_dir: Path, checks: Checks = Checks()) -> InputData:
    """Queries in order of first appearance in the run, each with its run documents in file order and the run
    score as first-stage score; texts come from the BEIR folder's corpus.jsonl and queries.jsonl.

    A bad run line (or a doc or query the folder lacks) skips the whole query it belongs to: reranking the rest
    of its candidates would silently drop that one.
    """
    for required in ("corpus.jsonl", "queries.jsonl"):
        if not (data_dir / required).is_file():
            raise InputError(f"{data_dir}: not a BEIR dataset folder ({required} is missing)")
    corpus = {d.id: d for d in load_documents(str(data_dir / "corpus.jsonl"))}
    queries = {d.id: d.text for d in load_documents(str(data_dir / "queries.jsonl"))}

    collector = _Collector()
    order: list[str] = []
    first_line: dict[str, int] = {}
    docs: dict[str, list[Document]] = {}
    seen: dict[str, dict[str, int]] = {}
    bad: dict[str, tuple[int, str]] = {}
    for number, raw in _raw_lines(run_path):
        where = f"{run_path}:{number}"
        head = raw.decode("utf-8", "replace").split()
        qid = head[0] if head and "\ufffd" not in head[0] else None
        if qid is not None and qid not in first_line:
            first_line[qid] = number
            order.append(qid)
            docs[qid], seen[qid] = [], {}
        if qid is not None and qid in bad:
            continue
        try:
            _, docid, score = trec_run_fields(raw, where)
            if qid not in queries:
                raise InputError(f"query {qid!r} is not in {data_dir / 'queries.jsonl'}")
            if docid not in corpus:
                raise InputError(f"doc {docid!r} is not in {data_dir / 'corpus.jsonl'}")
            if docid in seen[qid]:
                raise InputError(f"doc {docid!r} appears twice (first on line {seen[qid][docid]})")
        except InputError as exc:
            reason = str(exc).removeprefix(f"{where}: ")
            if qid is None:
                collector.skip(where, number, None, reason)
            else:
                bad[qid] = (number, reason)
            continue
        seen[qid][docid] = number
        doc = corpus[docid]
        docs[qid].append(Document(doc.id, doc.text, doc.title, score, number))
    for qid in order:
        if qid in bad:
            number, reason = bad[qid]
            collector.skip(f"{run_path}:{number}", number, qid, reason)
        else:
            collector.add(QueryTask(qid, queries[qid], docs[qid], first_line[qid]), f"{run_path}:{first_line[qid]}")
    collector.data.skipped.sort(key=lambda s: s.line)
    return collector.data


# ---- what to read -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class InputSpec:
    """The job's input files; `fingerprint` hashes their bytes, so a resumed job knows its input is unchanged."""

    kind: str
    paths: tuple[Path, ...]

    def read(self, checks: Checks = Checks()) -> InputData:
        if self.kind == "jsonl":
            return read_jsonl(self.paths[0], checks)
        if self.kind == "parquet":
            return read_parquet(self.paths[0], checks)
        return read_run_input(self.paths[0], self.paths[1].parent, checks)

    def fingerprint(self) -> str:
        digest = hashlib.sha256()
        for path in self.paths:
            digest.update(str(path.name).encode() + b"\0")
            with open(path, "rb") as stream:
                while chunk := stream.read(1 << 20):
                    digest.update(chunk)
        return digest.hexdigest()

    def describe(self) -> str:
        return " + ".join(str(p) for p in self.paths)


def input_spec(input_path: str | None = None, run: str | None = None, data: str | None = None,
               input_format: str = "auto") -> InputSpec:
    """Checks that the files exist; the format of --input is taken from its name unless given."""
    if (input_path is None) == (run is None):
        raise InputError("give either --input FILE, or --run RUN with --data DIR")
    if run is not None:
        if data is None:
            raise InputError("--run needs --data DIR (the BEIR folder with corpus.jsonl and queries.jsonl)")
        data_dir = Path(data)
        if not data_dir.is_dir():
            raise InputError(f"{data_dir}: no such folder (expected a BEIR dataset folder)")
        paths = (_existing(run), _existing(data_dir / "corpus.jsonl"), _existing(data_dir / "queries.jsonl"))
        return InputSpec("trec", paths)
    if data is not None:
        raise InputError("--data goes with --run; an --input file carries its own texts")
    path = _existing(input_path)
    kind = input_format
    if kind == "auto":
        kind = "parquet" if path.suffix.lower() in (".parquet", ".pq") else "jsonl"
    return InputSpec(kind, (path,))


def _existing(path: str | Path) -> Path:
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if path.is_dir():
        raise InputError(f"{path}: is a folder, expected a file")
    return path
