"""The retrieval funnel as a batch job on Ray Data: queries Parquet in, every stage's ranking out.

1. The config is validated, the corpus checked and the queries read (bad rows to `_errors/` with a
   reason) before any work. Indexes a dense or late-interaction stage names are built first when
   missing, by their own resumable jobs (`rayrank dense-index`, `rayrank index`) over the corpus as
   the funnel reads it (titles joined), staged at `OUTPUT/_staging/corpus.parquet`.
2. The valid queries are cut into shards of `shard_queries`; an autoscaling pool of actors, each
   holding every stage (rayrank.funnel.stages.Funnel), runs a shard through the funnel and publishes,
   by rename, `stages/NAME/part-NNNNN.parquet` for each stage and the final `part-NNNNN.parquet`
   (with `stage_ranks`), then commits the shard's marker (rayrank.jobs._output.JobOutput).
3. The manifest, written last, has per-stage counts, seconds and queries/s. A rerun after a kill
   skips committed shards; a shard re-run rewrites the same files, so no query appears twice.

Usage: `rayrank funnel QUERIES OUTPUT --config FILE` or `python -m rayrank.jobs.funnel ...`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import threading
from typing import Any

import numpy as np
import pyarrow as pa

from rayrank.cli import command
from rayrank.config import Columns, IndexJobConfig
from rayrank.funnel.config import DenseStage, FunnelConfig, LateInteractionStage, RerankStage, load_funnel_config
from rayrank.io.storage import filesystem, join, list_parquet, read_json, storage_options, write_parquet_atomic
from rayrank.io.tables import QUERY_KEYS, read_unique
from rayrank.jobs._output import JobOutput, steady_rate
from rayrank.jobs._phases import Phases
from rayrank.jobs._shards import UnitActor, actor_config, claim, finish, run_units

RESULT_FIELDS = [("query_id", pa.string()), ("doc_id", pa.string()), ("score", pa.float32()), ("rank", pa.int32())]


def parse_args(argv: list[str] | None) -> tuple[FunnelConfig, str, str]:
    parser = argparse.ArgumentParser(prog="rayrank funnel", description=__doc__.split("\n\n")[0])
    parser.add_argument("input", help="QUERIES: Parquet with query_id, query (local or s3://)")
    parser.add_argument("output", help="OUTPUT directory (local or s3://)")
    parser.add_argument("--config", required=True, help="funnel YAML (see configs/funnel.scifact.yaml)")
    parser.add_argument("--actors", help="MIN,MAX actors (autoscaling pool), e.g. 1,2")
    parser.add_argument("--address", help="Ray address: 'auto' joins a running cluster; default starts a local Ray")
    parser.add_argument("--overwrite", action="store_true", help="replace an OUTPUT holding another job's results")
    args = parser.parse_args(argv)
    config = load_funnel_config(args.config)
    cluster = {k: v for k, v in {"address": args.address, "actors": args.actors}.items() if v is not None}
    if cluster or args.overwrite:
        data = config.model_dump()
        data["cluster"].update(cluster)
        data["overwrite"] = data["overwrite"] or args.overwrite
        config = FunnelConfig.model_validate(data)
    return config, args.input, args.output


def ranking_table(query_ids: list[str], rankings: list) -> pa.Table:
    """One stage's rankings in the rerank output layout: query_id, doc_id, score, rank (1 = best)."""
    return pa.table({
        "query_id": pa.array([q for q, r in zip(query_ids, rankings) for _ in r.doc_ids], pa.string()),
        "doc_id": pa.array([d for r in rankings for d in r.doc_ids], pa.string()),
        "score": pa.array(np.concatenate([r.scores for r in rankings] or [np.empty(0)]), pa.float32()),
        "rank": pa.array([i for r in rankings for i in range(1, len(r.doc_ids) + 1)], pa.int32()),
    }, schema=pa.schema(RESULT_FIELDS))


