"""The systems of bench/peers.py that share a virtual environment, in one process, timed on request.

    python _peer_worker.py SYSTEM[,SYSTEM...] SPEC.json
    python _peer_worker.py fastplaid|warp SPEC.json   # late-interaction search, see peer_search

Loads each SYSTEM in turn (exporting what it needs into the spec's work folder first, then one
warm-up call) and prints one `@@` + JSON line per system (its setting and load seconds, or its
error), then `@@{"ready": true}`. Each stdin line `run<TAB>SYSTEM<TAB>SIZE` then scores the spec's
pairs once at batch size (ours: token budget) SIZE and prints `@@{"seconds": ..., "scores": [...]}`
(raw logits; encoders return token counts). The orchestrator alternates these requests across all
systems and processes, so every system sees the same load. One process per virtual environment:
the peers' (sentence-transformers 5.x with transformers 4.x, FlashRank), PyLate's, or ours. The
search peers (FastPlaid, xtr-warp-rs) each run in their own, one process per corpus (`peer_search`).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

Runner = Callable[[int], list[float]]


def _st(spec: dict, backend: str = "torch", file_name: str | None = None) -> Runner:
    import torch
    from sentence_transformers import CrossEncoder

    torch.set_num_threads(spec["threads"])
    kwargs = {"model_kwargs": {"file_name": file_name}} if file_name else {}
    model = CrossEncoder(spec["peer_model"], device="cpu", backend=backend, activation_fn=torch.nn.Identity(),
                         **kwargs)
    exported = {"onnx": "onnx/model.onnx", "openvino": "openvino/openvino_model.xml"}.get(backend)
    if exported and not file_name and not (Path(spec["peer_model"]) / exported).is_file():
        model.save_pretrained(spec["peer_model"])  # as sentence-transformers advises: export once
    pairs = list(zip(spec["queries"], spec["docs"]))
    return lambda size: model.predict(pairs, batch_size=size, show_progress_bar=False).tolist()


def _st_onnx_optimized(spec: dict, level: str) -> Runner:
    from sentence_transformers import CrossEncoder, export_optimized_onnx_model

    folder = spec["peer_model"]
    if not (Path(folder) / "onnx" / f"model_{level}.onnx").is_file():
        export_optimized_onnx_model(CrossEncoder(folder, backend="onnx", device="cpu"), level, folder)
    return _st(spec, "onnx", f"onnx/model_{level}.onnx")


def _st_onnx_qint8(spec: dict) -> Runner:
    from sentence_transformers import CrossEncoder, export_dynamic_quantized_onnx_model

    folder = spec["peer_model"]
    if not (Path(folder) / "onnx" / "model_qint8_avx512_vnni.onnx").is_file():
        export_dynamic_quantized_onnx_model(CrossEncoder(folder, backend="onnx", device="cpu"), "avx512_vnni", folder)
    return _st(spec, "onnx", "onnx/model_qint8_avx512_vnni.onnx")


def _st_openvino_qint8(spec: dict) -> Runner:
    """Static int8 with NNCF calibration, as sentence-transformers documents it; the calibration set
    is a local folder of DL20 passages (its default, GLUE SST-2, would need the Hugging Face hub)."""
    from optimum.intel import OVQuantizationConfig
    from sentence_transformers import CrossEncoder, export_static_quantized_openvino_model

    folder = spec["peer_model"]
    target = Path(folder) / "openvino" / "openvino_model_qint8_quantized.xml"
    if not target.is_file():
        calibration = Path(spec["work"]) / "calibration"
        calibration.mkdir(exist_ok=True)
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.table({"text": spec["calibration"]}), calibration / "train.parquet")
        model = CrossEncoder(folder, backend="openvino", device="cpu")
        export_static_quantized_openvino_model(model, OVQuantizationConfig(num_samples=len(spec["calibration"])),
                                               folder, dataset_name=str(calibration), dataset_config_name="default",
                                               dataset_split="train", column_name="text")
    return _st(spec, "openvino", "openvino/openvino_model_qint8_quantized.xml")


def _flashrank(spec: dict, quantized: bool) -> Runner:
    """FlashRank over the same weights, exported to the layout it reads from its cache folder.

    FlashRank names its files per model; `ms-marco-MiniLM-L-12-v2` is its int8 (`_Q`) slot and
    `ms-marco-TinyBERT-L-2-v2` an fp32 one. Each query's candidates are one padded batch (its API).
    """
    import numpy as np
    from flashrank import Ranker, RerankRequest
    from flashrank.Config import model_file_map
    from sentence_transformers import CrossEncoder, export_dynamic_quantized_onnx_model

    folder = Path(spec["peer_model"])
    name = "ms-marco-MiniLM-L-12-v2" if quantized else "ms-marco-TinyBERT-L-2-v2"
    cache = Path(spec["work"]) / "flashrank"
    target = cache / name
    if not (target / model_file_map[name]).is_file():
        source = folder / "onnx" / ("model_qint8_avx512_vnni.onnx" if quantized else "model.onnx")
        if not source.is_file():
            model = CrossEncoder(str(folder), backend="onnx", device="cpu")
            model.save_pretrained(str(folder))  # writes onnx/model.onnx
            if quantized:
                export_dynamic_quantized_onnx_model(model, "avx512_vnni", str(folder))
        target.mkdir(parents=True, exist_ok=True)
        for f in ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
            if (folder / f).is_file():
                shutil.copy(folder / f, target / f)
        shutil.copy(source, target / model_file_map[name])
    ranker = Ranker(model_name=name, cache_dir=str(cache), max_length=spec["max_length"], log_level="WARNING")
    groups: dict[str, list[int]] = {}
    for i, q in enumerate(spec["queries"]):
        groups.setdefault(q, []).append(i)

    def run(size: int) -> list[float]:
        scores = np.empty(len(spec["queries"]))
        for query, rows in groups.items():
            passages = [{"id": r, "text": spec["docs"][r]} for r in rows]
            for p in ranker.rerank(RerankRequest(query=query, passages=passages)):
                prob = min(max(float(p["score"]), 1e-12), 1 - 1e-12)
                scores[p["id"]] = np.log(prob / (1 - prob))  # back to logits, to compare with the others
        return scores.tolist()

    return run


def _rayrank(spec: dict, **settings) -> Runner:
    import rayrank

    reranker = rayrank.Reranker(spec["our_model"], cache_dir=str(Path(spec["work"]) / "rayrank-cache"),
                                threads=spec["threads"], **settings)
    queries, docs = spec["queries"], spec["docs"]

    def run(budget: int) -> list[float]:
        reranker.scorer.config = reranker.scorer.config.model_copy(update={"max_tokens_per_batch": budget})
        return reranker.score_pairs(queries, docs).scores.tolist()

    run.setting = f"{reranker.config.backend}/{reranker.config.dtype}"  # type: ignore[attr-defined]
    return run


def _pylate(spec: dict) -> Runner:
    """PyLate's `models.ColBERT` over the bundled backbone (it adds its 384→128 projection)."""
    import torch
    from pylate import models

    torch.set_num_threads(spec["threads"])
    model = models.ColBERT(model_name_or_path=spec["li_model"], device="cpu",
                           document_length=spec["li_document_length"])
    docs = spec["li_docs"]
    return lambda size: [len(e) for e in model.encode(docs, is_query=False, batch_size=size,
                                                      show_progress_bar=False)]


