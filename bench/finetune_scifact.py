"""The SciFact demonstration: fine-tune a cross-encoder from all-MiniLM-L6-v2, then rerank BM25's top 100.

Steps (each can be skipped by passing its result):
  1. `rayrank finetune --config configs/lab.finetune.scifact.yaml` (train claims' qrels + BM25 hard
     negatives; the config's `max_minutes` bounds the training time), unless --model DIR is given;
  2. `rayrank compare` on candidates.test.parquet: the fine-tuned cross-encoder and the
     late-interaction scorer with the same backbone, both through the batch rerank job, against
     BM25 (the `bm25_rank` column), with nDCG@10, MRR@10, pairs/s and agreement;
  3. optionally (--distractors) the hard-distractor report, base vs fine-tuned, seen vs unseen claims.

`--claims N` evaluates the first N test claims (sorted by query_id) and `--depth K` only BM25's top K
per claim: a documented subset for a busy CPU, since the full 30,000 pairs take a while there.

    python bench/finetune_scifact.py --model runs/scifact-ce-bce --claims 300 --depth 100
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import MINILM, REPO, SCIFACT, load_average, skip_message, table  # noqa: E402

CONFIG = REPO / "configs" / "lab.finetune.scifact.yaml"
REFERENCE = {"BM25 alone": 0.6617, "late interaction, same backbone (reference script)": 0.697,
             "BEIR: BM25 + MiniLM-L6 cross-encoder": 0.688, "goal": 0.72}


def subset(path: Path, claims: int | None, depth: int | None, folder: Path) -> Path:
    """The first `claims` test claims (by query_id) and their BM25 top `depth`, as a Parquet file."""
    if not claims and not depth:
        return path
    table = pq.read_table(path)
    if claims:
        keep = sorted(set(table["query_id"].to_pylist()))[:claims]
        table = table.filter(pc.is_in(table["query_id"], value_set=pc.cast(keep, table["query_id"].type)))
    if depth:
        table = table.filter(pc.less_equal(table["bm25_rank"], depth))
    out = folder / "candidates.parquet"
    pq.write_table(table, out)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="an already fine-tuned model directory (skips training)")
    parser.add_argument("--config", default=str(CONFIG), help="finetune config for step 1")
    parser.add_argument("--claims", type=int, help="evaluate the first N test claims only")
    parser.add_argument("--depth", type=int, help="rerank BM25's top K per claim only")
    parser.add_argument("--backend", choices=["torch", "onnx"], default="torch")
    parser.add_argument("--no-late-interaction", action="store_true", help="skip the late-interaction reference")
    parser.add_argument("--address", help="Ray address of a running cluster (default: start a local Ray)")
    parser.add_argument("--distractors", action="store_true", help="also run the hard-distractor report")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)
    if not (SCIFACT / "candidates.test.parquet").is_file():
        print(skip_message(SCIFACT))
        return 0

    print(f"load average at start: {load_average()} (shared machine)")
    model = args.model
    if model is None:
        import yaml

        model = yaml.safe_load(Path(args.config).read_text())["output"]
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "jobs.finetune", "--config", args.config, "--overwrite"], cwd=REPO,
                       check=True)
        print(f"training took {time.perf_counter() - started:.0f} s")

    from jobs.compare import compare, table as compare_table
    from jobs.compare import ModelSpec
    from rayrank.config import ClusterConfig

    specs = [ModelSpec(str(model))]
    if not args.no_late_interaction:
        specs.append(ModelSpec(MINILM, "late-interaction"))
    with tempfile.TemporaryDirectory(prefix="scifact-") as scratch:
        candidates = subset(SCIFACT / "candidates.test.parquet", args.claims, args.depth, Path(scratch))
        result = compare(str(candidates), str(SCIFACT / "qrels.test.txt"), specs, {"backend": args.backend},
                         ClusterConfig(address=args.address, actors=(1, 1)), scratch, "bm25_rank")
    print(f"\nSciFact test: {args.claims or 300} claims, BM25 top {args.depth or 100} "
          f"({result['models'][1]['pairs']:,} pairs); load average now {load_average()}")
    print(compare_table(result))
    print("\nPublished / reference nDCG@10 on all 300 claims, top 100:")
    print(table([{"system": k, "nDCG@10": v} for k, v in REFERENCE.items()], "{:.4f}"))
    summary = Path(model) / "training_summary.json"
    if summary.is_file():
        s = json.loads(summary.read_text())
        print(f"\ntraining: {s['examples']:,} examples, {s['steps']} steps, {s['seconds']:.0f} s, loss {s['loss']}")
    if args.distractors:
        from rayrank.lab.distractors import main as distractors

        distractors(["--corpus", str(SCIFACT / "corpus.parquet"),
                     "--seen", str(SCIFACT / "queries.train.parquet"), str(SCIFACT / "qrels.train.txt"),
                     "--unseen", str(SCIFACT / "queries.test.parquet"), str(SCIFACT / "qrels.test.txt"),
                     "--candidates", str(SCIFACT / "candidates.test.parquet"), "--limit", str(args.claims or 300),
                     "--model", f"base=late-interaction:{MINILM}", "--model", f"tuned={model}"])
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
