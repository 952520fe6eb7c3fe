"""rayrank against the CPU fast paths a user would otherwise pick, on the same weights, in one run.

Cross-encoder: the first N TREC-DL20 pairs and one MiniLM-L6-shaped checkpoint (the bundled
all-MiniLM-L6-v2 backbone with a fresh seeded 1-logit head). Every system runs in its own process:
sentence-transformers' `CrossEncoder` (torch; `backend="onnx"` plain, O3/O4-optimised, dynamic qint8;
`backend="openvino"` plain and static qint8) and FlashRank (the same weights exported to the layout
it reads from its cache folder; nothing downloads) in the peers' virtual environment (their extras
pin transformers 4.x), and rayrank's backends in ours. Each system's batch size (ours: token budget)
is swept once, then timed at its best size in rounds that alternate across all systems; the best
round counts. Prints pairs/s, × plain predict, max |Δ logit| and Kendall τ against plain fp32 predict.

    python bench/peers.py --create-peer-venv                # builds .venvs/peers first if absent
    python bench/peers.py --peer-python PATH/bin/python --pairs 300 --rounds 3
    python bench/peers.py --systems "st openvino,rayrank openvino bf16"

Decoder rerankers (`--part decoder`, in our own environment: sentence-transformers ≥ 5.4 scores them):
a Qwen3-Reranker-shaped model scaled to 2 cores against `CrossEncoder.predict`, see bench/decoder.py.

Late interaction (`--part late`): SciFact document encoding docs/s, PyLate `models.ColBERT` over the
bundled all-MiniLM-L6-v2 against our `encode_documents` (PyLate in its own venv, `--li-python`); then
search on the same (our) token embeddings and queries, on SciFact and on a synthetic 100,000-document
corpus: index build seconds from precomputed embeddings, index bytes per token on disk, queries/s
(one process, `--threads`), Recall@100 against our exact search and, on SciFact, nDCG@10 / Recall@100
on the test claims, for our exact scan, our IVF (`--ivf`), FastPlaid 1.7 (`--plaid`) and xtr-warp-rs
2.1 (`--warp`), each peer at its defaults and at the other settings given. Each peer pins torch 2.11
and runs in its own virtual environment (`--plaid-python`, `--warp-python`), made with

    python -m venv VENV && VENV/bin/pip install fast-plaid==1.7.0.2110     # FastPlaid 1.7, torch 2.11
    python -m venv VENV && VENV/bin/pip install xtr-warp-rs==2.1.0.2110    # xtr-warp-rs 2.1, torch 2.11

(their torch 2.11 wheels are CUDA builds: pip also installs the CUDA libraries, about 3 GB, which
`import torch` needs even on CPU.)

    python bench/peers.py --part late --late-parts synthetic --rounds 2 --plaid-python P --warp-python W
    python bench/peers.py --part late --late-parts scifact --late-peers warp --warp-python W --warp "default;nprobe=32"
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np
from _common import DL20, MINILM, REPO, SCIFACT, load_average, load_dl20, minilm_cross_encoder, skip_message, table

WORKER = Path(__file__).resolve().parent / "_peer_worker.py"
PEER_PACKAGES = ["sentence-transformers[onnx,openvino]>=5,<6", "transformers>=4.41,<5", "huggingface-hub<1.0",
                 "datasets>=3,<4.5", "flashrank", "pyarrow"]
# (system, runs in the peers' venv, quantized); names match _peer_worker.SYSTEMS.
SYSTEMS = [
    ("st torch fp32 (plain predict)", True, False), ("st onnx", True, False), ("st onnx O3", True, False),
    ("st onnx O4", True, False), ("st onnx qint8 (dynamic)", True, True), ("st openvino", True, False),
    ("st openvino qint8 (static)", True, True), ("flashrank fp32", True, False), ("flashrank int8", True, True),
    ("rayrank torch fp32", False, False), ("rayrank torch bf16", False, False), ("rayrank onnx fp32", False, False),
    ("rayrank onnx int8", False, True), ("rayrank openvino fp32", False, False),
    ("rayrank openvino bf16", False, False), ("rayrank openvino int8 (static)", False, True),
    ("rayrank openvino int8 (static) bf16", False, True), ("rayrank auto", False, False),
]
PLAIN = "st torch fp32 (plain predict)"
# The bar for "near-exact" against fp32.
NEAR_EXACT_DELTA, NEAR_EXACT_TAU = 1e-3, 0.99


def ensure_peer_venv(python: Path, create: bool) -> Path:
    """The peers' interpreter; with `create`, make the venv (its own transformers 4.x) and install them."""
    if python.is_file():
        return python
    if not create:
        raise SystemExit(f"no peer interpreter at {python}; pass --create-peer-venv to build it there "
                         f"(pip install {' '.join(PEER_PACKAGES)}), or --peer-python PATH.")
    venv = python.parents[1]
    # System site-packages: reuse the machine's CPU torch instead of downloading a CUDA build.
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", *PEER_PACKAGES], check=True)
    return python