def with_stage_ranks(final: pa.Table, query_ids: list[str], earlier: dict[str, list]) -> pa.Table:
    """`stage_ranks`: a struct with each earlier stage's rank of the document (null where it did not list it)."""
    if not earlier:
        return final
    position = {q: i for i, q in enumerate(query_ids)}
    lookup = {name: [dict(zip(r.doc_ids, range(1, len(r.doc_ids) + 1))) for r in rankings]
              for name, rankings in earlier.items()}
    pairs = list(zip(final["query_id"].to_pylist(), final["doc_id"].to_pylist()))
    fields = {name: pa.array([ranks[position[q]].get(d) for q, d in pairs], pa.int32())
              for name, ranks in lookup.items()}
    return final.append_column("stage_ranks", pa.StructArray.from_arrays(list(fields.values()), list(fields)))


class ShardFunnel(UnitActor):
    """Ray Data actor: builds every stage once, then runs whole shards of queries through them.

    Ray Data runs several shard calls at once here (jobs/_ray.py); they take turns through the stages,
    which share models, tokenizers and indexes, and overlap only in writing their results.
    """

    def __init__(self, config: dict, output: str, out_options: dict) -> None:
        from rayrank.funnel.stages import Funnel

        super().__init__(output, out_options)
        self.funnel = Funnel(FunnelConfig.model_validate(config))
        self._turn = threading.Lock()

    def work(self, unit: dict[str, Any], phases: Phases) -> dict[str, Any]:
        out, name = self.out, f"part-{unit['ordinal']:05d}.parquet"
        with self._turn:
            result = self.funnel.run(unit["queries"])
        qids = unit["query_ids"]
        with phases.timed("write_s"):
            for stage, rankings in result.rankings.items():
                write_parquet_atomic(ranking_table(qids, rankings), out.fs, out.path("stages", stage, name))
            final = self.funnel.final
            earlier = {n: r for n, r in result.rankings.items() if n != final}
            write_parquet_atomic(with_stage_ranks(ranking_table(qids, result.rankings[final]), qids, earlier),
                                 out.fs, out.path(name))
        return {"shard": unit["shard_id"], "queries": len(qids),
                "stages": json.dumps({n: {"seconds": result.seconds[n], "rows": sum(len(r.doc_ids) for r in rs),
                                          "counts": result.counts[n]} for n, rs in result.rankings.items()})}


def plan_query_shards(query_ids: list[str], queries: list[str], size: int) -> dict[str, str]:
    """{shard id: unit} of consecutive runs of `size` queries; a shard's id hashes its query ids, so a rerun
    finds it."""
    shards = {}
    for ordinal, start in enumerate(range(0, len(query_ids), size)):
        ids = query_ids[start:start + size]
        shard_id = hashlib.sha1("\n".join(ids).encode()).hexdigest()[:16]
        shards[shard_id] = json.dumps({"ordinal": ordinal, "shard_id": shard_id, "query_ids": ids,
                                       "queries": queries[start:start + size]})
    return shards


def build_missing_indexes(config: FunnelConfig, out: JobOutput) -> dict[str, str]:
    """Build every index a stage names that has no finished manifest; returns stage name → what was done."""
    from rayrank.jobs import dense_index, index

    from rayrank.funnel.corpus import load_corpus

    built: dict[str, str] = {}
    corpus_path = out.stage("corpus.parquet")
    for stage in config.stages:
        path = getattr(stage, "index", None)
        if not isinstance(stage, (DenseStage, LateInteractionStage, RerankStage)) or not path:
            continue
        fs, root = filesystem(path, storage_options(config.storage, path))
        if read_json(fs, join(root, "_manifest.json")) is not None:
            built[stage.name] = "reused"
            continue
        if not out.fs.exists(corpus_path):
            write_parquet_atomic(load_corpus(config.corpus, config.storage).table(), out.fs, corpus_path)
        print(f"[funnel] stage {stage.name}: building its missing index {path}", file=sys.stderr)
        if isinstance(stage, DenseStage):
            dense_index.run(dense_index.DenseIndexConfig(
                input=corpus_path, output=path, model=stage.model, max_length=stage.max_length,
                batch_size=stage.batch_size, cluster=config.cluster, storage=config.storage))
        else:
            index.run(IndexJobConfig(input=corpus_path, output=path, engine=stage.engine, cluster=config.cluster,
                                     storage=config.storage))
        built[stage.name] = "built"
    return built


