"""The benchmark harness (installed as `prorank_edge.benchmarks`; needs the `bench` extra): `harness` runs every
variant in its own `worker` process on the same BEIR pairs, `report` writes the tables and the chart.
`run_bench.py` beside it is the script behind the figures of docs/benchmarks.md; `results/` holds them (not installed).
"""
