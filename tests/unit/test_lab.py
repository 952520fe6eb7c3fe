"""The lab without Ray: agreement metrics, mining, fine-tuning, distillation students, sweep, distractors."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rayrank import Reranker
from rayrank.config import ConfigError
from rayrank.errors import InvalidInputError
from rayrank.funnel.bm25 import BM25
from rayrank.lab import data
from rayrank.lab.agreement import agreement
from rayrank.lab.config import FinetuneConfig, TrainConfig
from rayrank.lab.distill import MaxSimMarginMSELoss, margin_triples, standardize_per_query, train_late_interaction
from rayrank.lab.train import train, training_columns

WORDS = "ray cluster python data model query document search rank score fish sea light".split()


def toy_pairs(n: int = 48) -> dict[str, list]:
    """A learnable task for tiny models: the relevant document repeats the query's word."""
    columns: dict[str, list] = {"query": [], "document": [], "label": []}
    for i in range(n):
        word, other = WORDS[i % len(WORDS)], WORDS[(i + 5) % len(WORDS)]
        columns["query"] += [f"what is {word}"] * 2
        columns["document"] += [f"{word} {word} is good", f"{other} {other} is bad"]
        columns["label"] += [1.0, 0.0]
    return columns


def bce(scores: np.ndarray, labels: list[float]) -> float:
    p = 1 / (1 + np.exp(-scores.astype(np.float64)))
    y = np.array(labels)
    return float(-(y * np.log(p) + (1 - y) * np.log(1 - p)).mean())


def quick(**train) -> TrainConfig:
    return TrainConfig(**{"epochs": 3, "batch_size": 16, "learning_rate": 1e-3, "logging_steps": 2,
                          "max_length": 32, **train})


# --- agreement -------------------------------------------------------------------------------------------

def test_agreement_of_a_run_with_itself_and_its_reverse():
    run = {"q1": {"a": 3.0, "b": 2.0, "c": 1.0, "d": 0.5, "e": 0.1, "f": 0.0},
           "q2": {"a": 1.0, "b": 2.0, "c": 3.0}}
    same = agreement(run, run)
    assert same["kendall_tau"] == 1.0 and same["top3_overlap"] == 1.0 and same["top5_overlap"] == 1.0
    reverse = {q: {d: -s for d, s in docs.items()} for q, docs in run.items()}
    assert agreement(run, reverse)["kendall_tau"] == -1.0
    assert agreement(run, reverse)["top3_overlap"] == pytest.approx((0 / 3 + 3 / 3) / 2)
    assert agreement(run, reverse)["top5_overlap"] == pytest.approx((4 / 5 + 3 / 3) / 2)


def test_agreement_counts_queries_where_tau_is_undefined():
    a = {"q1": {"a": 1.0, "b": 1.0}, "q2": {"a": 1.0, "b": 0.0}}
    out = agreement(a, {"q1": {"a": 2.0, "b": 1.0}, "q2": {"a": 2.0, "b": 1.0}})
    assert out["tau_undefined"] == 1 and out["kendall_tau"] == 1.0 and out["queries"] == 2
    assert math.isnan(agreement({"q": {"a": 1.0}}, {"x": {"a": 1.0}})["kendall_tau"])


# --- BM25 and mining -------------------------------------------------------------------------------------

def test_bm25_prefers_rare_matching_terms():
    index = BM25(["the fish swim", "the sea is big", "fish of the sea and fish of the river"])
    assert index.search(["river fish"], 3)[0].tolist()[0] == 2
    assert index.search(["nothing matches"], 3)[0].size == 0


def test_mine_takes_negatives_from_the_ranked_list_and_never_a_judged_document():
    corpus = {f"d{i}": f"text {i}" for i in range(10)}
    qrels = {"q": {"d3": 1, "d1": 0}}
    ranked = {"q": [f"d{i}" for i in range(10)]}
    (ex,) = data.mine({"q": "query", "other": "unjudged"}, corpus, qrels, ranked, negatives=3, depth=5, skip_top=0)
    assert ex.positives == ["text 3"]
    assert set(ex.negative_ids) <= {"d0", "d2", "d4"} and len(ex.negative_ids) == 3
    (short,) = data.mine({"q": "query"}, corpus, qrels, ranked, negatives=9, depth=4, skip_top=2)
    assert short.negative_ids == ["d2"]  # ranks 2..3 minus the judged d3
    with pytest.raises(InvalidInputError, match="no query has a relevant document"):
        data.mine({"x": "q"}, corpus, qrels, ranked, negatives=1)