def run(config: FunnelConfig, queries_path: str, output: str) -> dict[str, Any]:
    """Run (or resume) the funnel over QUERIES into OUTPUT and return the manifest."""
    in_fs, in_root = filesystem(queries_path, storage_options(config.storage, queries_path))
    files = list_parquet(in_fs, in_root)
    queries, errors, rows_in = read_unique(in_fs, files, Columns(), QUERY_KEYS, "query_id")
    out_options = storage_options(config.storage, output)
    identity = {"kind": "funnel", "inputs": [(f, in_fs.size(f)) for f in files],
                **config.model_dump(include={"corpus", "stages", "shard_queries"})}
    job = claim("funnel", output, out_options, identity, {"shard_queries": config.shard_queries}, config.overwrite)
    if job.finished is not None:
        return job.finished
    if errors.num_rows:
        write_parquet_atomic(errors, job.out.fs, job.out.path("_errors", "invalid-queries.parquet"))

    from rayrank.funnel.stages import check_stages
    from rayrank.jobs._ray import connect

    check_stages(config)  # here, not in every actor that builds the stages
    connect(config.cluster.address)
    indexes = build_missing_indexes(config, job.out)
    shards = plan_query_shards(queries["query_id"].to_pylist(), queries["query"].to_pylist(),
                               job.state["shard_queries"])
    kwargs = {"config": actor_config(config), "output": output, "out_options": out_options}
    ran = run_units(job, "funnel", shards, ShardFunnel, config.cluster, kwargs, "queries", "queries")
    manifest = {
        "kind": "funnel", "input": queries_path, "output": output, "final_stage": config.stages[-1].name,
        "counts": {"rows_in": rows_in, "queries": queries.num_rows, "rows_rejected": errors.num_rows,
                   "queries_reused": ran.reused, "shards": len(shards)},
        "stages": stage_totals(config, list(ran.done.values()), queries.num_rows, indexes),
    }
    return finish(job, config, manifest, funnel_s=round(ran.seconds, 3),
                  steady_queries_per_s=steady_rate(ran.this_run, "queries"))


def stage_totals(config: FunnelConfig, shards: list[dict], queries: int, indexes: dict[str, str]) -> dict[str, dict]:
    """The manifest's per-stage rows, seconds, queries/s and counts, summed over the shards' markers."""
    stages = {}
    for stage in config.stages:
        per_shard = [json.loads(d["stages"])[stage.name] for d in shards]
        seconds = sum(s["seconds"] for s in per_shard)
        counts: dict[str, int] = {}
        for s in per_shard:
            for key, value in s["counts"].items():
                counts[key] = counts.get(key, 0) + int(value)
        stages[stage.name] = {"kind": stage.kind, "k": stage.k, "rows": sum(int(s["rows"]) for s in per_shard),
                              "seconds": round(seconds, 3),
                              "queries_per_s": round(queries / seconds, 2) if seconds else None, "counts": counts,
                              **({"index": indexes[stage.name]} if stage.name in indexes else {})}
    return stages


def summary(manifest: dict[str, Any]) -> str:
    c, t = manifest["counts"], manifest["timings"]
    lines = [f"rayrank funnel: {manifest['output']}",
             f"  queries        {c['queries']:,}  (reused from an earlier run: {c['queries_reused']:,}); "
             f"{c['rows_rejected']:,} rows rejected (see {join(manifest['output'], '_errors')})",
             f"  {'stage':<16} {'kind':<17} {'k':>5} {'rows':>9} {'seconds':>9} {'queries/s':>10}"]
    for name, s in manifest["stages"].items():
        rate = f"{s['queries_per_s']:,.1f}" if s["queries_per_s"] else "-"
        lines.append(f"  {name:<16} {s['kind']:<17} {s['k']:>5} {s['rows']:>9,} {s['seconds']:>9.1f} {rate:>10}")
    lines.append(f"  elapsed        {t['elapsed_s']:.1f} s; final stage {manifest['final_stage']!r} in part-*.parquet, "
                 "each stage in stages/NAME/")
    return "\n".join(lines)


@command("funnel")
def main(argv: list[str] | None = None) -> int:
    print(summary(run(*parse_args(argv))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