def _rayrank_encoder(spec: dict, **settings) -> Runner:
    import rayrank

    reranker = rayrank.Reranker(spec["li_model"], scorer="late-interaction", threads=spec["threads"],
                                cache_dir=str(Path(spec["work"]) / "rayrank-cache"), **settings)
    docs = spec["li_docs"]

    def run(budget: int) -> list[float]:
        reranker.scorer.config = reranker.scorer.config.model_copy(update={"max_tokens_per_batch": budget})
        return [len(e) for e in reranker.scorer.encode_documents(docs)]

    run.setting = f"{reranker.config.backend}/{reranker.config.dtype}"  # type: ignore[attr-defined]
    return run


def _fastplaid(path: str, docs: list | None, threads: int, build: dict) -> Callable[..., list]:
    """FastPlaid 1.7 at its `create` defaults (nbits 4, 4 k-means iterations) updated by `build`, or the
    index at `path` when `docs` is None; search in this process."""
    from fast_plaid import search

    index = search.FastPlaid(index=path, device="cpu")
    if docs is not None:
        index.create(documents_embeddings=docs, **build)
    return lambda queries, k, setting: index.search(queries_embeddings=queries, top_k=k, show_progress=False,
                                                    **setting)


def _warp(path: str, docs: list | None, threads: int, build: dict) -> Callable[..., list]:
    """xtr-warp-rs 2.1 at its `create` defaults (nbits 4) updated by `build`, or the index at `path` when
    `docs` is None; loaded memory-mapped on CPU, as it defaults to."""
    from xtr_warp import XTRWarp

    index = XTRWarp(path)
    if docs is not None:
        index.create(docs, **{"device": "cpu", "show_progress": False, **build})
    index.load(device="cpu")
    return lambda queries, k, setting: index.search(queries, top_k=k, num_threads=threads, show_progress=False,
                                                    **setting)


PEERS = {"fastplaid": _fastplaid, "warp": _warp}


