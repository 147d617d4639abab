"""`prorank-edge batch`: rerank many queries' candidates offline, locally or on Ray, resumable shard by shard."""

from __future__ import annotations

import json

import click

from ..errors import ProrankError
from .options import model_options

# Bad queries named in the final error line; the JSON summary lists all of them.
SKIPPED_IN_MESSAGE = 3


@click.command("batch")
@click.option("--input", "-i", "input_path", default=None, metavar="FILE",
              help="JSONL (one {\"query_id\", \"query\", \"candidates\": [{\"id\", \"text\", \"title\"?, \"score\"?}]} "
                   "per line) or Parquet (.parquet) with the same fields as columns.")
@click.option("--input-format", type=click.Choice(["auto", "jsonl", "parquet"]), default="auto", show_default=True,
              help="auto: Parquet for a .parquet/.pq name, else JSONL.")
@click.option("--run", "run_path", default=None, metavar="RUN",
              help="Instead of --input: a TREC run (qid Q0 docid rank score tag) whose documents are reranked; "
                   "its scores become first-stage scores. Needs --data.")
@click.option("--data", "data_dir", default=None, metavar="DIR",
              help="With --run: the BEIR folder whose corpus.jsonl and queries.jsonl hold the texts.")
@click.option("--output", "-o", "output_path", required=True, metavar="FILE",
              help="Rows {query_id, doc_id, rank, score, rerank_score, first_stage_score}, query by query, best "
                   "first. Finished shards go to FILE.shards/ until the job is done.")
@click.option("--output-format", type=click.Choice(["auto", "jsonl", "parquet"]), default="auto", show_default=True,
              help="auto: Parquet for a .parquet/.pq name, else JSONL.")
@click.option("--trec-out", default=None, metavar="FILE", help="Also write a TREC run of the final scores.")
@click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="local: this process, or --workers processes on this machine; ray: a ray.data actor pool.")
@click.option("--ray-address", default=None, metavar="ADDR",
              help="An existing Ray cluster (e.g. ray://head:10001 or auto). Default: a local Ray instance.")
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True,
              help="Processes (local) or actors (ray), each loading the model once.")
@click.option("--shard-size", type=click.IntRange(min=1), default=None, metavar="N",
              help="Queries per shard, the unit of work, of atomic output and of --resume. [default: 32]")
@click.option("--resume", is_flag=True,
              help="Finish a job that was interrupted: the shards already in FILE.shards/ are kept, the rest scored. "
                   "Refused if the input or scoring options differ.")
@click.option("--keep-shards", is_flag=True, help="Keep FILE.shards/ after the merge.")
@click.option("--instruction", default=None, help="Optional task instruction placed before each query.")
@click.option("--normalize/--raw", default=False, show_default=True,
              help="Sigmoid-normalized scores in [0, 1] instead of raw logit differences.")
@click.option("--fusion-weight", type=click.FloatRange(0.0, 1.0), default=None, metavar="W",
              help="Blend with the candidates' first-stage score: W x reranker + (1 - W) x first stage, each "
                   "min-max normalized per query; every candidate needs a score (queries without are skipped). "
                   "Default: the model's own weight for queries whose candidates all have scores.")
@click.option("--progress/--no-progress", default=None,
              help="The pairs/s and ETA bar on stderr. Default: only on a terminal.")
@click.option("--quiet", is_flag=True, help="No progress bar or status lines on stderr.")
@model_options
def batch_command(input_path, input_format, run_path, data_dir, output_path, output_format, trec_out, engine,
                  ray_address, workers, shard_size, resume, keep_shards, instruction, normalize, fusion_weight,
                  progress, quiet, model, backend, device, dtype, max_length, batch_size, threads, prefix_cache):
    """Rerank every query's candidates in a file and write one row per pair, plus a JSON summary on stdout.

    The input is validated first; a bad query is reported by line and id, left out, and the job scores the
    rest, then exits with status 2. Shards of --shard-size queries are scored once each and written
    atomically, so a job stopped by a crash, Ctrl-C or SIGTERM loses only the shards in flight and
    --resume finishes it with the same output an uninterrupted run gives.

    \b
    Examples:
      prorank-edge batch -i queries.jsonl -o ranked.jsonl --model ./my-reranker --workers 2
      prorank-edge batch --run bm25.trec --data ./beir/scifact -o ranked.parquet --trec-out ranked.trec
      prorank-edge batch -i queries.parquet -o ranked.parquet --engine ray --workers 8 --ray-address auto
    """
    from pathlib import Path

    from ..batch.inputs import input_spec
    from ..batch.job import DEFAULT_SHARD_SIZE, BatchJob, run_job
    from ..batch.outputs import output_format as pick_format
    from ..batch.scoring import ScoringSpec

    if ray_address and engine != "ray":
        raise ProrankError("--ray-address needs --engine ray")
    if instruction and not instruction.strip():
        raise ProrankError("--instruction is empty")

    def status(message: str) -> None:
        if not quiet:
            click.echo(f"prorank-edge: {message}", err=True)

    output = Path(output_path)
    job = BatchJob(
        input=input_spec(input_path, run_path, data_dir, input_format),
        output=output,
        output_format=pick_format(output, output_format),
        trec_out=Path(trec_out) if trec_out else None,
        spec=ScoringSpec(model=model, backend=backend, device=device, dtype=dtype, max_length=max_length,
                         batch_size=batch_size, threads=threads, prefix_cache=prefix_cache, instruction=instruction,
                         normalize=normalize,
                         fusion_weight=fusion_weight),
        engine=engine, workers=workers, ray_address=ray_address, shard_size=shard_size or DEFAULT_SHARD_SIZE,
        resume=resume, keep_shards=keep_shards, progress=False if quiet else progress,
    )
    summary = run_job(job, status)
    click.echo(json.dumps(summary, indent=2, ensure_ascii=False))
    skipped = summary["skipped"]
    if skipped:
        named = "; ".join(f"{s['where']}" + (f" (query {s['query_id']!r})" if s["query_id"] is not None else "")
                          + f": {s['reason']}" for s in skipped[:SKIPPED_IN_MESSAGE])
        more = f"; and {len(skipped) - SKIPPED_IN_MESSAGE} more" if len(skipped) > SKIPPED_IN_MESSAGE else ""
        raise ProrankError(f"skipped {len(skipped)} bad input {'entry' if len(skipped) == 1 else 'entries'} "
                           f"(listed under \"skipped\" in the summary), scored the other {summary['queries']} "
                           f"queries: {named}{more}")
