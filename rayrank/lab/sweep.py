"""Throughput of one model over a grid of batch sizes × token budgets, on the same pairs, and its plot."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rayrank.extras import require

BATCH_SIZES = (8, 16, 32, 64)
TOKEN_BUDGETS = (4096, 8192, 16384)


def sweep(model: str, scorer: str, queries: Sequence[str], documents: Sequence[str],
          batch_sizes: Sequence[int] = BATCH_SIZES, token_budgets: Sequence[int] = TOKEN_BUDGETS,
          repeats: int = 1, **engine: Any) -> list[dict[str, Any]]:
    """Pairs/s for every (max_batch_size, max_tokens_per_batch); best of `repeats` timed runs each.

    The model is loaded once; each setting is timed on a fresh `Reranker` config over the same
    weights (first a warm-up on a few pairs, so lazy initialisation is not timed).
    """
    from rayrank import Reranker

    base = Reranker(model, scorer=scorer, **engine)
    rows = []
    for budget in token_budgets:
        for batch in batch_sizes:
            # Batching reads only these two fields; reusing the loaded backend keeps weights identical.
            base.scorer.config = base.config.model_copy(update={"max_batch_size": batch,
                                                                "max_tokens_per_batch": budget})
            base.score_pairs(queries[:batch], documents[:batch])
            best = float("inf")
            for _ in range(repeats):
                started = time.perf_counter()
                base.score_pairs(queries, documents)
                best = min(best, time.perf_counter() - started)
            rows.append({"batch_size": batch, "max_tokens_per_batch": budget, "seconds": round(best, 4),
                         "pairs_per_s": round(len(queries) / best, 2)})
    return rows


def best(rows: list[dict[str, Any]]) -> dict[str, Any]:
    return max(rows, key=lambda r: r["pairs_per_s"])


def plot(rows: list[dict[str, Any]], path: str | Path, title: str) -> Path:
    """Pairs/s against batch size, one line per token budget, written as a PNG."""
    matplotlib = require("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for budget in sorted({r["max_tokens_per_batch"] for r in rows}):
        mine = sorted((r for r in rows if r["max_tokens_per_batch"] == budget), key=lambda r: r["batch_size"])
        ax.plot([r["batch_size"] for r in mine], [r["pairs_per_s"] for r in mine], marker="o",
                label=f"{budget} tokens/batch")
    top = best(rows)
    ax.scatter([top["batch_size"]], [top["pairs_per_s"]], s=120, facecolors="none", edgecolors="black",
               label="best")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("max batch size (pairs)")
    ax.set_ylabel("pairs/s")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
