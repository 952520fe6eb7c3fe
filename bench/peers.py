"""rayrank against the CPU fast paths a user would otherwise pick, on the same weights, in one run.

Cross-encoder: the first N TREC-DL20 pairs and one MiniLM-L6-shaped checkpoint (the bundled
all-MiniLM-L6-v2 backbone with a fresh seeded 1-logit head). Every system runs in its own process:
sentence-transformers' `CrossEncoder` (torch; `backend="onnx"` plain, O3/O4-optimised, dynamic qint8;
`backend="openvino"` plain and static qint8) and FlashRank (the same weights exported to the layout
it reads from its cache folder; nothing downloads) in the peers' virtual environment (their extras
pin transformers 4.x), and rayrank's backends in ours. Each system's batch size (ours: token budget)
is swept once, then timed at its best size in rounds that alternate across all systems; the best
round counts. Prints pairs/s, × plain predict, max |Δ logit| and Kendall τ against plain fp32 predict.

    python bench/peers.py --create-peer-venv                # builds /work/venvs/peers first if absent
    python bench/peers.py --peer-python PATH/bin/python --pairs 300 --rounds 3
    python bench/peers.py --systems "st openvino,rayrank openvino bf16"

Late interaction: see bench/peers_li.py.
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
from _common import DL20, REPO, load_average, load_dl20, minilm_cross_encoder, skip_message, table

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
    ("rayrank openvino bf16", False, False), ("rayrank auto", False, False),
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
    """One system's process: started once, then asked to score the pairs at a given size."""

    def __init__(self, name: str, python: Path, spec_path: Path, log: Path) -> None:
        self.name = name
        self.log = log.open("w")
        self.proc = subprocess.Popen([str(python), str(WORKER), name, str(spec_path)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self.log, text=True, cwd=REPO)
        self.setting = self._read().get("setting")

    def _read(self) -> dict:
        for line in self.proc.stdout:  # type: ignore[union-attr]
            if line.startswith("@@"):
                return json.loads(line[2:])
        raise RuntimeError(f"{self.name} exited ({self.proc.wait()}); see {self.log.name}")

    def run(self, size: int) -> tuple[float, np.ndarray]:
        self.proc.stdin.write(f"run {size}\n")  # type: ignore[union-attr]
        self.proc.stdin.flush()  # type: ignore[union-attr]
        answer = self._read()
        return answer["seconds"], np.asarray(answer["scores"], dtype=np.float64)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.write("quit\n")  # type: ignore[union-attr]
            self.proc.stdin.close()  # type: ignore[union-attr]
            self.proc.wait(timeout=60)
        self.log.close()


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
            "calibration": candidates["text"].to_pylist()[args.pairs: args.pairs + 300]}
    spec_path = work / "spec.json"
    spec_path.write_text(json.dumps(spec))
    wanted = [s for s in SYSTEMS if not args.systems or s[0] in args.systems or s[0] == PLAIN]
    workers: dict[str, Worker] = {}
    failed: dict[str, str] = {}
    for name, in_peer_venv, _ in wanted:  # one at a time: exports and auto's timing get the CPU alone
        started = time.perf_counter()
        try:
            workers[name] = Worker(name, args.peer_python if in_peer_venv else Path(sys.executable), spec_path,
                                   work / f"{name.replace(' ', '_').replace('/', '_')}.log")
            print(f"  loaded {name} in {time.perf_counter() - started:.1f} s", flush=True)
        except RuntimeError as exc:
            failed[name] = str(exc)
            print(f"  FAILED {name}: {exc}", flush=True)
    if PLAIN not in workers:
        raise SystemExit(f"the reference ({PLAIN}) did not load: {failed.get(PLAIN)}")
    try:
        sizes = {n: (args.token_budgets if n.startswith("rayrank") else [0] if n.startswith("flashrank")
                     else args.batch_sizes) for n in workers}
        times: dict[str, dict[int, list[float]]] = {n: {} for n in workers}
        scores: dict[str, np.ndarray] = {}
        for step in range(max(len(s) for s in sizes.values())):  # sweep: every size once, alternating systems
            for name, worker in workers.items():
                if step < len(sizes[name]):
                    seconds, scores[name] = worker.run(sizes[name][step])
                    times[name].setdefault(sizes[name][step], []).append(seconds)
        best = {n: min(t, key=lambda size: min(t[size])) for n, t in times.items()}
        for _ in range(args.rounds):
            for name, worker in workers.items():
                seconds, scores[name] = worker.run(best[name])
                times[name][best[name]].append(seconds)
    finally:
        for worker in workers.values():
            worker.close()
    plain_time = min(times[PLAIN][best[PLAIN]])
    reference = scores[PLAIN]
    rows = []
    for name, _, quantized in wanted:
        if name not in workers:
            rows.append({"system": name, "setting": "failed to load (see log)", "size": "", "pairs/s": "",
                         "× plain": "", "max |Δ|": "", "τ": "", "class": ""})
            continue
        seconds = min(times[name][best[name]])
        delta = float(np.abs(scores[name] - reference).max())
        tau = _kendall(scores[name], reference)
        near = delta <= NEAR_EXACT_DELTA and tau >= NEAR_EXACT_TAU
        rows.append({"system": name, "setting": workers[name].setting or "", "size": best[name] or "per query",
                     "pairs/s": len(queries) / seconds, "× plain": plain_time / seconds, "max |Δ|": f"{delta:.1e}",
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=300, help="first N DL20 pairs")
    parser.add_argument("--rounds", type=int, default=3, help="alternating timed rounds after the sweep")
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads of every system")
    parser.add_argument("--batch-sizes", type=lambda s: [int(x) for x in s.split(",")], default=[16, 32, 64, 128],
                        help="batch sizes swept for the peers")
    parser.add_argument("--token-budgets", type=lambda s: [int(x) for x in s.split(",")], default=[2048, 4096, 8192],
                        help="max_tokens_per_batch values swept for rayrank")
    parser.add_argument("--peer-python", type=Path, default=Path("/work/venvs/peers/bin/python"),
                        help="interpreter of the peers' virtual environment (never ours: transformers 4.x)")
    parser.add_argument("--create-peer-venv", action="store_true", help="create --peer-python's venv if absent")
    parser.add_argument("--systems", type=lambda s: s.split(","), default=None,
                        help="comma-separated subset of systems (plain predict always runs: it is the reference)")
    parser.add_argument("--work-dir", type=Path, default=None, help="keep exports and logs here (reused)")
    args = parser.parse_args(argv)
    if load_dl20() is None:
        print(skip_message(DL20))
        return 0
    args.peer_python = ensure_peer_venv(args.peer_python, args.create_peer_venv)
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="rayrank-bench-peers-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"pairs={args.pairs} rounds={args.rounds} threads={args.threads} batch sizes={args.batch_sizes} "
          f"token budgets={args.token_budgets} work={work} load={load_average()}", flush=True)
    rows = cross_encoder(args, work)
    print(table(rows))
    print("\n".join(summary(rows)))
    print(f"near-exact: max |Δ| ≤ {NEAR_EXACT_DELTA} and τ ≥ {NEAR_EXACT_TAU} against plain fp32 predict; "
          f"load at end={load_average()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
