"""BEIR datasets: finding them (a local folder or a one-time download) and reading them.

Layout (https://github.com/beir-cellar/beir): corpus.jsonl (`_id`, `title`, `text`), queries.jsonl
(`_id`, `text`) and qrels/SPLIT.tsv (`query-id  corpus-id  score`, tab-separated, with a header line).
"""

from __future__ import annotations

import http.client
import os
import shutil
import sys
import tempfile
import urllib.error
import urllib.request
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ..documents import Document, parse_document, text_lines
from ..errors import InputError, ProrankError

BEIR_BASE_URL = "https://public.ukp.informatik.tu-darmstadt.de/thakur/BEIR/datasets"
# The public BEIR datasets whose zip holds one flat folder in the layout above. cqadupstack is left out: its zip
# holds one sub-dataset per forum (pass one of those folders with --data instead).
BEIR_DATASETS = (
    "arguana", "climate-fever", "dbpedia-entity", "fever", "fiqa", "hotpotqa", "msmarco", "nfcorpus", "nq",
    "quora", "scidocs", "scifact", "trec-covid", "webis-touche2020",
)
DOWNLOAD_TIMEOUT_S = 60


@dataclass
class BeirData:
    """One split of a BEIR dataset. `queries` holds only the split's judged queries, in qrels file order."""

    name: str
    split: str
    corpus: dict[str, Document]
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]
    path: Path | None = None


# ---- reading -------------------------------------------------------------------------------------------

def available_splits(path: str | os.PathLike) -> list[str]:
    qrels_dir = Path(path) / "qrels"
    return sorted(p.stem for p in qrels_dir.glob("*.tsv")) if qrels_dir.is_dir() else []


def load_beir(path: str | os.PathLike, split: str = "test") -> BeirData:
    """Read a BEIR folder: the whole corpus, the split's qrels, and the queries those qrels judge."""
    root = Path(path)
    if not root.is_dir():
        raise InputError(f"{root}: no such folder (expected a BEIR dataset folder)")
    for required in ("corpus.jsonl", "queries.jsonl"):
        if not (root / required).is_file():
            raise InputError(f"{root}: not a BEIR dataset folder ({required} is missing)")
    qrels_file = root / "qrels" / f"{split}.tsv"
    if not qrels_file.is_file():
        splits = available_splits(root)
        have = f"splits here: {', '.join(splits)}" if splits else "there is no qrels/*.tsv file at all"
        raise InputError(f"{qrels_file}: no such split {split!r} ({have})")

    qrels = _read_qrels(qrels_file)
    if not qrels:
        raise InputError(f"{qrels_file}: no judgments (the file is empty)")
    corpus = _read_jsonl_records(root / "corpus.jsonl")
    if not corpus:
        raise InputError(f"{root / 'corpus.jsonl'}: no documents (the file is empty)")
    all_queries = _read_jsonl_records(root / "queries.jsonl")
    queries: dict[str, str] = {}
    for qid in qrels:
        if qid not in all_queries:
            raise InputError(f"{qrels_file}: query {qid!r} is judged but not in {root / 'queries.jsonl'}")
        queries[qid] = all_queries[qid].text
    return BeirData(name=root.name, split=split, corpus=corpus, queries=queries, qrels=qrels, path=root)


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    with open(path, "rb") as stream:
        yield from text_lines(stream, str(path))


def _read_jsonl_records(path: Path) -> dict[str, Document]:
    records: dict[str, Document] = {}
    for number, line in _lines(path):
        doc = parse_document(line, str(path), number)
        if doc.id in records:
            raise InputError(f"{path}:{number}: duplicate id {doc.id!r} (first on line {records[doc.id].line})")
        records[doc.id] = doc
    return records