def peer_search(peer: str, spec: dict) -> None:
    """One late-interaction peer on each search case: index build seconds from precomputed embeddings,
    index bytes on disk (with `reuse`, those of the index an earlier run built at the same path), then
    each setting's best-of-`rounds` search seconds (after one warm-up call).

    Prints `@@` + JSON per case (build_s, bytes) and per setting (search_s, hits: doc numbers, best
    first), as each is done, so the lines before a timeout still count.
    """
    import numpy as np
    import torch

    torch.set_num_threads(spec["threads"])
    for case in spec["cases"]:
        docs, queries = np.load(case["docs"]), np.load(case["queries"])
        split = lambda flat, sizes: [torch.from_numpy(a.astype(np.float32)) for a in
                                     np.split(flat, np.cumsum(sizes)[:-1])]
        doc_list, query_list = split(docs["flat"], docs["sizes"]), split(queries["flat"], queries["sizes"])
        built = Path(case["index"] + ".build.json")  # beside the index: its build seconds and bytes
        if case["reuse"] and built.is_file():
            search = PEERS[peer](case["index"], None, spec["threads"], {})
            record = {**json.loads(built.read_text()), "reused": True}
        else:
            built.unlink(missing_ok=True)
            shutil.rmtree(case["index"], ignore_errors=True)
            started = time.perf_counter()
            search = PEERS[peer](case["index"], doc_list, spec["threads"], case.get("build", {}))
            record = {"build_s": time.perf_counter() - started,
                      "bytes": sum(f.stat().st_size for f in Path(case["index"]).rglob("*") if f.is_file())}
            built.write_text(json.dumps(record))
        print("@@" + json.dumps({"case": case["name"], **record}), flush=True)
        for setting in case["settings"]:
            search(query_list[:4], case["k"], setting)  # warm-up: lazy loads, thread pools
            best, hits = float("inf"), None
            for _ in range(case["rounds"]):
                started = time.perf_counter()
                hits = search(query_list, case["k"], setting)
                best = min(best, time.perf_counter() - started)
            print("@@" + json.dumps({"case": case["name"], "setting": setting, "search_s": best,
                                     "hits": [[int(d) for d, _ in h] for h in hits]}), flush=True)


SYSTEMS: dict[str, Callable[[dict], Runner]] = {
    "st torch fp32 (plain predict)": lambda s: _st(s),
    "st onnx": lambda s: _st(s, "onnx"),
    "st onnx O3": lambda s: _st_onnx_optimized(s, "O3"),
    "st onnx O4": lambda s: _st_onnx_optimized(s, "O4"),
    "st onnx qint8 (dynamic)": _st_onnx_qint8,
    "st openvino": lambda s: _st(s, "openvino"),
    "st openvino qint8 (static)": _st_openvino_qint8,
    "flashrank fp32": lambda s: _flashrank(s, quantized=False),
    "flashrank int8": lambda s: _flashrank(s, quantized=True),
    "rayrank torch fp32": lambda s: _rayrank(s, backend="torch", dtype="float32"),
    "rayrank torch bf16": lambda s: _rayrank(s, backend="torch", dtype="bfloat16"),
    "rayrank onnx fp32": lambda s: _rayrank(s, backend="onnx"),
    "rayrank onnx int8": lambda s: _rayrank(s, backend="onnx", quantize="int8"),
    "rayrank openvino fp32": lambda s: _rayrank(s, backend="openvino", dtype="float32"),
    "rayrank openvino bf16": lambda s: _rayrank(s, backend="openvino", dtype="bfloat16"),
    "rayrank openvino int8 (static)": lambda s: _rayrank(s, backend="openvino", quantize="int8"),
    "rayrank openvino int8 (static) bf16": lambda s: _rayrank(s, backend="openvino", quantize="int8",
                                                            dtype="bfloat16"),
    "rayrank auto": lambda s: _rayrank(s, backend="auto"),
    "pylate ColBERT encode": _pylate,
    "rayrank encode_documents torch fp32": lambda s: _rayrank_encoder(s, backend="torch", dtype="float32"),
    "rayrank encode_documents auto": lambda s: _rayrank_encoder(s, backend="auto"),
    "rayrank encode_documents onnx int8": lambda s: _rayrank_encoder(s, backend="onnx", quantize="int8"),
}


def main() -> int:
    spec = json.loads(Path(sys.argv[2]).read_text())
    if sys.argv[1] in PEERS:
        peer_search(sys.argv[1], spec)
        return 0
    runners: dict[str, Runner] = {}
    for system in sys.argv[1].split(","):  # loaded one after another: exports get the CPU alone
        started = time.perf_counter()
        try:
            runners[system] = SYSTEMS[system](spec)
            # warm-up: thread pools, first-shape compilation
            runners[system](spec["warmup_budget" if system.startswith("rayrank") else "warmup_size"])
        except Exception as exc:  # noqa: BLE001 - one peer that cannot run must not sink the others
            import traceback

            traceback.print_exc()
            print("@@" + json.dumps({"system": system, "error": f"{type(exc).__name__}: {exc}"[:500]}), flush=True)
            continue
        print("@@" + json.dumps({"system": system, "setting": getattr(runners[system], "setting", None),
                                 "load_s": time.perf_counter() - started}), flush=True)
    print("@@" + json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        command = line.rstrip("\n").split("\t")
        if command[0] != "run":
            break
        started = time.perf_counter()
        scores = runners[command[1]](int(command[2]))
        print("@@" + json.dumps({"seconds": time.perf_counter() - started, "scores": scores}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
