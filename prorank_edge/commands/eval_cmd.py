"""`prorank-edge eval`: BM25 and ProRank reranking metrics on a BEIR dataset."""

from __future__ import annotations

import json

import click

from ..errors import ProrankError
from .options import load_reranker, model_options


@click.command("eval")
@click.option("--data", "data_spec", required=True, metavar="DIR_OR_NAME",
              help="A BEIR dataset folder, or a BEIR dataset name (e.g. scifact) to download once into the cache.")
@click.option("--split", default="test", show_default=True, help="The qrels split (qrels/SPLIT.tsv).")
@click.option("--bm25-only", is_flag=True, help="Evaluate the BM25 first stage alone; needs no model.")
@click.option("--run", "run_path", type=click.Path(dir_okay=False), default=None, metavar="RUN",
              help="Evaluate an existing TREC run (e.g. `prorank-edge batch --trec-out`) against the split's "
                   "qrels instead of running BM25 and a model; Recall is at --top-k.")
@click.option("--baseline", "baseline_path", type=click.Path(dir_okay=False), default=None, metavar="RUN",
              help="With --run: a second TREC run of the same queries to compare with, query by query: the mean "
                   "difference of each metric with a 95% bootstrap interval and a paired randomization test's p.")
@click.option("--top-k", type=click.IntRange(min=1), default=100, show_default=True,
              help="BM25 candidates per query (what the reranker reorders, and the Recall@k depth).")
@click.option("--max-queries", type=click.IntRange(min=1), default=None,
              help="Only the split's first N queries (in qrels file order).")
@click.option("--instruction", default=None, help="A task instruction for the prompt template.")
@click.option("--fusion-weight", default=None, metavar="W|auto",
              help="Also report BM25 + reranker fusion: W x reranker + (1 - W) x BM25 (each min-max normalized "
                   "per query). 'auto' picks W on --tune-split, never on the evaluated split. Default: the "
                   "model's own weight where its contract has one (the built-in model does).")
@click.option("--tune-split", default="train", show_default=True, help="Split that --fusion-weight auto tunes on.")
@click.option("--tune-queries", type=click.IntRange(min=1), default=50, show_default=True,
              help="Queries of --tune-split used by --fusion-weight auto.")
@click.option("--output", type=click.Choice(["table", "json"]), default="table", show_default=True)
@click.option("--run-file", type=click.Path(dir_okay=False, writable=True), default=None,
              help="Write a system's run here in TREC format (--run-system; by default the last one: fusion, "
                   "reranker, or BM25 with --bm25-only), e.g. for a later `eval --run ... --baseline ...`.")
@click.option("--run-system", type=click.Choice(["bm25", "reranker", "fusion"]), default=None,
              help="Which system --run-file writes.")
