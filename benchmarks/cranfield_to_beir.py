#!/usr/bin/env python
"""Convert the Cranfield test collection (cran.all.1400, cran.qry, cranqrel) to a BEIR folder.

Cranfield (1,400 aeronautics abstracts, 225 queries, graded judgments) is the second collection the built-in
model is measured on: it never saw it in training, and its files are public and small. Where to get them: the
Glasgow IR group's test-collection page (ir.dcs.gla.ac.uk/resources/test_collections/cran/) or any of the many
repositories that carry the three files.

    python benchmarks/cranfield_to_beir.py --raw cranfield_raw/ --output data/cranfield/
    prorank-edge eval --data data/cranfield --split test --top-k 20

Two quirks of the original files, handled here:
- cranqrel numbers the queries 1..225 by their order in cran.qry, not by cran.qry's `.I` ids (which skip
  numbers and end at 365). The BEIR query-id is that position; the `.I` id is kept in the query's metadata.
- Relevance codes are 1 (a complete answer) to 4 (minimum interest), and -1 (in the original scale 5) for
  references of no interest. BEIR wants larger = more relevant, so 1..4 become grades 4..1 and -1 is dropped
  (not relevant, so absent from the qrels). BM25 agrees with that direction: the median BM25 rank of a code-1
  judgment is 8, of a code-4 one 50 (bm25s, stemmed, all 225 queries). Every document is kept, including the
  two (471, 995) with an empty abstract.

Only the standard library; malformed input stops with the file and line.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

# cranqrel code -> BEIR grade (larger = more relevant); codes absent here are "no interest" and dropped.
GRADE_OF_CODE = {1: 4, 2: 3, 3: 2, 4: 1}
NOT_RELEVANT_CODES = {-1, 5}
FIELD_NAMES = {".T": "title", ".A": "author", ".B": "bib", ".W": "text"}


class CranfieldFormatError(ValueError):
    pass


def _records(path: Path, fields: dict[str, str]) -> list[tuple[str, dict[str, str]]]:
    """Split a Cranfield file into (`.I` id, {field: text}) in file order."""
    records: list[tuple[str, dict[str, list[str]]]] = []
    field = None
    for number, raw in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
        line = raw.rstrip()
        if line.startswith(".I"):
            parts = line.split()
            if len(parts) != 2:
                raise CranfieldFormatError(f"{path}:{number}: expected '.I <id>', got {line!r}")
            records.append((parts[1], {name: [] for name in fields.values()}))
            field = None
            continue
        marker = line.split(" ", 1)[0]
        if marker in fields:
            field = fields[marker]
            continue
        if line.startswith(".") and len(marker) == 2 and marker[1].isalpha():
            raise CranfieldFormatError(f"{path}:{number}: unknown field marker {marker!r}")
        if not records:
            if line.strip():
                raise CranfieldFormatError(f"{path}:{number}: text before the first '.I' line")
            continue
        if field is None:
            if line.strip():
                raise CranfieldFormatError(f"{path}:{number}: text outside a field in record {records[-1][0]}")
            continue
        records[-1][1][field].append(line.strip())
    return [(rid, {name: " ".join(lines).strip() for name, lines in body.items()}) for rid, body in records]


def read_corpus(path: Path) -> list[dict]:
    docs = []
    seen: set[str] = set()
    for doc_id, body in _records(path, FIELD_NAMES):
        if doc_id in seen:
            raise CranfieldFormatError(f"{path}: document id {doc_id} appears twice")
        seen.add(doc_id)
        text = body["text"]
        title = body["title"]
        # .W repeats the title as its first sentence; drop the copy so the title is not read twice.
        if title and text.startswith(title):
            text = text[len(title):].strip()
        docs.append({"_id": doc_id, "title": title, "text": text,
                     "metadata": {"author": body["author"], "bib": body["bib"]}})
    return docs


def read_queries(path: Path) -> list[dict]:
    return [{"_id": str(position), "text": body["text"], "metadata": {"cran_qry_id": qid}}
            for position, (qid, body) in enumerate(_records(path, {".W": "text"}), start=1)]


def read_qrels(path: Path, query_ids: set[str], doc_ids: set[str]) -> list[tuple[str, str, int]]:
    qrels: dict[tuple[str, str], int] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        cols = line.split()
        if len(cols) != 3:
            raise CranfieldFormatError(f"{path}:{number}: expected 'query doc code', got {line!r}")
        qid, did, code_text = cols
        try:
            code = int(code_text)
        except ValueError:
            raise CranfieldFormatError(f"{path}:{number}: relevance code {code_text!r} is not an integer") from None
        if qid not in query_ids:
            raise CranfieldFormatError(f"{path}:{number}: query {qid} is not among cran.qry's {len(query_ids)} queries")
        if did not in doc_ids:
            raise CranfieldFormatError(f"{path}:{number}: document {did} is not in cran.all.1400")
        if code in NOT_RELEVANT_CODES:
            continue
        if code not in GRADE_OF_CODE:
            raise CranfieldFormatError(f"{path}:{number}: unknown relevance code {code}")
        # A pair judged twice keeps its highest grade.
        qrels[(qid, did)] = max(qrels.get((qid, did), 0), GRADE_OF_CODE[code])
    return [(qid, did, grade) for (qid, did), grade in qrels.items()]


def convert(raw: Path, output: Path) -> dict:
    docs = read_corpus(raw / "cran.all.1400")
    queries = read_queries(raw / "cran.qry")
    qrels = read_qrels(raw / "cranqrel", {q["_id"] for q in queries}, {d["_id"] for d in docs})
    judged = {qid for qid, _, _ in qrels}
    queries = [q for q in queries if q["_id"] in judged]  # BEIR keeps only queries with a relevant document
    (output / "qrels").mkdir(parents=True, exist_ok=True)
    with open(output / "corpus.jsonl", "w", encoding="utf-8") as f:
        f.writelines(json.dumps(d) + "\n" for d in docs)
    with open(output / "queries.jsonl", "w", encoding="utf-8") as f:
        f.writelines(json.dumps(q) + "\n" for q in queries)
    with open(output / "qrels" / "test.tsv", "w", encoding="utf-8") as f:
        f.write("query-id\tcorpus-id\tscore\n")
        f.writelines(f"{qid}\t{did}\t{grade}\n" for qid, did, grade in qrels)
    return {"documents": len(docs), "queries": len(queries), "qrels": len(qrels), "output": str(output)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--raw", required=True, type=Path, help="folder with cran.all.1400, cran.qry, cranqrel")
    parser.add_argument("--output", required=True, type=Path, help="BEIR folder to write")
    args = parser.parse_args(argv)
    for name in ("cran.all.1400", "cran.qry", "cranqrel"):
        if not (args.raw / name).is_file():
            print(f"error: {args.raw / name} not found", file=sys.stderr)
            return 2
    try:
        summary = convert(args.raw, args.output)
    except CranfieldFormatError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