def test_training_columns_from_mined_files(tmp_path):
    pq.write_table(pa.table({"query_id": ["q1", "q2"], "query": ["python snake", "sea fish"]}), tmp_path / "q.parquet")
    pq.write_table(pa.table({"doc_id": ["a", "b", "c", "d"], "title": ["Python", "", "Fish", "Snakes"],
                             "text": ["a snake", "python code", "in the sea", "python snake facts"]}),
                   tmp_path / "c.parquet")
    (tmp_path / "qrels.txt").write_text("q1 0 a 1\nq2 0 c 1\n")
    mine = {"queries": str(tmp_path / "q.parquet"), "corpus": str(tmp_path / "c.parquet"),
            "qrels": str(tmp_path / "qrels.txt"), "negatives": 2}
    pairs = training_columns(FinetuneConfig(data={"mine": mine}))
    assert pairs["document"][0] == "Python a snake"  # title prepended
    assert sorted(zip(pairs["query"], pairs["label"])).count(("python snake", 1.0)) == 1
    negatives = {d for d, y in zip(pairs["document"], pairs["label"]) if y == 0}
    assert negatives == {"python code", "Snakes python snake facts"}  # BM25-ranked, never the judged "a"
    triples = training_columns(FinetuneConfig(loss="margin", data={"mine": mine}))
    assert list(triples) == ["query", "positive", "negative"] and len(triples["query"]) >= 2


def test_loss_and_data_mismatches_name_the_fix(tmp_path):
    pq.write_table(pa.table({"query": ["q"], "text": ["d"]}), tmp_path / "p.parquet")
    with pytest.raises(InvalidInputError, match=re.escape("lacks column(s) label")):
        training_columns(FinetuneConfig(data={"pairs": str(tmp_path / "p.parquet")}))
    with pytest.raises(InvalidInputError, match="give data.triples or data.mine"):
        training_columns(FinetuneConfig(loss="margin", data={"pairs": str(tmp_path / "p.parquet")}))
    with pytest.raises(InvalidInputError, match="rayrank distill"):
        training_columns(FinetuneConfig(loss="mse", data={"mine": {"queries": "q", "corpus": "c", "qrels": "r"}}))