def _read_qrels(path: Path) -> dict[str, dict[str, int]]:
    qrels: dict[str, dict[str, int]] = {}
    for number, line in _lines(path):
        fields = line.split("\t")
        if len(fields) != 3:
            raise InputError(
                f"{path}:{number}: expected 3 tab-separated fields (query-id, corpus-id, score), got {len(fields)}"
            )
        qid, docid, grade_text = (f.strip() for f in fields)
        try:
            grade = int(grade_text)
        except ValueError:
            if number == 1:  # the header line ("query-id  corpus-id  score")
                continue
            raise InputError(f"{path}:{number}: score {grade_text!r} is not an integer") from None
        if not qid or not docid:
            raise InputError(f"{path}:{number}: empty query-id or corpus-id")
        qrels.setdefault(qid, {})[docid] = grade
    return qrels


# ---- finding -------------------------------------------------------------------------------------------

def resolve_beir(name_or_path: str | os.PathLike, cache_dir: str | os.PathLike | None = None,
                 show_progress: bool | None = None) -> Path:
    """A BEIR folder for `name_or_path`: an existing folder as is, or a known dataset name, downloaded once
    into the prorank-edge cache (`cache_dir`, default <cache>/beir)."""
    path = Path(os.path.expanduser(str(name_or_path)))
    if path.is_dir():
        return path
    if path.exists():
        raise InputError(f"{path}: is a file, expected a BEIR dataset folder or a BEIR dataset name")
    name = str(name_or_path)
    if name not in BEIR_DATASETS:
        raise InputError(
            f"{name}: no such folder, and not a BEIR dataset name that can be downloaded "
            f"(known: {', '.join(BEIR_DATASETS)})"
        )
    if cache_dir is None:
        from ..models import cache_dir as prorank_cache_dir

        root = prorank_cache_dir() / "beir"
    else:
        root = Path(cache_dir)
    target = root / name
    # The folder only ever appears by a rename of a complete extraction, so its presence means it is whole.
    if target.is_dir():
        return target
    _download(name, root, target, show_progress)
    return target


def _download(name: str, root: Path, target: Path, show_progress: bool | None) -> None:
    from ..models import ensure_cache_folder

    url = f"{BEIR_BASE_URL.rstrip('/')}/{name}.zip"
    ensure_cache_folder(root)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=root))
    try:
        archive = staging / f"{name}.zip"
        try:
            _fetch(url, archive, show_progress)
        except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", None) or exc
            raise ProrankError(
                f"downloading the BEIR dataset {name!r} from {url} failed ({reason}); "
                f"pass a local BEIR folder with --data DIR"
            ) from None
        extracted = staging / "extracted"
        try:
            with zipfile.ZipFile(archive) as zf:
                zf.extractall(extracted)  # extractall drops absolute paths and '..' parts in member names
        except zipfile.BadZipFile:
            raise ProrankError(f"{url}: the download is not a valid zip file; pass a local BEIR folder with "
                               "--data DIR") from None
        dataset = _find_dataset_folder(extracted)
        if dataset is None:
            raise ProrankError(f"{url}: the archive holds no corpus.jsonl; pass a local BEIR folder with --data DIR")
        if not target.exists():  # another process may have finished first; its copy is as good
            os.replace(dataset, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _fetch(url: str, dest: Path, show_progress: bool | None) -> None:
    from tqdm.auto import tqdm

    with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response, open(dest, "wb") as out:
        total = int(response.headers.get("Content-Length") or 0) or None
        disable = (not sys.stderr.isatty()) if show_progress is None else not show_progress
        with tqdm(total=total, unit="B", unit_scale=True, desc=f"downloading {dest.stem}", file=sys.stderr,
                  disable=disable, leave=False) as bar:
            while chunk := response.read(1 << 20):
                out.write(chunk)
                bar.update(len(chunk))


def _find_dataset_folder(root: Path) -> Path | None:
    """The folder in an extracted archive that holds corpus.jsonl (BEIR zips nest it under the dataset name)."""
    if (root / "corpus.jsonl").is_file():
        return root
    found = sorted(p.parent for p in root.rglob("corpus.jsonl"))
    return found[0] if found else None