@click.option("--quiet", is_flag=True, help="No progress bars or status lines on stderr.")
@model_options
def eval_command(data_spec, split, bm25_only, run_path, baseline_path, top_k, max_queries, instruction,
                 fusion_weight, tune_split, tune_queries, output, run_file, run_system, quiet, model, backend,
                 device, dtype, max_length, batch_size, threads, prefix_cache):
    """Evaluate BM25 and a ProRank reranker on a BEIR dataset split.

    BM25 (Lucene variant, k1=1.5, b=0.75, English stopwords and stemming) retrieves the top --top-k
    documents of the whole corpus for each judged query; the reranker then reorders those candidates.
    Prints nDCG@10, MRR@10 and Recall@top-k (trec_eval semantics) for each system side by side; every
    query of the split counts.

    \b
    Examples:
      prorank-edge eval --data scifact --bm25-only
      prorank-edge eval --data ./beir/nfcorpus --model ./my-reranker --max-queries 100 --output json
      prorank-edge eval --data scifact --top-k 20 --fusion-weight auto
      prorank-edge eval --data scifact --run reranked.trec --baseline bm25.trec

    With a model, each system is also compared with BM25 query by query (nDCG@10: mean difference, 95%
    bootstrap interval, randomization-test p, queries won and lost), since on a few hundred queries a lead of
    0.01-0.03 can be the draw of queries.
    """
    from ..evaluation.beir import load_beir, resolve_beir
    from ..evaluation.evaluate import evaluate_reranker, evaluate_with_fusion
    from ..evaluation.metrics import write_trec_run

    if bm25_only and (model is not None or fusion_weight is not None):
        raise ProrankError("--bm25-only evaluates BM25 alone; leave out --model and --fusion-weight")
    if run_path is not None and (bm25_only or model is not None or fusion_weight is not None):
        raise ProrankError("--run evaluates a run file alone; leave out --bm25-only, --model and --fusion-weight")
    if run_system is not None and run_file is None:
        raise ProrankError("--run-system picks the run that --run-file writes: give --run-file too")
    if bm25_only and run_system not in (None, "bm25"):
        raise ProrankError(f"--bm25-only has no {run_system} run to write")
    if baseline_path is not None and run_path is None:
        raise ProrankError("--baseline compares two run files: give the other one with --run")
    weight = _parse_weight(fusion_weight)
    show_progress = False if quiet else None

    def status(message: str) -> None:
        if not quiet:
            click.echo(f"prorank-edge: {message}", err=True)

    path = resolve_beir(data_spec, show_progress=show_progress)
    data = load_beir(path, split)
    if run_path is not None:
        _print_run_metrics(run_path, data, top_k, max_queries, output, baseline_path)
        return
    subset = f" (evaluating the first {max_queries})" if max_queries and max_queries < len(data.queries) else ""
    status(f"{data.name} ({split}): {len(data.corpus)} documents, {len(data.queries)} judged queries{subset}")

    if bm25_only:
        report = evaluate_reranker(data, None, top_k=top_k, max_queries=max_queries, show_progress=show_progress)
    else:
        tune_data = load_beir(path, tune_split) if weight == "auto" else None
        with load_reranker(model, backend, device, dtype, max_length, batch_size, threads,
                       prefix_cache) as reranker:
            report = evaluate_with_fusion(data, reranker, top_k=top_k, max_queries=max_queries,
                                          instruction=instruction, fusion_weight=weight, tune_data=tune_data,
                                          tune_queries=tune_queries, show_progress=show_progress, status=status)

    if run_file:
        name = run_system or list(report.runs)[-1]
        if name not in report.runs:
            raise ProrankError(f"--run-system {name}: this evaluation has no {name} run (it has "
                               f"{', '.join(report.runs)})")
        write_trec_run(run_file, report.runs[name], tag=f"prorank-edge-{name}")
        status(f"wrote the {name} run to {run_file}")
    if output == "json":
        click.echo(json.dumps(report.to_dict(), indent=2))
    else:
        click.echo(report.format_table())
        if report.fusion:
            source = report.fusion.get("from") or (f"tuned on {report.fusion['tuned_on']}"
                                                   if "tuned_on" in report.fusion else "given")
            click.echo(f"fusion weight {report.fusion['weight']} ({source})")


def _parse_weight(value):
    if value is None or value == "auto":
        return value
    try:
        weight = float(value)
    except ValueError:
        raise ProrankError(f"--fusion-weight must be a number between 0 and 1, or auto; got {value!r}") from None
    if not 0.0 <= weight <= 1.0:
        raise ProrankError(f"--fusion-weight must be between 0 and 1, got {weight}")
    return weight


def _print_run_metrics(run_path, data, top_k: int, max_queries: int | None, output: str,
                       baseline_path=None) -> None:
    from ..evaluation.metrics import evaluate_run, metric_label, read_trec_run
    from ..evaluation.significance import describe_comparison, paired_comparison

    qids = list(data.queries)[:max_queries]
    qrels = {q: data.qrels[q] for q in qids}

    def score(path) -> tuple[dict, dict]:
        run = read_trec_run(path)
        # Every judged query counts (one the run lacks scores 0), as trec_eval does.
        result = evaluate_run(qrels, {q: run.get(q, {}) for q in qids}, k_values=(10,), recall_k=top_k)
        return run, result

    run, result = score(run_path)
    unjudged = sorted(set(run) - set(data.qrels))
    summary = {"dataset": data.name, "split": data.split, "run": str(run_path), "queries": len(qids),
               "queries_in_run": len(set(run) & set(qids)), "unjudged_queries_in_run": len(unjudged),
               "metrics": result["mean"]}
    lines = [f"{data.name} ({data.split}): {len(qids)} judged queries, {summary['queries_in_run']} of them in "
             f"{run_path}", "  ".join(f"{metric_label(k)} {v:.4f}" for k, v in result["mean"].items())]
    if baseline_path is not None:
        other, baseline = score(baseline_path)
        comparisons = {key: paired_comparison(result["per_query"][key], baseline["per_query"][key])
                       for key in result["per_query"]}
        summary["baseline"] = {"run": str(baseline_path), "queries_in_run": len(set(other) & set(qids)),
                               "metrics": baseline["mean"], "comparison": comparisons}
        lines += [f"baseline {baseline_path} ({summary['baseline']['queries_in_run']} of the queries): "
                  + "  ".join(f"{metric_label(k)} {v:.4f}" for k, v in baseline["mean"].items())]
        lines += [describe_comparison("run", "baseline", metric_label(key), comparison)
                  for key, comparison in comparisons.items()]
    click.echo(json.dumps(summary, indent=2) if output == "json" else "\n".join(lines))
