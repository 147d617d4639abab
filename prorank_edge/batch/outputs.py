"""Shards on disk and the merged output.

`<output>.shards/` holds `manifest.json` (the input's fingerprint and the scoring options) and one
`shard-00007.jsonl` per finished shard. A shard file only ever appears by renaming a complete one into place
(`staging.staged`), so a file that is there is whole: a crash or Ctrl-C loses at most the shards in flight,
and `--resume` scores only the missing ones. Merging checks every shard against the queries it should hold, so
a pair can be neither lost nor written twice.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ..errors import ProrankError
from ..staging import make_parent, staged
from .inputs import QueryTask, import_pyarrow

OUTPUT_FIELDS = ("query_id", "doc_id", "rank", "score", "rerank_score", "first_stage_score")
OUTPUT_FORMATS = ("jsonl", "parquet")
MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = "prorank-edge-batch-shards/1"
_SHARD_NAME = re.compile(r"shard-\d{5,}\.jsonl")


@dataclass
class Shard:
    """Valid queries [index * size, (index + 1) * size) of the input, in input order."""

    index: int
    tasks: list[QueryTask]

    @property
    def pairs(self) -> int:
        return sum(len(t.candidates) for t in self.tasks)


def make_shards(tasks: list[QueryTask], size: int) -> list[Shard]:
    """Fixed runs of `size` queries: the same input and size give the same shards, whatever the engine."""
    if size < 1:
        raise ProrankError("the shard size must be at least 1 query")
    return [Shard(k, tasks[start:start + size]) for k, start in enumerate(range(0, len(tasks), size))]


def output_format(path: Path, given: str = "auto") -> str:
    if given != "auto":
        return given
    return "parquet" if path.suffix.lower() in (".parquet", ".pq") else "jsonl"


def shards_folder(output: Path) -> Path:
    return output.with_name(output.name + ".shards")


def shard_path(folder: Path, index: int) -> Path:
    return folder / f"shard-{index:05d}.jsonl"


class ShardStore:
    """The shard folder of one job: opened fresh or resumed against its manifest, then written shard by shard."""

    def __init__(self, folder: Path, manifest: dict):
        self.folder = folder
        self.manifest = {"format": MANIFEST_FORMAT, **manifest}

    def open(self, resume: bool) -> set[int]:
        """The shard indices already done (only when resuming); (re)writes the manifest when none are.

        A folder that holds no finished shard has nothing to lose, so it is started afresh either way (e.g. a
        job that failed on a wrong --model before its first shard).
        """
        manifest_file = self.folder / MANIFEST_NAME
        finished = sorted(p for p in _entries(self.folder) if _SHARD_NAME.fullmatch(p.name))
        if not finished:
            _write_atomic(manifest_file, json.dumps(self.manifest, indent=2, ensure_ascii=False) + "\n")
            return set()
        if not resume:
            raise ProrankError(f"{self.folder}: holds {len(finished)} finished shards of an earlier job; pass "
                               "--resume to finish it, or remove the folder to start over")
        try:
            previous = json.loads(manifest_file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ProrankError(f"{manifest_file}: unreadable ({exc}); remove {self.folder} to start over") from None
        differences = _differences(previous, self.manifest)
        if differences:
            raise ProrankError(f"{self.folder}: cannot resume, the job differs from the one that wrote these "
                               f"shards ({'; '.join(differences)}); rerun it as it was, or remove the folder "
                               "to start over")
        return {k for k in range(self.manifest["shards"]) if shard_path(self.folder, k).is_file()}

    def write(self, index: int, rows: list[dict]) -> None:
        _write_atomic(shard_path(self.folder, index),
                      "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))

    def rows(self, shard: Shard) -> list[dict]:
        """A finished shard's rows, checked against its queries: each candidate once, ranks 1..n, in query order."""
        path = shard_path(self.folder, shard.index)
        try:
            rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
        except (OSError, ValueError) as exc:
            raise ProrankError(f"{path}: unreadable shard ({exc}); remove it and run again with --resume") from None
        expected = [(t.query_id, d.id) for t in shard.tasks for d in t.candidates]
        start = 0
        for task in shard.tasks:
            block = rows[start:start + len(task.candidates)]
            start += len(task.candidates)
            if (sorted(r.get("doc_id") for r in block) != sorted(d.id for d in task.candidates)
                    or any(r.get("query_id") != task.query_id for r in block)
                    or [r.get("rank") for r in block] != list(range(1, len(block) + 1))):
                break
        else:
            if len(rows) == len(expected):
                return rows
        raise ProrankError(f"{path}: does not hold exactly the pairs of shard {shard.index} ({len(rows)} rows, "
                           f"{len(expected)} expected); remove it and run again with --resume")

    def merge(self, shards: list[Shard], output: Path, fmt: str, trec_out: Path | None = None) -> int:
        """Write the shards in order to `output` (and a TREC run), each renamed into place whole; returns rows."""
        make_parent(output)
        if trec_out is not None:
            make_parent(trec_out)
        with staged(output) as partial_output:
            writer = _ParquetRows(partial_output) if fmt == "parquet" else _JsonlRows(partial_output)
            run: dict[str, dict[str, float]] = {}
            count = 0
            try:
                for shard in shards:
                    rows = self.rows(shard)
                    writer.write(rows)
                    count += len(rows)
                    if trec_out is not None:
                        for row in rows:
                            run.setdefault(row["query_id"], {})[row["doc_id"]] = row["score"]
            finally:
                writer.close()
            if trec_out is not None:
                from ..evaluation.metrics import write_trec_run

                with staged(trec_out) as partial_run:
                    write_trec_run(partial_run, run, tag="prorank-edge-batch")
                    os.replace(partial_run, trec_out)
            os.replace(partial_output, output)
        return count

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def _entries(folder: Path) -> Iterator[Path]:
    try:
        yield from folder.iterdir()
    except OSError:
        return


