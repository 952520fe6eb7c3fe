"""`rayrank serve [--config FILE] [--show-config] [--address ADDR] [--host H] [--port P]`.

Validates the Serve config file (default: `serve.default.yaml`, shipped inside the package, so it
runs from any directory) with Serve's schema, and `args` through `ServeArgs` with errors naming the
key; starts Serve on a local Ray (or joins `--address`), runs the application with the
file's deployment options, prints the URL and blocks until Ctrl-C.
"""

from __future__ import annotations

import argparse
import signal
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from rayrank.cli import command
from rayrank.config import format_validation_error, load_yaml, parse_config
from rayrank.errors import ConfigError
from rayrank.ray_app.config import ServeArgs

DEFAULT_CONFIG = Path(__file__).with_name("serve.default.yaml")
IMPORT_PATH = "rayrank.ray_app.app:build_app"


@dataclass
class ServePlan:
    """A validated config: Serve's schema object, and per application its args and deployment options."""

    config: Any  # ray.serve.schema.ServeDeploySchema
    apps: list[tuple[Any, ServeArgs, dict[str, Any]]]


def load_plan(path: Path, host: str | None = None, port: int | None = None) -> ServePlan:
    """Read and validate a Serve config file that runs `rayrank.ray_app.app:build_app`."""
    from ray.serve.schema import DeploymentSchema, ServeDeploySchema

    data = load_yaml(path)
    http = data.setdefault("http_options", {})
    if host:
        http["host"] = host
    if port:
        http["port"] = port
    http.setdefault("host", "127.0.0.1")
    try:
        config = ServeDeploySchema.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, str(path))) from None
    apps = []
    for i, app in enumerate(config.applications):
        where = f"{path}: applications[{i}]"
        if app.import_path != IMPORT_PATH:
            raise ConfigError(f"{where}.import_path: rayrank serve runs {IMPORT_PATH}, got {app.import_path!r}")
        args = parse_config(ServeArgs, app.args or {}, f"{where}.args")
        options: dict[str, Any] = {}
        for raw in data["applications"][i].get("deployments") or []:
            unknown = sorted(set(raw) - set(DeploymentSchema.model_fields))
            if raw.get("name") != "Reranker" or unknown:
                raise ConfigError(f"{where}.deployments: only 'Reranker' with Serve's deployment options, got "
                                  f"name {raw.get('name')!r}" + (f" and unknown keys {unknown}" if unknown else ""))
            options = {k: v for k, v in raw.items() if k != "name"}
        apps.append((app, args, options))
    return ServePlan(config, apps)


def run(plan: ServePlan, address: str | None) -> list[str]:
    """Start Serve and deploy every application; returns their URLs."""
    import ray
    from ray import serve

    from rayrank.ray_app.app import Reranker

    if not ray.is_initialized():
        ray.init(address=address, namespace="serve", configure_logging=False)
    http = plan.config.http_options
    serve.start(http_options={"host": http.host, "port": http.port}, proxy_location=plan.config.proxy_location)
    urls = []
    for app, args, options in plan.apps:
        serve.run(Reranker.options(**options).bind(args), name=app.name, route_prefix=app.route_prefix)
        urls.append(f"http://{http.host}:{http.port}{app.route_prefix or '/'}")
    return urls


@command("serve")
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rayrank serve", description=__doc__.split("\n\n")[1])
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG,
                        help="a Serve config file (default: the packaged serve.default.yaml)")
    parser.add_argument("--show-config", action="store_true", help="print the default config (to edit a copy) and exit")
    parser.add_argument("--address", help="join a running Ray cluster (e.g. auto); default: start a local Ray")
    parser.add_argument("--host", help="override http_options.host")
    parser.add_argument("--port", type=int, help="override http_options.port")
    opts = parser.parse_args(argv)
    if opts.show_config:
        print(DEFAULT_CONFIG.read_text(), end="")
        return 0
    plan = load_plan(opts.config, opts.host, opts.port)
    for url in run(plan, opts.address):
        print(f"rayrank serving at {url} (POST v1/rerank, v2/rerank, rerank; GET health, docs); Ctrl-C stops",
              flush=True)
    from ray import serve

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):  # set explicitly: a background shell ignores SIGINT
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    serve.shutdown()
    return 0
