"""`prorank-edge batch`: rerank many queries' candidates offline, in one process, N processes, or on Ray.

The input is read and validated whole, then cut into shards of consecutive queries (shard k holds valid queries
[k*S, (k+1)*S) in input order), so every engine and worker count scores the same shards. Each finished shard is
renamed into `<output>.shards/` beside a manifest; `--resume` skips the shards already there, and the final
output is the shards merged in order. `inputs` reads JSONL, Parquet and TREC runs, `outputs` writes shards and
merges them, `local` and `ray_engine` score shards, `job` ties them together.
"""