def _differences(previous: dict, current: dict) -> list[str]:
    out = []
    if previous.get("format") != current["format"]:
        out.append(f"shard format {previous.get('format')!r}, now {current['format']!r}")
    if previous.get("input", {}).get("sha256") != current["input"]["sha256"]:
        out.append("the input files changed")
    elif previous.get("queries_sha256") != current["queries_sha256"]:
        out.append("other queries passed validation (--trec-out refuses ids with whitespace)")
    if previous.get("shard_size") != current["shard_size"]:
        out.append(f"--shard-size was {previous.get('shard_size')}, now {current['shard_size']}")
    old, new = previous.get("options", {}), current["options"]
    for key in sorted(set(old) | set(new)):
        if old.get(key) != new.get(key):
            out.append(f"{key} was {old.get(key)!r}, now {new.get(key)!r}")
    return out


def _write_atomic(target: Path, text: str) -> None:
    with staged(target, what="shard") as partial:
        with open(partial, "w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            # A renamed shard must be on disk before the job counts it as done: after a power cut a resume
            # would otherwise find a whole-looking but empty file.
            os.fsync(out.fileno())
        os.replace(partial, target)


class _JsonlRows:
    def __init__(self, path: Path):
        self._out = open(path, "w", encoding="utf-8")

    def write(self, rows: list[dict]) -> None:
        self._out.writelines(json.dumps({k: r[k] for k in OUTPUT_FIELDS}, ensure_ascii=False) + "\n" for r in rows)

    def close(self) -> None:
        self._out.close()


class _ParquetRows:
    """One row group per shard, so a merge never holds more than one shard's rows."""

    def __init__(self, path: Path):
        pa, pq = import_pyarrow("Parquet output")
        self._pa = pa
        self.schema = pa.schema([("query_id", pa.string()), ("doc_id", pa.string()), ("rank", pa.int32()),
                                 ("score", pa.float64()), ("rerank_score", pa.float64()),
                                 ("first_stage_score", pa.float64())])
        self._writer = pq.ParquetWriter(str(path), self.schema)

    def write(self, rows: list[dict]) -> None:
        if rows:
            columns = {name: [r[name] for r in rows] for name in OUTPUT_FIELDS}
            self._writer.write_table(self._pa.table(columns, schema=self.schema))

    def close(self) -> None:
        self._writer.close()


def read_output(path: Path) -> list[dict]:
    """A batch output (JSONL or Parquet) as rows, in file order."""
    if output_format(path) == "parquet":
        _, pq = import_pyarrow("Parquet output")
        return pq.read_table(str(path)).to_pylist()
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
