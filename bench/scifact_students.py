"""SciFact cross-encoder recipes compared on held-out *train* claims (the test claims stay untouched).

The "Students on held-out train claims" table of docs/benchmarks/lab.md. Two steps:

    python bench/scifact_students.py prepare            # BM25 top 100 + late-interaction teacher scores, ~5 min
    python bench/scifact_students.py student bce1 bce --minutes 8 --lr 5e-5
    python bench/scifact_students.py student mse_li1 mse_li --minutes 8 --lr 5e-5
    python bench/scifact_students.py student mse_f_hi mse_fused --minutes 8 --lr 1.5e-4
    python bench/scifact_students.py student list1 list_fused --minutes 8 --lr 1e-4 --head-lr 2e-3 --bs 32

`prepare` scores every judged train claim's BM25 top 100 over the corpus with BM25 and the bundled
all-MiniLM-L6-v2 as late interaction (documents encoded once) and prints the teachers' nDCG@10.
`student` trains a cross-encoder (rayrank.lab.train, word embeddings frozen) on 709 claims with
one recipe — `bce` (qrels positives + BM25 negatives), `mse_li` (MSE on per-claim z-scored late
interaction), `mse_fused` (late interaction + w x BM25), `mse_gold` (fused + beta on judged
positives), `list_fused` (the fused + gold target learnt listwise, as `rayrank distill --loss
listwise` does: lists of --k documents led by each claim's best) — and scores the other 100
claims' BM25 top --eval-depth (30). Work files go to --work."""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import SCIFACT, skip_message  # noqa: E402
from rayrank.evaluate import evaluate, load_qrels  # noqa: E402
from rayrank.lab.data import to_lists  # noqa: E402
from rayrank.lab.distill import standardize_per_query as z, teacher_targets  # noqa: E402

QRELS = load_qrels(SCIFACT / "qrels.train.txt") if (SCIFACT / "qrels.train.txt").is_file() else {}

def split(work, seed=0, dev=100):
    """The prepared pairs, and the development / training claim ids (a seeded split of the train claims)."""
    t = pq.read_table(work / "train_pairs.parquet")
    qids = sorted(set(t["query_id"].to_pylist()))
    random.Random(seed).shuffle(qids)
    return t, set(qids[:dev]), set(qids[dev:])


def ndcg(qids, docs, scores, qrels=None):
    qrels = qrels or QRELS
    run = {}
    for q, d, s in zip(qids, docs, scores):
        run.setdefault(q, {})[d] = float(s)
    return evaluate(run, qrels).ndcg_at_10


def prepare(work: Path) -> None:
    import rayrank
    from rayrank.funnel.bm25 import BM25
    from rayrank.lab import data
    from rayrank.scoring.late_interaction import maxsim

    torch.set_num_threads(2)
    S = str(SCIFACT) + "/"
    qrels = QRELS
    queries = data.read_queries(S + "queries.train.parquet"); corpus = data.read_corpus(S + "corpus.parquet")
    judged = {q: t for q, t in queries.items() if q in qrels}
    doc_ids = list(corpus); bm = BM25([corpus[d] for d in doc_ids])
    rows = []
    for (qid, q), (top, scores) in zip(judged.items(), bm.search_scored(list(judged.values()), 100)):
        for r, (i, score) in enumerate(zip(top, scores)):
            rows.append((qid, q, doc_ids[i], r + 1, float(score), int(qrels[qid].get(doc_ids[i], 0))))
    print(len(judged), "claims", len(rows), "pairs")
    uniq = sorted({r[2] for r in rows}); print(len(uniq), "unique docs")
    li = rayrank.Reranker("sentence-transformers/all-MiniLM-L6-v2", scorer="late-interaction").scorer
    t = time.perf_counter()
    emb = dict(zip(uniq, li.encode_documents([corpus[d] for d in uniq])))
    print("encoded docs in", time.perf_counter() - t)
    qemb = dict(zip(judged, li.encode_queries(list(judged.values()))))
    li_scores = {}
    for qid in judged:
        ds = [r[2] for r in rows if r[0] == qid]
        for d, s in zip(ds, maxsim(qemb[qid], [emb[d] for d in ds])):
            li_scores[(qid, d)] = float(s)
    tab = pa.table({"query_id": [r[0] for r in rows], "query": [r[1] for r in rows], "doc_id": [r[2] for r in rows],
                    "text": [corpus[r[2]] for r in rows], "bm25_rank": [r[3] for r in rows],
                    "bm25_score": [r[4] for r in rows], "li_score": [li_scores[(r[0], r[2])] for r in rows],
                    "label": [r[5] for r in rows]})
    pq.write_table(tab, work / "train_pairs.parquet")
    teachers(work)


