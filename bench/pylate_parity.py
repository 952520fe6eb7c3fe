"""Does rayrank embed and score a ColBERT checkpoint exactly as PyLate does? Max |Δ| per checkpoint.

PyLate pins its own transformers and sentence-transformers, so it runs in a virtual environment of its
own; this file is both halves. In PyLate's environment it writes PyLate's token embeddings and MaxSim
scores (`--pylate-out DIR`: queries.npz, documents.npz, scores.json); in rayrank's it runs that half
through `--venv`, computes rayrank's on every backend asked for, and prints max |Δ| (fp32 goal ≤ 1e-4;
`score_pairs` included, which scores float32 documents as PyLate does):

    python -m venv VENV && cd VENV
    bin/pip install torch==2.13.0 pylate==1.2.0  # PyLate's dependencies on a CPU torch
    bin/pip install sentence-transformers==5.3.0 transformers==5.3.0 ujson==5.12.0  # what pylate 1.6.0 pins
    bin/pip install --no-deps pylate==1.6.0  # its fast-plaid (index search, unused here) pins torch 2.7
    python bench/pylate_parity.py --venv VENV --tiny /tmp/parity      # tiny Stanford + ModernBERT checkpoints
    python bench/pylate_parity.py --venv VENV path/to/colbertv2.0 --backends torch onnx

`--tiny DIR` writes the test suite's tiny random checkpoints (tests/tiny_colbert.py) and checks those.
Nothing here imports rayrank in PyLate's environment, nor PyLate in rayrank's.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]

QUERIES = ["what is ray", "  Fish of the SEA?  ", "how does a ray cluster rank a query for the new big model fast"]
DOCUMENTS = ["ray cluster python data", "the sea , the fish ; the sun !", "  A small cat. A big dog.  ",
             " ".join(["model", "query", "document", "search", "rank"] * 12)]


def pylate_half(checkpoint: str, out: Path) -> None:
    """PyLate's embeddings and pairwise MaxSim for every (query, document) pair."""
    from pylate import models, scores

    model = models.ColBERT(checkpoint, device="cpu", local_files_only=True)
    queries = model.encode(QUERIES, is_query=True, convert_to_numpy=True)
    documents = model.encode(DOCUMENTS, is_query=False, convert_to_numpy=True)
    pairs = [(q, d) for q in range(len(QUERIES)) for d in range(len(DOCUMENTS))]
    pair_scores = scores.colbert_scores_pairwise([queries[q] for q, _ in pairs], [documents[d] for _, d in pairs])
    out.mkdir(parents=True, exist_ok=True)
    np.savez(out / "queries.npz", *queries)
    np.savez(out / "documents.npz", *documents)
    (out / "scores.json").write_text(json.dumps([float(s) for s in pair_scores]))


def _arrays(path: Path) -> list[np.ndarray]:
    with np.load(path) as data:
        return [data[f"arr_{i}"] for i in range(len(data.files))]


def compare(checkpoint: str, reference: Path, backends: list[str], cache_dir: str) -> dict[str, float]:
    """rayrank's max |Δ| against PyLate's output, per backend: fp32 embeddings, their MaxSim, and `score_pairs`
    (which scores float16 documents, as indexes store them: not held to the fp32 goal)."""
    import rayrank
    from rayrank.scoring.late_interaction import maxsim

    want_q, want_d = _arrays(reference / "queries.npz"), _arrays(reference / "documents.npz")
    want_s = np.array(json.loads((reference / "scores.json").read_text()))
    queries = [q for q in QUERIES for _ in DOCUMENTS]
    documents = DOCUMENTS * len(QUERIES)
    result = {}
    for backend in backends:
        reranker = rayrank.Reranker(checkpoint, scorer="late-interaction", backend=backend, dtype="float32",
                                    cache_dir=cache_dir)
        got_q = reranker.scorer.encode_queries(QUERIES)
        got_d = reranker.scorer.encode_documents(DOCUMENTS, np.float32)
        shapes = [a.shape for a in got_q + got_d] == [a.shape for a in want_q + want_d]
        if not shapes:
            raise SystemExit(f"{checkpoint} ({backend}): token counts differ from PyLate's: "
                             f"{[a.shape for a in got_q + got_d]} vs {[a.shape for a in want_q + want_d]}")
        result[f"{backend} query emb"] = max(float(np.abs(g - w).max()) for g, w in zip(got_q, want_q))
        result[f"{backend} doc emb"] = max(float(np.abs(g - w).max()) for g, w in zip(got_d, want_d))
        ours = np.concatenate([maxsim(q, got_d) for q in got_q])
        result[f"{backend} MaxSim of fp32 embeddings"] = float(np.abs(ours - want_s).max())
        pair_scores = reranker.score_pairs(queries, documents).scores
        result[f"{backend} score_pairs"] = float(np.abs(pair_scores - want_s).max())
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("checkpoints", nargs="*", help="local checkpoint directories")
    parser.add_argument("--tiny", type=Path, help="write the tests' tiny Stanford and ModernBERT checkpoints here")
    parser.add_argument("--venv", required=True, help="PyLate's virtual environment (see above)")
    parser.add_argument("--backends", nargs="+", default=["torch", "onnx", "openvino", "auto"])
    parser.add_argument("--pylate-out", type=Path, help="(PyLate's half) write PyLate's output here and exit")
    args = parser.parse_args(argv)
    if args.pylate_out:
        pylate_half(args.checkpoints[0], args.pylate_out)
        return 0
    checkpoints = list(args.checkpoints)
    if args.tiny:
        sys.path.insert(0, str(REPO))
        from tests.tiny_colbert import make_pylate_modernbert, make_stanford_colbert

        checkpoints += [str(make_stanford_colbert(args.tiny / "stanford")),
                        str(make_pylate_modernbert(args.tiny / "pylate-modernbert"))]
    worst = 0.0
    for number, checkpoint in enumerate(checkpoints):
        reference = Path(args.tiny or "/tmp") / f"pylate-reference-{number}"
        subprocess.run([f"{args.venv}/bin/python", __file__, checkpoint, "--pylate-out", str(reference)],
                       check=True, env={**os.environ, "PYTHONPATH": ""})
        deltas = compare(checkpoint, reference, args.backends, str(reference / "onnx-cache"))
        for name, delta in deltas.items():
            print(f"{checkpoint}\t{name}\tmax |Δ| {delta:.2e}")
        worst = max(worst, *(d for name, d in deltas.items() if "fp16" not in name))
    print(f"worst fp32 max |Δ| {worst:.2e} ({'ok' if worst <= 1e-4 else 'ABOVE 1e-4'})")
    return 0 if worst <= 1e-4 else 1


if __name__ == "__main__":
    raise SystemExit(main())
