"""`rayrank finetune`: train a cross-encoder reranker (BCE, MSE on teacher scores, pairwise margin, or listwise).

One worker trains in this process; `--workers N` trains data-parallel on Ray Train (TorchTrainer),
each worker running the same `rayrank.lab.train.train` on its share of every batch.

Usage: `rayrank finetune OUTPUT --config configs/lab.finetune.scifact.yaml` or with flags, e.g.
`rayrank finetune OUTPUT --queries Q.parquet --corpus C.parquet --qrels qrels.txt --negatives 4`.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from rayrank.cli import command
from rayrank.config import load_yaml, merge_flags, parse_config
from rayrank.errors import OutputConflictError
from rayrank.lab.config import FinetuneConfig, TrainClusterConfig, TrainConfig
from rayrank.lab.train import train, training_columns

SUMMARY = "training_summary.json"


def _train(key: str) -> object:
    return TrainConfig.model_fields[key].default


def add_training_flags(parser: argparse.ArgumentParser) -> None:
    """Flags shared by finetune and distill: student, schedule and Ray Train width."""
    parser.add_argument("--config", help="YAML config (see configs/lab.*.yaml); flags override it")
    parser.add_argument("--model", help="warm start: any checkpoint (id or directory), e.g. the bundled "
                                        "sentence-transformers/all-MiniLM-L6-v2")
    parser.add_argument("--epochs", type=float, help=f"passes over the data (default {_train('epochs')})")
    parser.add_argument("--max-steps", type=int, help="stop after N optimizer steps (overrides --epochs)")
    parser.add_argument("--batch-size", type=int, help=f"pairs (lists, for listwise) per step (default "
                        f"{_train('batch_size')})")
    parser.add_argument("--learning-rate", type=float, help=f"AdamW's rate (default {_train('learning_rate')})")
    parser.add_argument("--max-length", type=int, help="tokens per (query, document) pair")
    parser.add_argument("--workers", type=int, help="Ray Train workers (data-parallel); 1 trains in-process")
    parser.add_argument("--cpus-per-worker", type=float, help="CPUs each Ray Train worker reserves (default "
                        f"{TrainClusterConfig.model_fields['cpus_per_worker'].default})")
    parser.add_argument("--address", help="Ray address for --workers > 1; default starts a local Ray")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty OUTPUT")


def merge_training_flags(data: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """Fold the shared flags into a config mapping (flags win over YAML)."""
    sections = {
        "train": {"epochs": args.epochs, "max_steps": args.max_steps, "batch_size": args.batch_size,
                  "learning_rate": args.learning_rate, "max_length": args.max_length},
        "cluster": {"workers": args.workers, "cpus_per_worker": args.cpus_per_worker, "address": args.address},
    }
    top = {"model": args.model, "output": getattr(args, "output", None), "overwrite": args.overwrite or None}
    return merge_flags(data, top, sections, args.config or "command-line flags")


def parse_args(argv: list[str] | None) -> FinetuneConfig:
    parser = argparse.ArgumentParser(prog="rayrank finetune", description=__doc__.split("\n\n")[0])
    parser.add_argument("output", nargs="?", help="directory for the trained model")
    parser.add_argument("--loss", choices=["bce", "mse", "margin", "listwise"],
                        help=f"training loss (default {FinetuneConfig.model_fields['loss'].default}): bce on labels, "
                        "mse on teacher scores, margin on triples, listwise on ranked lists")
    parser.add_argument("--pairs", help="Parquet: query, text, label (bce) or score (mse)")
    parser.add_argument("--triples", help="Parquet: query, positive, negative (margin)")
    parser.add_argument("--queries", help="mine: Parquet query_id, query")
    parser.add_argument("--corpus", help="mine: Parquet doc_id, [title,] text")
    parser.add_argument("--qrels", help="mine: TREC qrels of the queries")
    parser.add_argument("--candidates",
                        help="mine negatives from this long candidates table (default: BM25 over the corpus)")
    parser.add_argument("--negatives", type=int, help="hard negatives per query")
    parser.add_argument("--depth", type=int, help="sample negatives from the top DEPTH of the ranked list")
    add_training_flags(parser)
    args = parser.parse_args(argv)

    data = load_yaml(args.config) if args.config else {}
    data = merge_training_flags(data, args)
    if args.loss:
        data["loss"] = args.loss
    source = {"pairs": args.pairs, "triples": args.triples}
    mine = {"queries": args.queries, "corpus": args.corpus, "qrels": args.qrels, "candidates": args.candidates,
            "negatives": args.negatives, "depth": args.depth}
    given = {k: v for k, v in source.items() if v is not None}
    mine_given = {k: v for k, v in mine.items() if v is not None}
    if given or mine_given:
        section = data.get("data", {}) if isinstance(data.get("data", {}), dict) else {}
        if given:  # a file on the command line replaces the YAML's source
            section = given
        if mine_given:
            section = {"mine": {**(section.get("mine") or {}), **mine_given}}
        data["data"] = section
    config = parse_config(FinetuneConfig, data, args.config or "command-line flags")
    if not config.output:
        parser.error("OUTPUT is required (as an argument or `output:` in --config)")
    return config


def prepare_output(output: str, overwrite: bool) -> Path:
    """An empty OUTPUT directory; a non-empty one is replaced only with `overwrite`."""
    out = Path(output)
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise OutputConflictError(f"{out} is not empty; choose another OUTPUT or pass --overwrite.")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    return out


def _worker(loop_config: dict[str, Any]) -> None:
    """One Ray Train worker: train on its share, rank 0 reports the saved model as the checkpoint."""
    import ray.train

    from rayrank.jobs._ray import quiet_worker

    quiet_worker()
    config = FinetuneConfig.model_validate(loop_config["config"])
    rank0 = ray.train.get_context().get_world_rank() == 0
    with tempfile.TemporaryDirectory(prefix="rayrank-worker-") as folder:
        summary = train(config, loop_config["columns"], folder if rank0 else None)
        ray.train.report(summary, checkpoint=ray.train.Checkpoint.from_directory(folder) if rank0 else None)


def train_on_ray(config: FinetuneConfig, columns: dict[str, list], out: Path) -> dict[str, Any]:
    """Data-parallel training on Ray Train; the checkpoint rank 0 reported becomes OUTPUT."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from rayrank.jobs._ray import connect

    connect(config.cluster.address)
    c = config.cluster
    with tempfile.TemporaryDirectory(prefix="rayrank-train-") as storage:
        trainer = TorchTrainer(
            _worker, train_loop_config={"config": config.model_dump(), "columns": columns},
            scaling_config=ScalingConfig(num_workers=c.workers, use_gpu=c.use_gpu,
                                         resources_per_worker={"CPU": c.cpus_per_worker}),
            run_config=RunConfig(storage_path=storage, name="finetune"))
        result = trainer.fit()
        result.checkpoint.to_directory(str(out))
        return {k: result.metrics[k] for k in ("examples", "steps", "seconds", "losses", "train_loss")}