def teachers(work: Path) -> None:
    t, dev, train = split(work)
    for name, ids in (("dev", dev), ("train", train), ("all", dev | train)):
        for depth in (30, 100):
            m = np.array([q in ids and r <= depth for q, r in zip(t["query_id"].to_pylist(), t["bm25_rank"].to_pylist())])
            sub = t.filter(m)
            q, d = sub["query_id"].to_pylist(), sub["doc_id"].to_pylist()
            bm, li = sub["bm25_score"].to_numpy(), sub["li_score"].to_numpy()
            res = {"bm25": ndcg(q, d, bm), "li": ndcg(q, d, li)}
            for w in (0.2, 0.35, 0.5, 1.0):
                res[f"li+{w}bm"] = ndcg(q, d, z(q, li) + w * z(q, bm))
            print(name, depth, " ".join(f"{k}={v:.4f}" for k, v in res.items()))


def student(work: Path, a: argparse.Namespace) -> None:
    import rayrank
    from rayrank.lab.config import FinetuneConfig
    from rayrank.lab.train import train

    t, dev, tr = split(work)
    cols = {c: t[c].to_pylist() for c in ("query_id", "query", "doc_id", "text", "bm25_rank", "label")}
    li, bm = t["li_score"].to_numpy(), t["bm25_score"].to_numpy()
    qid = np.array(cols["query_id"]); rank = np.array(cols["bm25_rank"])
    rng = random.Random(0)
    out = str(work / "models" / a.name)
    if not a.eval_only:
        m = np.array([q in tr for q in qid]) & (rank <= a.depth)
        idx = np.flatnonzero(m)
        if a.recipe == "bce":
            from rayrank.lab import data

            corpus = data.read_corpus(str(SCIFACT / "corpus.parquet"))
            known = set(cols["doc_id"])  # positives among the prepared candidates
            rows = []
            for q in sorted(tr):
                qi = [i for i in np.flatnonzero(qid == q) if rank[i] <= a.depth]
                pos = [d for d, g in QRELS[q].items() if g > 0]
                negs = [i for i in qi if cols["label"][i] == 0]
                rows += [(cols["query"][qi[0]], d, 1.0) for d in pos if d in known]
                rows += [(cols["query"][i], cols["doc_id"][i], 0.0) for i in rng.sample(negs, min(a.neg, len(negs)))]
            rows = [(q, corpus[d], l) for q, d, l in rows]
            rng.shuffle(rows)
            columns = {"query": [r[0] for r in rows], "document": [r[1] for r in rows], "label": [r[2] for r in rows]}
            loss = "bce"
        elif a.recipe == "list_fused":  # the product's `rayrank distill --loss listwise` target and lists
            q_ids = qid[idx].tolist()
            teacher = teacher_targets(q_ids, li[idx], {"bm25": (a.w, bm[idx])}, np.array(cols["label"])[idx] > 0,
                                      a.beta) / a.temp
            per_round = sum(math.ceil((n - 1) / (a.k - 1)) for n in Counter(q_ids).values())
            columns = to_lists(q_ids, [cols["query"][i] for i in idx], [cols["text"][i] for i in idx],
                               teacher.tolist(), a.k, rounds=math.ceil(a.minutes * 60 * a.rate / a.k / per_round))
            loss = "listwise"
        else:
            teacher = z(qid, li) if a.recipe == "mse_li" else z(qid, z(qid, li) + a.w * z(qid, bm))
            if a.recipe == "mse_gold":
                teacher = teacher + a.beta * np.array(cols["label"]) .clip(0, 1)
            order = list(idx); rng.shuffle(order)
            columns = {"query": [cols["query"][i] for i in order], "document": [cols["text"][i] for i in order],
                       "label": [float(teacher[i]) for i in order]}
            loss = "mse"
        steps = int(a.minutes * 60 * a.rate / a.bs)
        if loss == "listwise":
            a.bs = max(1, a.bs // a.k)  # lists per step: the same pairs per step as the pointwise recipes
        cfg = FinetuneConfig(model=a.init, loss=a.loss or loss, data={"pairs": "unused"},
                             train={"max_steps": steps, "batch_size": a.bs, "learning_rate": a.lr, "warmup_ratio": 0.1,
                                    "max_length": a.L, "logging_steps": 25, "threads": 2, "freeze_embeddings": True,
                                    "head_learning_rate": a.head_lr,
                                    "max_minutes": a.minutes * 1.5})
        s = train(cfg, columns, out)
        print(f"TRAIN {a.name}: {s['examples']} examples avail, {s['steps']} steps, {s['seconds']} s, losses {s['losses'][:2]}..{s['losses'][-3:]}")
    m = np.array([q in dev for q in qid]) & (rank <= a.eval_depth)
    sub = np.flatnonzero(m)
    r = rayrank.Reranker(out, max_length=a.eval_L or a.L)
    st = time.perf_counter()
    sc = r.score_pairs([cols["query"][i] for i in sub], [cols["text"][i] for i in sub]).scores
    q, d = [cols["query_id"][i] for i in sub], [cols["doc_id"][i] for i in sub]
    res = {"student": ndcg(q, d, sc), "bm25": ndcg(q, d, bm[sub]), "li": ndcg(q, d, li[sub]),
           "student+0.3bm": ndcg(q, d, z(q, sc) + 0.3 * z(q, bm[sub]))}
    print(f"DEV {a.name} top {a.eval_depth} ({len(sub)} pairs, {len(sub)/(time.perf_counter()-st):.0f} pairs/s):", json.dumps({k: round(v, 4) for k, v in res.items()}))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", default="runs/scifact-students", help="work directory")
    sub = p.add_subparsers(dest="step", required=True)
    sub.add_parser("prepare")
    s = sub.add_parser("student")
    s.add_argument("name"); s.add_argument("recipe", choices=["bce", "mse_li", "mse_fused", "mse_gold", "list_fused"])
    s.add_argument("--minutes", type=float, default=8); s.add_argument("--lr", type=float, default=5e-5)
    s.add_argument("--depth", type=int, default=30); s.add_argument("--neg", type=int, default=7)
    s.add_argument("--w", type=float, default=0.3); s.add_argument("--beta", type=float, default=2.0)
    s.add_argument("--rate", type=float, default=14.0, help="training pairs/s, to size max_steps to --minutes")
    s.add_argument("--bs", type=int, default=16, help="pairs per step (list_fused: --bs // --k lists)")
    s.add_argument("--k", type=int, default=16, help="list_fused: documents per list")
    s.add_argument("--temp", type=float, default=1.0, help="list_fused: teacher softmax temperature")
    s.add_argument("--head-lr", type=float, default=None, help="learning rate of the fresh head")
    s.add_argument("--L", type=int, default=128); s.add_argument("--eval-L", type=int, default=None)
    s.add_argument("--init", default="sentence-transformers/all-MiniLM-L6-v2"); s.add_argument("--loss", default=None)
    s.add_argument("--eval-only", action="store_true")
    s.add_argument("--eval-depth", type=int, default=30, help="score the dev claims' BM25 top K")
    a = p.parse_args(argv)
    if not QRELS:
        print(skip_message(SCIFACT))
        return 0
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    prepare(work) if a.step == "prepare" else student(work, a)
    return 0


if __name__ == "__main__":
    sys.exit(main())
