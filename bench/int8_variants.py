"""Which int8 scheme keeps a cross-encoder's ranking, and what it costs on this CPU.

The peers bench's quantized goal asks Kendall τ ≥ 0.9 against fp32 on the MiniLM-L6-shaped
cross-encoder. This bench runs onnxruntime int8 variants of that one model through the engine (same
token-budget batches, same 2 threads) on the first `--pairs` DL20 pairs, round-robin, and prints
pairs/s, × fp32, max |Δ logit| and τ:

- the engine's `quantize="int8"` (dynamic, per-channel int8 weights; 7-bit where the CPU lacks VNNI);
- dynamic with uint8 weights (8-bit without the int16 saturation of uint8 × int8 on AVX2);
- `MatMulNBits` 8-bit weights in blocks with int8 compute (`accuracy_level` 4): each token's
  activations are quantized per block of the block size, not with one range for the whole tensor.

    python bench/int8_variants.py --pairs 300 --rounds 3

`MatMulNBits` needs the `onnx-ir` package (onnxruntime's quantizer imports it); without it those
rows are skipped. The fused attention's packed QKV stays fp32 in those rows (it is no MatMul node).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np
from _common import DL20, interleaved, load_average, load_dl20, minilm_cross_encoder, skip_message, table


def _dynamic(src: Path, dst: Path, **options) -> Path:
    import onnx
    from onnxruntime.quantization import quantize_dynamic

    quantize_dynamic(str(src), str(dst), per_channel=True, extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
                     **options)
    return dst


def _nbits(src: Path, dst: Path, block: int) -> Path:
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    quantizer = MatMulNBitsQuantizer(onnx.load(str(src)), bits=8, block_size=block, is_symmetric=True,
                                     accuracy_level=4)
    quantizer.process()
    quantizer.model.save_model_to_file(str(dst), use_external_data_format=False)
    return dst


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--token-budget", type=int, default=2048)
    parser.add_argument("--work-dir", type=Path, default=None, help="keeps the model and exports between runs")
    args = parser.parse_args(argv)
    data = load_dl20()
    if data is None:
        print(skip_message(DL20))
        return 0
    from onnxruntime.quantization import QuantType
    from scipy.stats import kendalltau

    import rayrank
    from rayrank.backends.onnx_backend import OnnxBackend

    work = args.work_dir or Path(tempfile.mkdtemp(prefix="rayrank-int8-"))
    work.mkdir(parents=True, exist_ok=True)
    queries = data[0]["query"].to_pylist()[: args.pairs]
    docs = data[0]["text"].to_pylist()[: args.pairs]
    reranker = rayrank.Reranker(str(minilm_cross_encoder(work / "minilm-1logit")), backend="onnx", quantize="int8",
                                threads=args.threads, max_tokens_per_batch=args.token_budget,
                                cache_dir=str(work / "cache"))
    shipped = reranker.scorer.backend.path
    fp32 = shipped.parent.with_name("fp32") / "model.onnx"
    files = {"fp32 (engine onnx)": fp32, f"engine int8 ({shipped.parent.name})": shipped,
             "dynamic, uint8 weights": _dynamic(fp32, work / "u8.onnx", weight_type=QuantType.QUInt8)}
    try:
        files.update({f"MatMulNBits 8-bit, block {b}": _nbits(fp32, work / f"nbits8-{b}.onnx", b) for b in (32, 128)})
    except ImportError as exc:
        print(f"MatMulNBits rows skipped: {exc} (pip install onnx-ir)")
    backends = {name: OnnxBackend(path, device="cpu", threads=args.threads) for name, path in files.items()}

    def scorer(backend):
        def run():
            reranker.scorer.backend = backend
            return reranker.score_pairs(queries, docs).scores
        return run

    print(f"load average at start: {load_average()}", flush=True)
    for backend in backends.values():  # warm-up
        scorer(backend)()
    results = interleaved({name: scorer(b) for name, b in backends.items()}, args.rounds)
    base_s, reference = results["fp32 (engine onnx)"]
    rows = [{"variant": name, "pairs/s": len(queries) / s, "× fp32": base_s / s,
             "max abs Δ": f"{np.abs(out - reference).max():.1e}", "τ": float(kendalltau(out, reference).statistic)}
            for name, (s, out) in results.items()]
    print(table(rows))
    print(f"load average at end: {load_average()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
