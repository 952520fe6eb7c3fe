"""`rayrank serve [--app rerank|search] [--config FILE] [--show-config] [--address ADDR] [--host H] [--port P]`.

Validates the Serve config file (default: `serve.default.yaml`, the rerank app, shipped inside the
package so it runs from any directory) with Serve's schema, and each application's `args` through its
app's model (`ServeArgs` for the rerank API, `SearchArgs` for the search funnel) with errors naming the
key; starts Serve on a local Ray (or joins `--address`), runs the applications, prints their URLs and
blocks until Ctrl-C.
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
from rayrank.ray_app.search_config import SearchArgs

DEFAULT_CONFIG = Path(__file__).with_name("serve.default.yaml")


@dataclass(frozen=True)
class App:
    """An application `rayrank serve` runs: its builder's import path, its args model and its routes."""

    import_path: str
    args: type
    routes: str


APPS = {
    "rerank": App("rayrank.ray_app.app:build_app", ServeArgs, "POST v1/rerank, v2/rerank, rerank; GET health, docs"),
    "search": App("rayrank.ray_app.search:build_search_app", SearchArgs, "POST v1/search; GET healthz, docs"),
}
IMPORT_PATH = APPS["rerank"].import_path


def app_kind(import_path: str) -> str | None:
    return next((name for name, app in APPS.items() if app.import_path == import_path), None)


@dataclass
class ServePlan:
    """A validated config: Serve's schema object, and per application its args and deployment options."""

    config: Any  # ray.serve.schema.ServeDeploySchema
    apps: list[tuple[Any, ServeArgs, dict[str, Any]]]


def load_plan(path: Path, host: str | None = None, port: int | None = None, app: str | None = None) -> ServePlan:
    """Read and validate a Serve config file whose applications are rayrank's (`app`: all of that kind)."""
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
    for i, application in enumerate(config.applications):
        where = f"{path}: applications[{i}]"
        kind = app_kind(application.import_path)
        wanted = [app] if app else list(APPS)
        if kind not in wanted:
            paths = " or ".join(APPS[name].import_path for name in wanted)
            raise ConfigError(f"{where}.import_path: rayrank serve{f' --app {app}' if app else ''} runs {paths}, "
                              f"got {application.import_path!r}")
        args = parse_config(APPS[kind].args, application.args or {}, f"{where}.args")
        options: dict[str, Any] = {}
        if kind == "search" and data["applications"][i].get("deployments"):
            raise ConfigError(f"{where}.deployments: the search app takes each stage's replicas and resources "
                              "in args.deployments (and the ingress's in args.ingress)")
        for raw in data["applications"][i].get("deployments") or []:
            unknown = sorted(set(raw) - set(DeploymentSchema.model_fields))
            if raw.get("name") != "Reranker" or unknown:
                raise ConfigError(f"{where}.deployments: only 'Reranker' with Serve's deployment options, got "
                                  f"name {raw.get('name')!r}" + (f" and unknown keys {unknown}" if unknown else ""))
            options = {k: v for k, v in raw.items() if k != "name"}
        apps.append((application, args, options))
    return ServePlan(config, apps)


def run(plan: ServePlan, address: str | None) -> list[str]:
    """Start Serve and deploy every application; returns their URLs."""
    import ray
    from ray import serve

    from rayrank.ray_app.app import RerankDeployment
    from rayrank.ray_app.search import build_search_app

    if not ray.is_initialized():
        ray.init(address=address, namespace="serve", configure_logging=False)
    http = plan.config.http_options
    serve.start(http_options={"host": http.host, "port": http.port}, proxy_location=plan.config.proxy_location)
    urls = []
    for app, args, options in plan.apps:
        kind = app_kind(app.import_path)
        bound = RerankDeployment.options(**options).bind(args) if kind == "rerank" else build_search_app(args)
        serve.run(bound, name=app.name, route_prefix=app.route_prefix)
        urls.append(f"http://{http.host}:{http.port}{app.route_prefix or '/'} ({APPS[kind].routes})")
    return urls


@command("serve")
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rayrank serve", description=__doc__.split("\n\n")[1])
    parser.add_argument("--app", choices=sorted(APPS), default=None,
                        help="the application the config runs: rerank (the rerank API) or search (the retrieval "
                             "funnel); refuses a config of the other kind (default: each application's import_path)")
    parser.add_argument("--config", type=Path, default=None,
                        help="a Serve config file (default: the packaged serve.default.yaml, the rerank app; the "
                             "search app needs a config naming its corpus and stages)")
    parser.add_argument("--show-config", action="store_true", help="print the default config (to edit a copy) and exit")
    parser.add_argument("--address", help="join a running Ray cluster (e.g. auto); default: start a local Ray")
    parser.add_argument("--host", help="override http_options.host")
    parser.add_argument("--port", type=int, help="override http_options.port")
    opts = parser.parse_args(argv)
    if opts.config is None and opts.app == "search":
        parser.error("--app search needs --config FILE: a Serve config naming the funnel's corpus and stages "
                     "(see the serving guide's search example)")
    if opts.show_config:
        print(DEFAULT_CONFIG.read_text(), end="")
        return 0
    plan = load_plan(opts.config or DEFAULT_CONFIG, opts.host, opts.port, opts.app)
    for url in run(plan, opts.address):
        print(f"rayrank serving at {url}; Ctrl-C stops", flush=True)
    from ray import serve

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):  # set explicitly: a background shell ignores SIGINT
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    serve.shutdown()
    return 0
