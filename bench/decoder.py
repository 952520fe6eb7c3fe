"""Decoder rerankers: rayrank against sentence-transformers' `CrossEncoder.predict` on the same weights.

The model is Qwen3-Reranker-0.6B's shape scaled down to run in minutes on 2 cores (random weights,
seeded): 28 → 8 layers, hidden 1024 → 256, 16/8 → 4/2 query/key-value heads of 64, MLP 3072 → 768,
the full 151,669-row tied vocabulary, a byte-level BPE tokenizer trained on the DL20 passages, and
the Qwen3-Reranker prompt as a chat template (`rayrank.prompts.QWEN3_RERANKER_CHAT_TEMPLATE`), so
both systems build the same prompt. sentence-transformers ≥ 5.4 scores it as `LogitScore` (yes − no
at the last token, left padding, length-sorted fixed batches); rayrank with its collapsed head, right
padding and token-budget batches on each CPU backend. Every contender runs in this process at the same
thread count, round-robin, the best round counting. Run alone, or as `bench/peers.py --part decoder`:

    flock /tmp/rayrank-bench.lock python bench/decoder.py --pairs 300 --rounds 2
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np
from _common import DL20, interleaved, load_average, load_dl20, skip_message, table

# Qwen/Qwen3-Reranker-0.6B's config.json (what bench/gpu.py --decoder times), and the CPU scale of it.
QWEN3_RERANKER_0_6B = {"hidden_size": 1024, "intermediate_size": 3072, "num_hidden_layers": 28,
                       "num_attention_heads": 16, "num_key_value_heads": 8, "head_dim": 128, "vocab_size": 151_669,
                       "max_position_embeddings": 40_960, "tie_word_embeddings": True, "rope_theta": 1_000_000,
                       "rms_norm_eps": 1e-6}
SHAPE = {**QWEN3_RERANKER_0_6B, "hidden_size": 256, "intermediate_size": 768, "num_hidden_layers": 8,
         "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 64}
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
NEAR_EXACT_DELTA, NEAR_EXACT_TAU = 1e-3, 0.99


def qwen3_reranker_shaped(folder: Path, texts: list[str], shape: dict = SHAPE, seed: int = 0) -> Path:
    """A Qwen3-Reranker-shaped checkpoint (random weights, a tokenizer trained on `texts`), written once."""
    if (folder / "config.json").is_file():
        return folder
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast, Qwen3Config, Qwen3ForCausalLM

    from rayrank.prompts import QWEN3_RERANKER_CHAT_TEMPLATE

    folder.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=32_000, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    # The prompt's own words (the template's text) become tokens too, as they are in Qwen's vocabulary.
    tok.train_from_iterator([*texts, *[QWEN3_RERANKER_CHAT_TEMPLATE] * 50, *["yes", "no"] * 100], trainer)
    tok.add_tokens(["<think>", "</think>"])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<|endoftext|>", eos_token="<|im_end|>",
                                   model_max_length=40_960)
    fast.chat_template = QWEN3_RERANKER_CHAT_TEMPLATE
    fast.save_pretrained(str(folder))
    torch.manual_seed(seed)
    model = Qwen3ForCausalLM(Qwen3Config(pad_token_id=fast.pad_token_id, **shape))
    model.eval().save_pretrained(str(folder))
    return folder


def _kendall(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import kendalltau

    return float(kendalltau(a, b).statistic)


def decoder_rows(pairs: int, rounds: int, threads: int, batch_sizes: list[int], budgets: list[int],
                 work: Path) -> list[dict[str, Any]]:
    """pairs/s, × predict, max |Δ| and τ against predict for every contender at its best size."""
    import torch
    from sentence_transformers import CrossEncoder

    import rayrank

    candidates = load_dl20()[0]
    queries, docs = candidates["query"].to_pylist()[:pairs], candidates["text"].to_pylist()[:pairs]
    model = qwen3_reranker_shaped(work / "qwen3-reranker-shaped", candidates["text"].to_pylist())
    torch.set_num_threads(threads)
    st = CrossEncoder(str(model), max_length=512, activation_fn=torch.nn.Identity())
    contenders = {}
    for size in batch_sizes:
        contenders[("st torch fp32 (predict)", size)] = lambda s=size: st.predict(
            list(zip(queries, docs)), batch_size=s, show_progress_bar=False)
    for backend in ("torch", "onnx", "openvino"):
        for budget in budgets:
            reranker = rayrank.Reranker(str(model), backend=backend, dtype="float32", threads=threads, max_length=512,
                                        max_tokens_per_batch=budget, cache_dir=str(work / "cache"))
            reranker.score_pairs(queries[:16], docs[:16])  # warm-up: thread pools, first shapes
            contenders[(f"rayrank {backend} fp32", budget)] = lambda r=reranker: r.score_pairs(queries, docs).scores
    timed = interleaved(contenders, rounds)
    best: dict[str, tuple[float, int, np.ndarray]] = {}
    for (name, size), (seconds, scores) in timed.items():
        if name not in best or seconds < best[name][0]:
            best[name] = (seconds, size, np.asarray(scores, dtype=np.float32))
    plain_seconds, _, reference = best["st torch fp32 (predict)"]
    rows = []
    for name, (seconds, size, scores) in best.items():
        delta, tau = float(np.abs(scores - reference).max()), _kendall(scores, reference)
        rows.append({"system": name, "size": f"{'batch' if name.startswith('st') else 'tokens'} {size}",
                     "pairs/s": pairs / seconds, "× predict": plain_seconds / seconds, "max abs Δ": f"{delta:.1e}",
                     "τ": tau, "near-exact": delta <= NEAR_EXACT_DELTA and tau >= NEAR_EXACT_TAU})
    return rows


def summary(rows: list[dict[str, Any]]) -> str:
    ours = [r for r in rows if r["system"].startswith("rayrank") and r["near-exact"]]
    if not ours:
        return "no near-exact rayrank setting"
    top = max(ours, key=lambda r: r["pairs/s"])
    return f"fastest near-exact rayrank: {top['system']} ({top['size']}) at {top['× predict']:.2f}x predict (goal 1.5x)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=300, help="first N DL20 pairs")
    parser.add_argument("--rounds", type=int, default=2, help="round-robin rounds, the best counts")
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads of every contender")
    parser.add_argument("--batch-sizes", type=lambda s: [int(x) for x in s.split(",")], default=[16, 32, 64])
    parser.add_argument("--token-budgets", type=lambda s: [int(x) for x in s.split(",")], default=[2048, 4096])
    parser.add_argument("--work-dir", type=Path, default=None, help="keep the model and exports here (reused)")
    args = parser.parse_args(argv)
    if load_dl20() is None:
        print(skip_message(DL20))
        return 0
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="rayrank-bench-decoder-"))
    print(f"decoder: pairs={args.pairs} rounds={args.rounds} threads={args.threads} load={load_average()}", flush=True)
    rows = decoder_rows(args.pairs, args.rounds, args.threads, args.batch_sizes, args.token_budgets, work)
    print(table(rows))
    print(summary(rows) + f"; near-exact: max |Δ| ≤ {NEAR_EXACT_DELTA} and τ ≥ {NEAR_EXACT_TAU} against predict; "
          f"load={load_average()}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