class Worker:
    """One process holding the systems of one virtual environment, asked to score at a given size."""

    def __init__(self, names: list[str], python: Path, spec_path: Path, log: Path) -> None:
        self.log = log.open("w")
        self.proc = subprocess.Popen([str(python), str(WORKER), ",".join(names), str(spec_path)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, text=True,
                                     cwd=REPO)
        self.settings: dict[str, str | None] = {}
        self.failed: dict[str, str] = {}
        while not (message := self._read()).get("ready"):
            if "error" in message:
                self.failed[message["system"]] = message["error"]
                print(f"  FAILED {message['system']}: {message['error'][:200]}", flush=True)
            else:
                self.settings[message["system"]] = message["setting"]
                print(f"  loaded {message['system']} in {message['load_s']:.1f} s", flush=True)

    def _read(self) -> dict:
        for line in self.proc.stdout:  # type: ignore[union-attr]
            if line.startswith("@@"):
                return json.loads(line[2:])
        raise RuntimeError(f"worker exited ({self.proc.wait()}); see {self.log.name}")

    def run(self, name: str, size: int) -> tuple[float, np.ndarray]:
        self.proc.stdin.write(f"run\t{name}\t{size}\n")  # type: ignore[union-attr]
        self.proc.stdin.flush()  # type: ignore[union-attr]
        answer = self._read()
        return answer["seconds"], np.asarray(answer["scores"], dtype=np.float64)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()  # type: ignore[union-attr]
            self.proc.wait(timeout=120)
        self.log.close()


def alternate(workers: dict[str, Worker], sizes: dict[str, list[int]], rounds: int
              ) -> tuple[dict[str, int], dict[str, float], dict[str, np.ndarray]]:
    """Sweep each system's sizes once, then `rounds` at its best size, systems alternating throughout.

    Returns each system's best size, its best seconds at that size, and its last output.
    """
    times: dict[str, dict[int, list[float]]] = {n: {} for n in workers}
    outputs: dict[str, np.ndarray] = {}
    for step in range(max(len(s) for s in sizes.values())):
        for name, worker in workers.items():
            if step < len(sizes[name]):
                seconds, outputs[name] = worker.run(name, sizes[name][step])
                times[name].setdefault(sizes[name][step], []).append(seconds)
    best = {n: min(t, key=lambda size: min(t[size])) for n, t in times.items()}
    for _ in range(rounds):
        for name, worker in workers.items():
            seconds, outputs[name] = worker.run(name, best[name])
            times[name][best[name]].append(seconds)
    return best, {n: min(times[n][best[n]]) for n in workers}, outputs


def start_workers(groups: dict[Path, list[str]], spec_path: Path, work: Path
                  ) -> tuple[dict[str, Worker], dict[str, str], list[Worker]]:
    """One worker per interpreter; returns system → its worker, the systems that failed, the workers."""
    by_system: dict[str, Worker] = {}
    failed: dict[str, str] = {}
    processes = []
    for number, (python, names) in enumerate(groups.items()):
        worker = Worker(names, python, spec_path, work / f"{spec_path.stem}-worker{number}.log")
        processes.append(worker)
        failed.update(worker.failed)
        by_system.update({n: worker for n in worker.settings})
    return by_system, failed, processes


def _kendall(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import kendalltau

    return float(kendalltau(a, b).statistic)


def cross_encoder(args, work: Path) -> list[dict]:
    candidates = load_dl20()[0]
    queries = candidates["query"].to_pylist()[: args.pairs]
    docs = candidates["text"].to_pylist()[: args.pairs]
    ours = minilm_cross_encoder(work / "minilm-1logit")
    peer_model = work / "peer-model"  # a copy: the peers write onnx/ and openvino/ folders into theirs
    if not peer_model.is_dir():
        shutil.copytree(ours, peer_model)
    spec = {"queries": queries, "docs": docs, "our_model": str(ours), "peer_model": str(peer_model),
            "work": str(work), "threads": args.threads, "max_length": 512, "warmup_size": 32, "warmup_budget": 4096,
            "calibration": candidates["text"].to_pylist()[args.pairs: args.pairs + args.calibration]}
    spec_path = work / "spec.json"
    spec_path.write_text(json.dumps(spec))
    wanted = [s for s in SYSTEMS if not args.systems or s[0] in args.systems or s[0] == PLAIN]
    groups: dict[Path, list[str]] = {}
    for name, in_peer_venv, _ in wanted:
        groups.setdefault(args.peer_python if in_peer_venv else Path(sys.executable), []).append(name)
    workers, failed, processes = start_workers(groups, spec_path, work)
    if PLAIN not in workers:
        raise SystemExit(f"the reference ({PLAIN}) did not load: {failed.get(PLAIN)}")
    try:
        sizes = {n: (args.token_budgets if n.startswith("rayrank") else [0] if n.startswith("flashrank")
                     else args.batch_sizes) for n in workers}
        best, seconds, scores = alternate(workers, sizes, args.rounds)
    finally:
        for process in processes:
            process.close()
    plain_time = seconds[PLAIN]
    reference = scores[PLAIN]
    rows = []
    for name, _, quantized in wanted:
        if name not in workers:
            rows.append({"system": name, "setting": "failed to load (see log)", "size": "", "pairs/s": "",
                         "× plain": "", "max abs Δ": "", "τ": "", "class": ""})
            continue
        delta = float(np.abs(scores[name] - reference).max())
        tau = _kendall(scores[name], reference)
        near = delta <= NEAR_EXACT_DELTA and tau >= NEAR_EXACT_TAU
        rows.append({"system": name, "setting": workers[name].settings[name] or "", "size": best[name] or "per query",
                     "pairs/s": len(queries) / seconds[name], "× plain": plain_time / seconds[name],
                     "max abs Δ": f"{delta:.1e}",
                     "τ": tau, "class": "quantized" if quantized else ("near-exact" if near else "inexact")})
    return rows


def summary(rows: list[dict]) -> list[str]:
    """The issue's goals as ratios of this run's figures."""
    timed = [r for r in rows if r["pairs/s"] != ""]
    lines = []
    for cls in ("near-exact", "quantized"):
        ours = [r for r in timed if r["class"] == cls and r["system"].startswith("rayrank")]
        peers = [r for r in timed if r["class"] == cls and not r["system"].startswith("rayrank")]
        if ours and peers:
            a, b = max(ours, key=lambda r: r["pairs/s"]), max(peers, key=lambda r: r["pairs/s"])
            lines.append(f"fastest {cls}: {a['system']} {a['pairs/s']:.1f} pairs/s vs {b['system']} "
                         f"{b['pairs/s']:.1f} = {a['pairs/s'] / b['pairs/s']:.2f}× (goal ≥ 1.20×)")
    return lines


def _flat(embeddings: list[np.ndarray]) -> dict[str, np.ndarray]:
    return {"flat": np.concatenate(embeddings).astype(np.float16), "sizes": np.array([len(e) for e in embeddings])}


def _unflat(data) -> list[np.ndarray]:
    return np.split(data["flat"], np.cumsum(data["sizes"])[:-1])


def late_encoding(args, work: Path, texts: list[str], model: str) -> list[dict]:
    """Docs/s of PyLate's ColBERT encoder against ours on the same SciFact abstracts, round-robin.

    Both keep the same number of document tokens: PyLate's own default (180) would encode fewer tokens
    than our default, the model's 256, and make it look faster than it is.
    """
    import rayrank

    length = rayrank.Reranker(model, scorer="late-interaction", backend="torch").scorer.document_max_length
    spec = {"li_docs": texts, "li_model": model, "li_document_length": length, "threads": args.threads,
            "work": str(work), "warmup_size": 16, "warmup_budget": 4096}
    spec_path = work / "li-spec.json"
    spec_path.write_text(json.dumps(spec))
    groups = {args.li_python: ["pylate ColBERT encode"],
              Path(sys.executable): ["rayrank encode_documents torch fp32", "rayrank encode_documents auto",
                                     "rayrank encode_documents onnx int8"]}
    workers, failed, processes = start_workers(groups, spec_path, work)
    if "pylate ColBERT encode" not in workers:
        raise SystemExit(f"PyLate did not load: {failed.get('pylate ColBERT encode')}")
    try:
        sizes = {n: (args.token_budgets if n.startswith("rayrank") else args.batch_sizes) for n in workers}
        best, seconds, _ = alternate(workers, sizes, args.rounds)
    finally:
        for process in processes:
            process.close()
    base = seconds["pylate ColBERT encode"]
    return [{"encoder": n, "setting": workers[n].settings[n] or "", "size": best[n], "docs/s": len(texts) / seconds[n],
             "× PyLate": base / seconds[n]} for n in workers]


def synthetic_corpus(docs: int, queries: int, dim: int = 128, topics: int = 1024, seed: int = 0):
    """Token embeddings that cluster around topics like real ones; each query is a noisy part of one document.

    Noise is relative to what it perturbs: a document token is its topic centre (per-dimension scale 1)
    plus 0.5 of that scale; a query token is a unit document token (per-dimension scale 1/sqrt(dim))
    plus 0.3 of that scale (cosine about 0.96 to its source token). Until 2026-12 the query noise was 0.3
    per dimension against 1/sqrt(dim) of signal (cosine about 0.28): queries were mostly noise.
    """
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((topics, dim)).astype(np.float32)
    unit = lambda x: (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float16)
    sizes = rng.integers(8, 49, size=docs)
    doc_topics = rng.integers(0, topics, size=(docs, 4))  # each document mixes 4 topics
    flat = np.empty((int(sizes.sum()), dim), np.float16)
    at = 0
    for i, n in enumerate(sizes):
        picked = centres[doc_topics[i, rng.integers(0, 4, size=n)]]
        flat[at:at + n] = unit(picked + 0.5 * rng.standard_normal((n, dim)).astype(np.float32))
        at += n
    documents = np.split(flat, np.cumsum(sizes)[:-1])
    sources = rng.integers(0, docs, size=queries)
    query_list = [unit(documents[d][rng.integers(0, len(documents[d]), size=8)].astype(np.float32)
                       + 0.3 / np.sqrt(dim) * rng.standard_normal((8, dim)).astype(np.float32)).astype(np.float32)
                  for d in sources]
    return documents, query_list


PEER_NAMES = {"fastplaid": "FastPlaid", "warp": "xtr-warp-rs"}


def run_peer(args, work: Path, peer: str, name: str, settings: list[dict]) -> tuple[list[dict], str]:
    """Build and search one peer in its own interpreter on `name`'s saved embeddings.

    Returns its `@@` records (a build record, then one per setting) and, if it stopped early, why.
    """
    spec = {"threads": args.threads, "cases": [{
        "name": name, "docs": str(work / f"{name}-docs.npz"), "queries": str(work / f"{name}-queries.npz"),
        "index": str(work / f"{peer}-{name}"), "k": 100, "rounds": args.rounds, "settings": settings,
        "reuse": args.reuse_peer_index, "build": {"fastplaid": args.plaid_build, "warp": args.warp_build}[peer]}]}
    (work / f"{peer}-{name}.json").write_text(json.dumps(spec))
    python = {"fastplaid": args.plaid_python, "warp": args.warp_python}[peer]
    with (work / f"{peer}-{name}.log").open("w") as log:
        try:
            done = subprocess.run([str(python), str(WORKER), peer, str(work / f"{peer}-{name}.json")],
                                  stdout=subprocess.PIPE, stderr=log, text=True, cwd=REPO, timeout=args.peer_timeout)
            out, stopped = done.stdout, "" if done.returncode == 0 else f"exited {done.returncode} (see log)"
        except subprocess.TimeoutExpired as exc:  # what it printed before counts
            out, stopped = (exc.stdout or b"").decode(), f"stopped after {args.peer_timeout:g} s"
    return [json.loads(line[2:]) for line in out.splitlines() if line.startswith("@@")], stopped


def parse_settings(text: str) -> list[dict]:
    """'default;KEY=VALUE,KEY=VALUE;...' → [{}, {KEY: VALUE, ...}, ...] (numbers with a '.' are floats)."""
    return [{} if item == "default" else
            {k: (float(v) if "." in v else int(v)) for k, v in (kv.split("=") for kv in item.split(","))}
            for item in text.split(";")]


def _label(setting: dict) -> str:
    return ", ".join(f"{k} {v:,}" if isinstance(v, int) else f"{k} {v}" for k, v in setting.items()) or "its defaults"


def _bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def late_search(args, work: Path, name: str, documents: list[np.ndarray], queries: list[np.ndarray],
                qrels=None, doc_ids: list[str] | None = None, query_ids: list[str] | None = None) -> list[dict]:
    """Index build s, bytes per token and queries/s of ours (exact, IVF) and each peer on the same embeddings.

    Quality: nDCG@10/Recall@100 against qrels where given; always Recall@100 against our exact search.
    """
    from rayrank.evaluate import evaluate
    from rayrank.index import IndexReader, IvfSearcher, exact_search
    from rayrank.index.build import write_index

    k = 100
    doc_ids = doc_ids or [str(i) for i in range(len(documents))]
    tokens = sum(len(d) for d in documents)
    root = work / f"ix-{name}"
    shutil.rmtree(root, ignore_errors=True)
    started = time.perf_counter()
    write_index(str(root), doc_ids, documents, compression=args.compression, nbits=args.nbits,
                centroids=args.centroids)
    build = time.perf_counter() - started
    reader = IndexReader(str(root))
    started = time.perf_counter()
    IvfSearcher(reader)
    ivf_build = time.perf_counter() - started  # postings: built when a searcher opens the index
    ours = "rayrank" + (f" {args.nbits}-bit residual" if args.compression == "residual" else " fp16")

    np.savez(work / f"{name}-docs.npz", **_flat(documents))
    np.savez(work / f"{name}-queries.npz", **_flat(queries))

    failures, peer_results = [], {}  # the peers first: their builds are the long part
    for peer in args.late_peers:
        records, stopped = run_peer(args, work, peer, name, {"fastplaid": args.plaid, "warp": args.warp}[peer])
        built = next((r for r in records if "build_s" in r), None)
        reused = " (index of an earlier run)" if built and built.get("reused") else ""
        for found in records:
            if "setting" in found:
                peer_results[f"{PEER_NAMES[peer]} {_label(found['setting'])}{reused}"] = (
                    built["build_s"], built["bytes"] / tokens, found["search_s"],
                    [[doc_ids[d] for d in h] for h in found["hits"]])
        if stopped:
            failures.append((PEER_NAMES[peer], stopped if built else f"{stopped} while building"))

    def timed(fn):
        fn(queries[:4])  # warm-up, as the peers get
        best, out = float("inf"), None
        for _ in range(args.rounds):
            started = time.perf_counter()
            out = fn(queries)
            best = min(best, time.perf_counter() - started)
        return best, out

    exact_s, exact_hits = timed(lambda q: exact_search(reader, q, k))
    exact_sets = [set(h.doc_ids) for h in exact_hits]
    size = _bytes(root) / tokens
    results = {f"{ours} exact": (build, size, exact_s, [h.doc_ids for h in exact_hits])}
    for nprobe, candidates in args.ivf:
        ivf = IvfSearcher(reader, nprobe, candidates)
        ivf_s, ivf_hits = timed(lambda q: ivf.search(q, k))
        results[f"{ours} IVF nprobe {nprobe}, {candidates:,} candidates"] = (
            build + ivf_build, size, ivf_s, [h.doc_ids for h in ivf_hits])
    results.update(peer_results)
    rows, corpus = [], f"{name} ({len(documents):,} docs)"
    for system, (build_s, per_token, search_s, hits) in results.items():
        row = {"corpus": corpus, "search": system, "build s": build_s,
               "bytes/token": per_token, "queries/s": len(queries) / search_s,
               "R@100 vs exact": float(np.mean([len(set(h) & e) / len(e) for h, e in zip(hits, exact_sets)]))}
        if qrels is not None:
            run = {qid: {d: float(k - r) for r, d in enumerate(h)} for qid, h in zip(query_ids, hits)}
            metrics = evaluate(run, qrels)
            row.update({"nDCG@10": metrics.ndcg_at_10, "R@100": metrics.recall_at_100})
        rows.append(row)
    for peer, why in failures:
        rows.append({**dict.fromkeys(rows[0], ""), "corpus": corpus, "search": f"{peer}: {why}"})
    return rows


def late_summary(rows: list[dict], bar: float = 0.95, goal: float = 1.5) -> str:
    """The issue's goal as a ratio: our fastest row at Recall@100 ≥ `bar` of exact against the fastest peer's."""
    ok = [r for r in rows if r["queries/s"] != "" and r["R@100 vs exact"] >= bar]
    ours = [r for r in ok if r["search"].startswith("rayrank")]
    peers = [r for r in ok if not r["search"].startswith("rayrank")]
    if not ours:
        return f"no rayrank setting reached Recall@100 {bar} of exact"
    a = max(ours, key=lambda r: r["queries/s"])
    if not peers:
        return f"fastest at R@100 ≥ {bar}: {a['search']} {a['queries/s']:.1f} queries/s; no peer setting reached {bar}"
    b = max(peers, key=lambda r: r["queries/s"])
    ratio = a["queries/s"] / b["queries/s"]
    return (f"fastest at R@100 ≥ {bar}: {a['search']} {a['queries/s']:.1f} queries/s vs {b['search']} "
            f"{b['queries/s']:.1f} = {ratio:.2f}× (goal ≥ {goal}×: {'met' if ratio >= goal else 'not met'})")


def late_interaction(args, work: Path) -> None:
    import pyarrow.parquet as pq

    from rayrank.models import resolve_model

    corpus = pq.read_table(SCIFACT / "corpus.parquet")
    texts = [f"{t} {x}" for t, x in zip(corpus["title"].to_pylist(), corpus["text"].to_pylist())]
    model = str(resolve_model(MINILM).path)
    if "encode" in args.late_parts:
        print(table(late_encoding(args, work, texts[: args.li_docs], model)), flush=True)
    if "scifact" in args.late_parts:
        scifact_search(args, work, corpus, texts)
    if "synthetic" in args.late_parts and args.synthetic_docs:
        documents, synthetic_queries = synthetic_corpus(args.synthetic_docs, args.synthetic_queries)
        rows = late_search(args, work, "synthetic", documents, synthetic_queries)
        print(table(rows), late_summary(rows), sep="\n", flush=True)


def scifact_search(args, work: Path, corpus, texts: list[str]) -> None:
    """Search on our token embeddings of the whole SciFact corpus (encoded once, cached in `work`)."""
    import pyarrow.parquet as pq

    import rayrank
    from rayrank.evaluate import load_qrels

    cached = work / "scifact-embeddings.npz"
    queries = pq.read_table(SCIFACT / "queries.test.parquet")
    if not cached.is_file():  # the whole corpus once with our engine (not timed here)
        scorer = rayrank.Reranker(MINILM, scorer="late-interaction", threads=args.threads,
                                  cache_dir=str(work / "rayrank-cache")).scorer
        docs = scorer.encode_documents(texts)
        q = scorer.encode_queries(queries["query"].to_pylist())
        np.savez(cached, docs_flat=np.concatenate(docs), docs_sizes=[len(d) for d in docs],
                 q_flat=np.concatenate(q), q_sizes=[len(x) for x in q])
    data = np.load(cached)
    docs = _unflat({"flat": data["docs_flat"], "sizes": data["docs_sizes"]})
    q = [x.astype(np.float32) for x in _unflat({"flat": data["q_flat"], "sizes": data["q_sizes"]})]
    rows = late_search(args, work, "SciFact", docs, q, load_qrels(SCIFACT / "qrels.test.txt"),
                       corpus["doc_id"].to_pylist(), queries["query_id"].to_pylist())
    print(table(rows, floats="{:.3f}"), late_summary(rows), sep="\n", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=300, help="first N DL20 pairs")
    parser.add_argument("--rounds", type=int, default=3, help="alternating timed rounds after the sweep")
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads of every system")
    parser.add_argument("--batch-sizes", type=lambda s: [int(x) for x in s.split(",")], default=[16, 32, 64, 128],
                        help="batch sizes swept for the peers")
    parser.add_argument("--token-budgets", type=lambda s: [int(x) for x in s.split(",")], default=[2048, 4096, 8192],
                        help="max_tokens_per_batch values swept for rayrank")
    parser.add_argument("--peer-python", type=Path, default=REPO / ".venvs" / "peers" / "bin" / "python",
                        help="interpreter of the cross-encoder peers' virtual environment (never ours: transformers "
                             "4.x; default .venvs/peers in the repository, made by --create-peer-venv)")
    parser.add_argument("--calibration", type=int, default=64,
                        help="DL20 passages (after the timed pairs) calibrating the peers' static int8")
    parser.add_argument("--create-peer-venv", action="store_true", help="create --peer-python's venv if absent")
    parser.add_argument("--systems", type=lambda s: s.split(","), default=None,
                        help="comma-separated subset of systems (plain predict always runs: it is the reference)")
    parser.add_argument("--work-dir", type=Path, default=None, help="keep exports and logs here (reused)")
    parser.add_argument("--part", choices=["all", "cross-encoder", "decoder", "late"], default="all")
    parser.add_argument("--li-python", type=Path,
                        help="interpreter of PyLate's virtual environment (pip install pylate); needed by the "
                             "late part's encode")
    parser.add_argument("--plaid-python", type=Path,
                        help="interpreter of FastPlaid's own virtual environment (pip install fast-plaid; it pins "
                             "its torch); needed when --late-peers has fastplaid")
    parser.add_argument("--warp-python", type=Path,
                        help="interpreter of xtr-warp-rs' own virtual environment (pip install xtr-warp-rs; it "
                             "pins its torch); needed when --late-peers has warp")
    parser.add_argument("--li-docs", type=int, default=300, help="SciFact abstracts for the encoding timing")
    parser.add_argument("--synthetic-docs", type=int, default=100_000, help="synthetic corpus size (0: skip)")
    parser.add_argument("--late-parts", type=lambda s: s.split(","), default=["encode", "scifact", "synthetic"],
                        help="comma-separated: encode (docs/s vs PyLate), scifact and synthetic (search)")
    parser.add_argument("--late-peers", type=lambda s: [x for x in s.split(",") if x], default=list(PEER_NAMES),
                        help="comma-separated search peers, each run in its own interpreter: fastplaid, warp "
                             "(default both; empty: ours only)")
    parser.add_argument("--peer-timeout", type=float, default=1800,
                        help="seconds a search peer may take per corpus, build included; what it finished "
                             "before is kept")
    parser.add_argument("--reuse-peer-index", action="store_true",
                        help="search a peer's index that an earlier run built from the same corpus in --work-dir, "
                             "reporting that run's build seconds (to rerun searches without the peers' long builds)")
    parser.add_argument("--synthetic-queries", type=int, default=100)
    parser.add_argument("--centroids", type=int, default=None, help="our IVF centroids (default: the index job's)")
    pairs = lambda text: [tuple(int(x) for x in item.split(":")) for item in text.split(",")]
    parser.add_argument("--ivf", type=pairs, default=[(2, 256), (2, 512), (2, 800), (2, 1024)],
                        help="our IVF settings NPROBE:CANDIDATES,... (default: 2:256,2:512,2:800,2:1024; "
                             "800 candidates is IvfSearcher's default at k 100 up to 65,536 documents)")
    parser.add_argument("--plaid", type=parse_settings, default=[{}, {"n_ivf_probe": 16, "n_full_scores": 8192},
                                                            {"n_ivf_probe": 32, "n_full_scores": 16384}],
                        help="FastPlaid search settings, ';'-separated, each 'default' or KEY=VALUE,... of its "
                             "search() (default: default;n_ivf_probe=16,n_full_scores=8192;"
                             "n_ivf_probe=32,n_full_scores=16384; its defaults are 8 and 4096)")
    parser.add_argument("--warp", type=parse_settings, default=[{}, {"nprobe": 16}, {"nprobe": 32}],
                        help="xtr-warp-rs search settings, same form, keywords of its search() (nprobe, t_prime, "
                             "bound, max_candidates, centroid_score_threshold; default: default;nprobe=16;nprobe=32;"
                             "its defaults follow the index's density). Every setting runs with num_threads = "
                             "--threads")
    parser.add_argument("--plaid-build", type=lambda text: parse_settings(text)[0], default={},
                        help="FastPlaid create() keywords for its index build, KEY=VALUE,... (default: its own)")
    parser.add_argument("--warp-build", type=lambda text: parse_settings(text)[0], default={},
                        help="xtr-warp-rs create() keywords for its index build, KEY=VALUE,... (default: its own; "
                             "codec_sample_max_tokens=40000 keeps a 384-d codec sample under torch.quantile()'s "
                             "16.7M elements, which its default of 1,000,000 exceeds)")
    parser.add_argument("--compression", choices=["none", "residual"], default="none",
                        help="our index's compression for the search part")
    parser.add_argument("--nbits", type=int, default=2, help="our residual bits with --compression residual")
    args = parser.parse_args(argv)
    if args.part in ("all", "late"):
        needed = {"--li-python": args.li_python if "encode" in args.late_parts else True,
                  "--plaid-python": args.plaid_python if "fastplaid" in args.late_peers else True,
                  "--warp-python": args.warp_python if "warp" in args.late_peers else True}
        missing = [flag for flag, given in needed.items() if given is None]
        if missing:
            parser.error(f"the late part needs {', '.join(missing)} (each peer's own interpreter; "
                         "see docs/benchmarks/late-interaction.md), or leave that peer out")
    if load_dl20() is None:
        print(skip_message(DL20))
        return 0
    if args.part in ("all", "cross-encoder"):
        args.peer_python = ensure_peer_venv(args.peer_python, args.create_peer_venv)
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="rayrank-bench-peers-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"pairs={args.pairs} rounds={args.rounds} threads={args.threads} batch sizes={args.batch_sizes} "
          f"token budgets={args.token_budgets} work={work} load={load_average()}", flush=True)
    if args.part in ("all", "cross-encoder"):
        rows = cross_encoder(args, work)
        print(table(rows))
        print("\n".join(summary(rows)))
        print(f"near-exact: max |Δ| ≤ {NEAR_EXACT_DELTA} and τ ≥ {NEAR_EXACT_TAU} against plain fp32 predict; "
              f"load={load_average()}", flush=True)
    if args.part in ("all", "decoder"):
        import decoder

        rows = decoder.decoder_rows(args.pairs, args.rounds, args.threads, [16, 32, 64], [2048, 4096], work)
        print(table(rows))
        print(decoder.summary(rows) + f"; load={load_average()}", flush=True)
    if args.part in ("all", "late"):
        late_interaction(args, work)
    print(f"load at end={load_average()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