def test_finetune_cli_errors_name_the_key(tmp_path, capsys):
    from rayrank.jobs.finetune import main

    config = tmp_path / "bad.yaml"
    config.write_text("data: {pairs: x.parquet}\ntrain: {batch_size: 0}\nlosss: bce\n")
    assert main([str(tmp_path / "out"), "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "train.batch_size" in err and "losss: unknown key" in err
    with pytest.raises(ConfigError, match="exactly one of data.pairs"):
        from rayrank.config import parse_config
        parse_config(FinetuneConfig, {"data": {"pairs": "a", "triples": "b"}}, "test")


def test_distill_config_refuses_settings_that_cannot_work_together():
    from rayrank.config import parse_config
    from rayrank.lab.config import DistillConfig

    base = {"teacher": {"model": "m"}, "data": {"candidates": "c.parquet"}}
    with pytest.raises(ConfigError, match="teacher must be `late-interaction:MODEL`"):
        parse_config(DistillConfig, {**base, "teacher_index": "ix"}, "test")
    with pytest.raises(ConfigError, match="`listwise` is for a cross-encoder student"):
        parse_config(DistillConfig, {**base, "student_kind": "late-interaction", "loss": "listwise"}, "test")


def test_distill_cli_names_a_malformed_blend_flag(capsys):
    from rayrank.jobs.distill import main

    assert main(["out", "--teacher", "m", "--candidates", "c.parquet", "--blend", "bm25_score"]) == 2
    assert "--blend 'bm25_score': expected COLUMN=WEIGHT" in capsys.readouterr().err


def test_teacher_targets_fuse_signals_per_query_and_lift_judged_pairs():
    from rayrank.lab.distill import teacher_targets

    qids = ["a"] * 3 + ["b"] * 3
    teacher, bm25 = [3.0, 2.0, 1.0, 30.0, 20.0, 10.0], [0.0, 1.0, 2.0, 5.0, 5.0, 5.0]
    plain = teacher_targets(qids, teacher)
    assert plain.tolist() == pytest.approx(standardize_per_query(qids, teacher).tolist())  # scale-free per query
    fused = teacher_targets(qids, teacher, {"bm25": (1.0, bm25)})
    assert fused[:3].tolist() == pytest.approx([0.0, 0.0, 0.0], abs=1e-6)  # opposite signals cancel in query a
    assert fused[3:].tolist() == pytest.approx(plain[3:].tolist())  # a constant signal changes nothing
    gold = teacher_targets(qids, teacher, relevant=[False, False, True] * 2, gold_weight=2.0)
    assert (gold - plain).tolist() == pytest.approx([0, 0, 2.0] * 2)


# --- fine-tuning -----------------------------------------------------------------------------------------

def test_bce_finetune_learns_a_toy_task_and_the_output_loads_in_the_engine(tmp_path, tiny_cross_encoder):
    columns = toy_pairs()
    before = Reranker(str(tiny_cross_encoder)).score_pairs(columns["query"], columns["document"]).scores
    config = FinetuneConfig(model=str(tiny_cross_encoder), data={"pairs": "in-memory"}, train=quick())
    summary = train(config, columns, tmp_path / "out")
    after = Reranker(str(tmp_path / "out"), scorer="cross-encoder").score_pairs(columns["query"], columns["document"])
    assert bce(after.scores, columns["label"]) < bce(before, columns["label"])
    assert summary["steps"] == 18 and len(summary["losses"]) >= 2 and summary["examples"] == 96


def test_margin_finetune_orders_positive_above_negative(tmp_path, tiny_cross_encoder):
    pairs = toy_pairs()
    triples = {"query": pairs["query"][::2], "positive": pairs["document"][::2], "negative": pairs["document"][1::2]}
    config = FinetuneConfig(model=str(tiny_cross_encoder), loss="margin", data={"triples": "in-memory"}, train=quick())
    train(config, triples, tmp_path / "out")
    case = triples["query"], triples["positive"], triples["negative"]
    assert pass_rate(tmp_path / "out", *case) > pass_rate(tiny_cross_encoder, *case)


def pass_rate(model, query: list[str], positive: list[str], negative: list[str]) -> float:
    r = Reranker(str(model))
    return float((r.score_pairs(query, positive).scores > r.score_pairs(query, negative).scores).mean())


def test_to_lists_lead_with_the_best_document_and_deal_every_other_once_per_round():
    ids = ["a"] * 7 + ["b"] * 3 + ["c"]
    texts = [f"a{i}" for i in range(7)] + ["b0", "b1", "b2", "c0"]
    scores = [0.1, 0.5, 3.0, 0.2, 0.0, 0.4, 0.3, 1.0, 2.0, 0.0, 9.0]
    lists = data.to_lists(ids, [f"Q{q}" for q in ids], texts, scores, list_size=3, rounds=2)
    by_query: dict[str, list[list[str]]] = {}
    for query, docs, labels in zip(lists["query"], lists["docs"], lists["labels"]):
        by_query.setdefault(query, []).append(docs)
        assert len(docs) == len(labels) <= 3 and labels[0] == max(labels)
        assert {d[0] for d in docs} == {query[1]}  # one query's documents only
    assert {d[0] for d in by_query["Qa"]} == {"a2"} and {d[0] for d in by_query["Qb"]} == {"b1"}
    assert sorted(d for docs in by_query["Qa"] for d in docs[1:]) == sorted(2 * ["a0", "a1", "a3", "a4", "a5", "a6"])
    assert len(by_query["Qa"]) == 6 and len(by_query["Qb"]) == 2 and "Qc" not in by_query  # one document: no list
    with pytest.raises(InvalidInputError, match="list_size must be at least 2"):
        data.to_lists(ids, ids, texts, scores, list_size=1)


def test_listwise_finetune_from_teacher_scores_orders_each_list(tmp_path, tiny_cross_encoder):
    pairs = toy_pairs()
    path = tmp_path / "pairs.parquet"
    pq.write_table(pa.table({"query_id": pairs["query"], "query": pairs["query"], "text": pairs["document"],
                             "score": [3.0 * y for y in pairs["label"]]}), path)
    config = FinetuneConfig(model=str(tiny_cross_encoder), loss="listwise", data={"pairs": str(path)},
                            train=quick(batch_size=4, list_size=4))
    columns = training_columns(config)
    assert list(columns) == ["query", "docs", "labels"] and all(labels[0] == 3.0 for labels in columns["labels"])
    train(config, columns, tmp_path / "out")
    query, positive, negative = pairs["query"][::2], pairs["document"][::2], pairs["document"][1::2]
    assert pass_rate(tmp_path / "out", query, positive, negative) > pass_rate(tiny_cross_encoder, query, positive,
                                                                            negative)


def test_listwise_lists_from_mined_positives_and_negatives(tmp_path):
    pq.write_table(pa.table({"query_id": ["q1"], "query": ["python snake"]}), tmp_path / "q.parquet")
    pq.write_table(pa.table({"doc_id": ["a", "b", "c", "d"], "text": ["a snake", "python code", "sea", "python"]}),
                   tmp_path / "c.parquet")
    (tmp_path / "qrels.txt").write_text("q1 0 a 1\n")
    mine = {"queries": str(tmp_path / "q.parquet"), "corpus": str(tmp_path / "c.parquet"),
            "qrels": str(tmp_path / "qrels.txt"), "negatives": 2}
    lists = training_columns(FinetuneConfig(loss="listwise", data={"mine": mine}, train={"list_size": 8}))
    assert lists["docs"] == [["a snake", *lists["docs"][0][1:]]] and lists["labels"] == [[1.0, 0.0, 0.0]]
    with pytest.raises(InvalidInputError, match="not data.triples"):
        training_columns(FinetuneConfig(loss="listwise", data={"triples": "t.parquet"}))


def test_head_learning_rate_moves_the_head_while_the_backbone_barely_moves(tmp_path, tiny_cross_encoder):
    from safetensors.torch import load_file

    config = FinetuneConfig(model=str(tiny_cross_encoder), data={"pairs": "in-memory"},
                            train=quick(max_steps=4, learning_rate=1e-9, head_learning_rate=1e-2, warmup_ratio=0))
    train(config, toy_pairs(16), tmp_path / "out")
    before, after = load_file(str(tiny_cross_encoder / "model.safetensors")), load_file(str(tmp_path / "out" / "model.safetensors"))
    moved = {k: float((after[k] - before[k]).abs().max()) for k in before}
    assert moved["classifier.weight"] > 1e-3 and moved["bert.pooler.dense.weight"] > 1e-3
    assert max(v for k, v in moved.items() if ".encoder." in k) < 1e-6


def test_warm_start_from_a_plain_encoder_gets_a_one_logit_head(tmp_path, tiny_encoder):
    config = FinetuneConfig(model=str(tiny_encoder), data={"pairs": "in-memory"}, train=quick(max_steps=2))
    train(config, toy_pairs(8), tmp_path / "out")
    saved = json.loads((tmp_path / "out" / "config.json").read_text())
    assert saved["architectures"] == ["BertForSequenceClassification"] and len(saved["id2label"]) == 1
    assert Reranker(str(tmp_path / "out")).score("what is ray", ["ray ray", "fish"]).shape == (2,)


def test_finetune_cli_refuses_a_non_empty_output(tmp_path, tiny_cross_encoder, capsys):
    from rayrank.jobs.finetune import main

    pq.write_table(pa.table({"query": ["what is ray"] * 2, "text": ["ray", "fish"], "label": [1, 0]}),
                   tmp_path / "p.parquet")
    args = [str(tmp_path / "out"), "--pairs", str(tmp_path / "p.parquet"), "--model", str(tiny_cross_encoder),
            "--max-steps", "1"]
    assert main(args) == 0
    assert "load it with" in capsys.readouterr().out
    assert json.loads((tmp_path / "out" / "training_summary.json").read_text())["steps"] == 1
    assert main(args) == 2 and "--overwrite" in capsys.readouterr().err


# --- distillation ----------------------------------------------------------------------------------------

def test_margin_triples_pair_documents_within_a_query():
    cols = margin_triples(["a", "a", "b", "c", "c"], ["qa", "qa", "qb", "qc", "qc"], ["x", "y", "z", "u", "v"],
                          [1.0, 0.0, 5.0, 2.0, 4.0])
    assert cols["query"] == ["qa", "qa", "qc", "qc"]  # "b" has a single document: no pair
    assert cols["label"] == [1.0, -1.0, -2.0, 2.0]
    assert standardize_per_query(["a", "a"], [2.0, 2.0]).tolist() == [0.0, 0.0]


def test_maxsim_loss_scores_as_the_engine_does(tiny_encoder):
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(tiny_encoder), local_files_only=True)
    loss = MaxSimMarginMSELoss(model).eval()
    queries, docs = ["what is ray?", "fish"], ["ray is a cluster, fast.", "the sea; big fish!"]
    import torch

    with torch.no_grad():
        ours = loss.maxsim(model.preprocess(queries), model.preprocess(docs)).numpy()
    engine = Reranker(str(tiny_encoder), scorer="late-interaction").score_pairs(queries, docs).scores
    np.testing.assert_allclose(ours, engine, rtol=1e-4, atol=1e-4)


def test_late_interaction_student_learns_teacher_margins_and_loads(tmp_path, tiny_encoder):
    pairs = toy_pairs()
    qids = [q for q in pairs["query"]]
    triples = margin_triples(qids, pairs["query"], pairs["document"], [3 * y - 1.5 for y in pairs["label"]])
    r0 = Reranker(str(tiny_encoder), scorer="late-interaction")
    before = r0.score_pairs(triples["query"], triples["document_a"]).scores - r0.score_pairs(
        triples["query"], triples["document_b"]).scores
    summary = train_late_interaction(str(tiny_encoder), triples, tmp_path / "student", quick(learning_rate=3e-3))
    r1 = Reranker(str(tmp_path / "student"), scorer="late-interaction")
    after = r1.score_pairs(triples["query"], triples["document_a"]).scores - r1.score_pairs(
        triples["query"], triples["document_b"]).scores
    target = np.array(triples["label"])
    assert ((after - target) ** 2).mean() < ((before - target) ** 2).mean()
    assert summary["steps"] > 0


# --- sweep and distractors -------------------------------------------------------------------------------

def test_sweep_writes_the_plot_and_reports_the_best(tmp_path, tiny_cross_encoder, capsys):
    from rayrank.jobs.sweep import main

    rows = [{"query": f"what is {w}", "text": f"{w} " * (i % 7 + 1)} for i, w in enumerate(WORDS * 3)]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "c.parquet")
    plot = tmp_path / "sweep.png"
    assert main([str(tmp_path / "c.parquet"), "--model", str(tiny_cross_encoder), "--batch-sizes", "8,16",
                 "--token-budgets", "256,1024", "--plot", str(plot), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(out["rows"]) == 4 and out["pairs"] == len(rows)
    assert out["best"] == max(out["rows"], key=lambda r: r["pairs_per_s"])


def test_distractor_report_side_by_side(tmp_path, tiny_cross_encoder, tiny_encoder, capsys):
    from rayrank.lab.distractors import main

    pq.write_table(pa.table({"doc_id": [f"d{i}" for i in range(len(WORDS))],
                             "text": [f"{w} {w} facts" for w in WORDS]}), tmp_path / "corpus.parquet")
    for split, words in (("seen", WORDS[:4]), ("unseen", WORDS[4:7])):
        queries = pa.table({"query_id": words, "query": [f"{w} facts" for w in words]})
        pq.write_table(queries, tmp_path / f"{split}.parquet")
        (tmp_path / f"{split}.txt").write_text("".join(f"{w} 0 d{WORDS.index(w)} 1\n" for w in words))
    args = ["--corpus", str(tmp_path / "corpus.parquet"),
            "--seen", str(tmp_path / "seen.parquet"), str(tmp_path / "seen.txt"),
            "--unseen", str(tmp_path / "unseen.parquet"), str(tmp_path / "unseen.txt"),
            "--model", f"base={tiny_cross_encoder}", "--model", f"li=late-interaction:{tiny_encoder}", "--json"]
    assert main(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["base"]["seen"]["cases"] == 4 and out["li"]["unseen"]["cases"] == 3
    assert 0.0 <= out["li"]["seen"]["pass_rate"] <= 1.0


def test_frozen_embeddings_stay_as_they_were_while_the_rest_trains(tmp_path, tiny_cross_encoder):
    from safetensors.torch import load_file

    config = FinetuneConfig(model=str(tiny_cross_encoder), data={"pairs": "in-memory"},
                            train=quick(max_steps=4, freeze_embeddings=True))
    train(config, toy_pairs(16), tmp_path / "out")
    before, after = load_file(str(tiny_cross_encoder / "model.safetensors")), load_file(str(tmp_path / "out" / "model.safetensors"))
    word = next(k for k in before if k.endswith("word_embeddings.weight"))
    assert np.array_equal(before[word].numpy(), after[word].numpy())
    assert not np.array_equal(before["classifier.weight"].numpy(), after["classifier.weight"].numpy())


def test_dense_student_losses_are_checked_against_the_student_kind():
    from rayrank.lab.config import DistillConfig

    base = {"teacher": {"model": "m"}, "data": {"candidates": "c.parquet"}}
    assert DistillConfig(**base, student_kind="dense", loss="margin-mse").loss == "margin-mse"
    with pytest.raises(ValueError, match="a dense student trains with `mse`"):
        DistillConfig(**base, student_kind="dense", loss="listwise")
    with pytest.raises(ValueError, match="`margin-mse` is the dense student's"):
        DistillConfig(**base, student_kind="cross-encoder", loss="margin-mse")


def test_dense_pairs_map_targets_to_cosine_labels():
    from rayrank.lab.distill import dense_pairs

    pairs = dense_pairs(["q", "q"], ["a", "b"], [0.0, 2.0])
    assert pairs["query"] == ["q", "q"] and pairs["label"] == pytest.approx([0.5, 1 / (1 + math.exp(-2))])