def run(config: FinetuneConfig, columns: dict[str, list] | None = None) -> dict[str, Any]:
    """Train and save; returns the summary also written to OUTPUT/training_summary.json."""
    out = prepare_output(config.output, config.overwrite)
    columns = training_columns(config) if columns is None else columns
    if config.cluster.workers > 1:
        summary = train_on_ray(config, columns, out)
    else:
        summary = train(config, columns, out)
    summary = {"output": str(out), "model": config.model, "loss": config.loss, "workers": config.cluster.workers,
               **summary, "config": config.model_dump()}
    (out / SUMMARY).write_text(json.dumps(summary, indent=2))
    return summary


def report(summary: dict[str, Any], command: str = "rayrank finetune", scorer: str = "cross-encoder") -> str:
    losses = summary["losses"]
    trend = f"{losses[0]:.4f} → {losses[-1]:.4f}" if losses else "n/a (fewer steps than logging_steps)"
    return "\n".join([
        f"{command}: {summary['output']}",
        f"  warm start     {summary['model']}",
        f"  loss           {summary['loss']}  (logged {trend}; mean {summary['train_loss']:.4f})",
        f"  examples       {summary['examples']:,}  steps {summary['steps']:,}  workers {summary['workers']}",
        f"  elapsed        {summary['seconds']:.1f} s",
        f"  load it with   rayrank.Reranker({summary['output']!r}, scorer={scorer!r})",
    ])


@command("finetune")
def main(argv: list[str] | None = None) -> int:
    print(report(run(parse_args(argv))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
