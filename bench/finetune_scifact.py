"""The SciFact demonstration: distil a cross-encoder from all-MiniLM-L6-v2, then rerank BM25's top 100.

Steps (each can be skipped by passing its result):
  1. write the corpus as `title + " " + abstract` and build its late-interaction index with the index
     job (`rayrank index`; a finished index is reused);
  2. `rayrank distill --config configs/lab.distill.scifact.yaml`: the late-interaction teacher labels
     BM25's top 30 of every train claim from the index, fused with BM25 and lifted on the judged
     abstracts; a cross-encoder with a fresh head learns it listwise (`train.max_minutes` bounds the
     training time). Skipped with --model DIR;
  3. `rayrank compare` on candidates.test.parquet: the fine-tuned cross-encoder and the
     late-interaction scorer with the same backbone (documents from the index), both through the
     batch rerank job, against BM25 (the `bm25_rank` column), with nDCG@10, MRR@10, pairs/s and
     agreement, and the cross-encoder fused with BM25;
  4. optionally (--distractors) the hard-distractor report, base vs fine-tuned, seen vs unseen claims.

`--claims N` evaluates the first N test claims (sorted by query_id) and `--depth K` only BM25's top K
per claim: a documented subset for a busy CPU.

    python bench/finetune_scifact.py                                   # all steps, about an hour on 2 cores
    python bench/finetune_scifact.py --model runs/scifact-ce-distilled # evaluate a trained model
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

from bench._common import MINILM, REPO, SCIFACT, load_average, scifact_corpus, skip_message, table  # noqa: E402

CONFIG = REPO / "configs" / "lab.distill.scifact.yaml"
WORK = REPO / "runs" / "scifact"
BM25_WEIGHT = 0.3
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


def fused_with_bm25(candidates: str, scored: str, qrels: Path) -> dict:
    """nDCG@10 / MRR@10 of a rerank job's scores (output `scored`) fused with BM25 per claim
    (`rayrank.lab.distill.teacher_targets`)."""
    from rayrank.evaluate import evaluate, load_qrels, read_run
    from rayrank.lab.distill import teacher_targets

    table = pq.read_table(candidates, columns=["query_id", "doc_id", "bm25_score"])
    scores = read_run(scored)
    qids, docs = table["query_id"].to_pylist(), table["doc_id"].to_pylist()
    keep = [i for i, (q, d) in enumerate(zip(qids, docs)) if d in scores.get(q, {})]
    qids, docs = [qids[i] for i in keep], [docs[i] for i in keep]
    bm25 = table["bm25_score"].to_numpy()[keep]
    fused = teacher_targets(qids, [scores[q][d] for q, d in zip(qids, docs)], {"bm25": (BM25_WEIGHT, bm25)})
    run: dict[str, dict[str, float]] = {}
    for q, d, s in zip(qids, docs, fused):
        run.setdefault(q, {})[d] = float(s)
    m = evaluate(run, load_qrels(qrels))
    return {"ndcg_at_10": m.ndcg_at_10, "mrr_at_10": m.mrr_at_10, "bm25_weight": BM25_WEIGHT}


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
    corpus = scifact_corpus(WORK / "corpus.parquet")
    index = WORK / "index"
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "rayrank.jobs.index", str(corpus), str(index), "--model", MINILM], cwd=REPO,
                   check=True)
    print(f"index step took {time.perf_counter() - started:.0f} s")
    model = args.model
    if model is None:
        import yaml

        model = yaml.safe_load(Path(args.config).read_text())["output"]
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "rayrank.jobs.distill", "--config", args.config, "--overwrite"], cwd=REPO,
                       check=True)
        print(f"distillation (teacher labels + training) took {time.perf_counter() - started:.0f} s")

    from rayrank.config import ClusterConfig
    from rayrank.jobs.compare import compare, model_output
    from rayrank.jobs.compare import table as compare_table
    from rayrank.lab.config import ModelSpec

    specs = [ModelSpec(str(model))]
    if not args.no_late_interaction:
        specs.append(ModelSpec(MINILM, "late-interaction"))
    with tempfile.TemporaryDirectory(prefix="scifact-") as scratch:
        candidates = subset(SCIFACT / "candidates.test.parquet", args.claims, args.depth, Path(scratch))
        result = compare(str(candidates), str(SCIFACT / "qrels.test.txt"), specs, {"backend": args.backend},
                         ClusterConfig(address=args.address, actors=(1, 1)), scratch, "bm25_rank", str(index))
        fused = fused_with_bm25(str(candidates), model_output(scratch, 0), SCIFACT / "qrels.test.txt")
    print(f"\nSciFact test: {args.claims or 300} claims, BM25 top {args.depth or 100} "
          f"({result['models'][1]['pairs']:,} pairs); load average now {load_average()}")
    print(compare_table(result))
    print(f"\nthe cross-encoder fused with BM25 (per-claim z-scores, + {BM25_WEIGHT} x BM25): nDCG@10 "
          f"{fused['ndcg_at_10']:.4f}, MRR@10 {fused['mrr_at_10']:.4f}")
    result["fused_with_bm25"] = fused
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
