"""Is the rerank job's cost linear in rows? Pairs/s, driver memory and staged objects at growing sizes.

Writes one synthetic input (bench/synthetic.py: short pairs, files of `--rows-per-file` rows) for the
largest size, then runs the job on the first files for each size with a tiny random cross-encoder,
100 output buckets (`rows_per_output_file` = rows / 100), the same actors and shard size, and prints
pairs/s (actors running, and end to end), the driver's peak RSS, staged objects per shard and, with
`--s3` (a moto S3 server on 127.0.0.1 holding input and output), object-store requests per million
rows. Example (10,000,000 rows need about 15 minutes on 2 cores; `--sizes` takes what fits):

    python bench/scale.py --sizes 1000000,10000000
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench._common import job_memory  # noqa: E402
from bench.synthetic import write  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1000000,10000000", help="comma-separated row counts")
    parser.add_argument("--rows-per-file", type=int, default=500_000)
    parser.add_argument("--shard-rows", type=int, default=50_000)
    parser.add_argument("--actors", default="1,1")
    parser.add_argument("--cpus-per-actor", type=float, default=2)
    parser.add_argument("--s3", action="store_true", help="input and output on a moto S3 server on 127.0.0.1")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    if any(s % args.rows_per_file for s in sizes):
        raise SystemExit("--sizes must be multiples of --rows-per-file")
    from tests.tiny_models import make_cross_encoder

    work = Path(tempfile.mkdtemp(prefix="rayrank-bench-scale-"))
    model = make_cross_encoder(work / "tiny-ce")
    started = time.perf_counter()
    files = write(work / "input", max(sizes), args.rows_per_file)
    print(f"wrote {max(sizes):,} synthetic rows in {len(files)} files in {time.perf_counter() - started:.0f} s")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    server = None
    if args.s3:
        import socket

        import boto3
        from moto.server import ThreadedMotoServer

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one log line per request otherwise
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        server.start()
        env.update(AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}", AWS_ACCESS_KEY_ID="bench",
                   AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1")
        s3 = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], region_name="us-east-1",
                          aws_access_key_id="bench", aws_secret_access_key="bench")
        s3.create_bucket(Bucket="bench")
        for path in files:
            s3.upload_file(str(path), "bench", f"input/{path.name}")
    rows = []
    for size in sizes:
        count = size // args.rows_per_file
        if args.s3:  # the first `count` files under a prefix of their own (server-side copies)
            for path in files[:count]:
                s3.copy_object(Bucket="bench", Key=f"in-{size}/{path.name}",
                               CopySource={"Bucket": "bench", "Key": f"input/{path.name}"})
            source, out = f"s3://bench/in-{size}/", f"s3://bench/out-{size}"
        else:
            subset = work / f"in-{size}"
            subset.mkdir()
            for path in files[:count]:
                (subset / path.name).symlink_to(path)
            source, out = str(subset), str(work / f"out-{size}")
        config = work / f"job-{size}.yaml"
        config.write_text(f"shard_rows: {args.shard_rows}\nrows_per_output_file: {size // 100}\n"
                          f"engine:\n  model: {model}\n  threads: 1\n"
                          f"cluster:\n  actors: {args.actors}\n  cpus_per_actor: {args.cpus_per_actor}\n")
        seconds, peaks, _ = job_memory([source, out, "--config", str(config)], env, every=0.2)
        peak = peaks["driver"]
        if args.s3:
            manifest = json.loads(s3.get_object(Bucket="bench", Key=f"out-{size}/_manifest.json")["Body"].read())
        else:
            manifest = json.loads((Path(out) / "_manifest.json").read_text())
        store = manifest["storage"]
        rows.append({"rows": size, "shards": manifest["shards"], "steady": manifest["timings"]["steady_pairs_per_s"],
                     "end_to_end": size / seconds, "seconds": seconds, "driver_mb": peak / 2**20,
                     "staged": store["staged_objects"], "buckets": len(manifest["files"]),
                     "requests_per_m": store["requests_per_million_rows"], "busy": manifest["phases"]["model_busy"]})
        if not args.s3:
            shutil.rmtree(out, ignore_errors=True)
    if server is not None:
        server.stop()
    print(f"\nrerank job at growing sizes — synthetic short pairs, tiny random cross-encoder, actors {args.actors} x "
          f"{args.cpus_per_actor:g} CPU, engine.threads 1, shards of {args.shard_rows:,}, 100 output files, "
          f"{'moto S3' if args.s3 else 'local disk'}; load {Path('/proc/loadavg').read_text().split()[0]}\n")
    print(f"{'rows':>11} {'shards':>6} {'pairs/s':>9} {'vs first':>8} {'end-to-end':>10} {'s':>6} {'driver MB':>9} "
          f"{'staged':>6} {'part files':>10} {'req/M rows':>10} {'busy':>5}")
    for row in rows:
        req = "n/a" if row["requests_per_m"] is None else f"{row['requests_per_m']:,.0f}"
        print(f"{row['rows']:>11,} {row['shards']:>6} {row['steady']:>9,.0f} {row['steady'] / rows[0]['steady']:>8.2f} "
              f"{row['end_to_end']:>10,.0f} {row['seconds']:>6.0f} {row['driver_mb']:>9.0f} {row['staged']:>6} "
              f"{row['buckets']:>10} {req:>10} {row['busy']:>5.2f}")
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
