"""Reading `cluster/` for the tests: Kubernetes manifests (with RayJob templates kept in ConfigMaps),
the Dockerfile's facts, and the schema registry for offline validation. Nothing here needs a cluster."""

from __future__ import annotations

import ast
import json
import re
import shlex
import tomllib
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: pytest depends on tomli there
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[2]
CLUSTER = REPO / "cluster"
# Packages whose folder is not their dotted path (pyproject: `rayrank.jobs` lives in jobs/).
PACKAGE_DIRS = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
CRDS = REPO / "tests" / "data" / "crds"

# The oldest Kubernetes minor the manifests must work on (CronJob.timeZone is GA since 1.27).
KUBERNETES_VERSION = "1.31"
CRD_SCHEMAS = {
    ("ray.io/v1", "RayJob"): "rayjob.ray.io_v1.json",
    ("ray.io/v1", "RayService"): "rayservice.ray.io_v1.json",
}
# Images that are not the rayrank image, each allowed in one place only.
OTHER_IMAGES = {("CronJob", "create-rayjob"): "rancher/kubectl:"}


@dataclass(frozen=True)
class Manifest:
    source: str  # file (and document index), or file + ConfigMap key for an embedded template
    obj: dict[str, Any] = field(hash=False)

    @property
    def kind(self) -> str:
        return self.obj.get("kind", "?")

    @property
    def name(self) -> str:
        meta = self.obj.get("metadata") or {}
        return meta.get("name") or meta.get("generateName") or "?"

    def __str__(self) -> str:
        return f"{self.source} ({self.kind} {self.name})"


@cache
def load_manifests() -> tuple[Manifest, ...]:
    """Every document of cluster/kubernetes/*.yaml, plus each Kubernetes object a ConfigMap embeds."""
    found = []
    for path in sorted((CLUSTER / "kubernetes").glob("*.yaml")):
        rel = path.relative_to(REPO).as_posix()
        for i, obj in enumerate(yaml.safe_load_all(path.read_text())):
            if obj is None:
                continue
            found.append(Manifest(f"{rel}#{i}", obj))
            if obj.get("kind") == "ConfigMap":
                for key, text in (obj.get("data") or {}).items():
                    inner = yaml.safe_load(text) if key.endswith((".yaml", ".yml")) else None
                    if isinstance(inner, dict) and "kind" in inner:
                        found.append(Manifest(f"{rel}#{i}:ConfigMap/{obj['metadata']['name']}/{key}", inner))
    return tuple(found)


def of_kind(*kinds: str) -> list[Manifest]:
    return [m for m in load_manifests() if m.kind in kinds]


def ray_cluster_spec(obj: dict) -> dict:
    spec = obj["spec"]
    return spec["rayClusterSpec"] if obj["kind"] == "RayJob" else spec["rayClusterConfig"]


def ray_pod_templates(obj: dict) -> list[tuple[str, dict]]:
    """(group, pod template) for the head and each worker group of a RayJob or RayService."""
    spec = ray_cluster_spec(obj)
    groups = [("head", spec["headGroupSpec"]["template"])]
    groups += [(g["groupName"], g["template"]) for g in spec.get("workerGroupSpecs", [])]
    return groups


def gpus_per_pod(template: dict) -> int:
    limits = template["spec"]["containers"][0].get("resources", {}).get("limits", {})
    return int(limits.get("nvidia.com/gpu", 0))


def gpu_capacity(obj: dict) -> int:
    """GPUs the Ray autoscaler may bring up: sum over worker groups of maxReplicas x GPUs per pod."""
    groups = ray_cluster_spec(obj).get("workerGroupSpecs", [])
    return sum(g["maxReplicas"] * gpus_per_pod(g["template"]) for g in groups)


def all_containers(obj: dict) -> list[tuple[str, dict]]:
    """(pod kind, container) for every container of a Ray pod template or a CronJob pod."""
    if obj["kind"] in ("RayJob", "RayService"):
        return [(obj["kind"], c) for _, t in ray_pod_templates(obj) for c in t["spec"]["containers"]]
    if obj["kind"] == "CronJob":
        pod = obj["spec"]["jobTemplate"]["spec"]["template"]["spec"]
        return [("CronJob", c) for c in pod.get("initContainers", []) + pod["containers"]]
    return []


def load_pyproject() -> dict[str, Any]:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


# --- schemas -----------------------------------------------------------------------------------------

def kubernetes_definitions_path() -> Path:
    """The strict Kubernetes definitions bundled with kubernetes-validate for KUBERNETES_VERSION."""
    root = resources.files("kubernetes_validate") / "kubernetes-json-schema"
    return Path(str(root / f"v{KUBERNETES_VERSION}.0-local-strict" / "_definitions.json"))


@cache
def crd_registry():
    """A referencing registry with the KubeRay schemas of tests/data/crds and the Kubernetes definitions
    they $ref (https://kubernetes.io/api/_definitions.json): resolved locally, nothing is fetched."""
    from referencing import Registry, Resource

    contents = [json.loads(kubernetes_definitions_path().read_text())]
    contents += [json.loads(p.read_text()) for p in sorted(CRDS.glob("*.json"))]
    resources_ = [Resource.from_contents(c) for c in contents]
    return Registry().with_resources((r.id(), r) for r in resources_)


def crd_validator(api_version: str, kind: str):
    import jsonschema

    schema = json.loads((CRDS / CRD_SCHEMAS[(api_version, kind)]).read_text())
    return jsonschema.Draft202012Validator(schema, registry=crd_registry())


# --- Dockerfile --------------------------------------------------------------------------------------

@dataclass
class Dockerfile:
    image: str  # the documented `# image: NAME:TAG` the manifests must use
    base: str  # FROM, with ARG defaults substituted
    args: dict[str, str]
    env: dict[str, str]
    workdir: str
    copies: list[tuple[list[str], str]]  # (sources, destination)
    users: list[str]
    runs: list[str]


def read_dockerfile(path: Path = CLUSTER / "Dockerfile") -> Dockerfile:
    text = path.read_text()
    image = re.search(r"^# image: (\S+)$", text, re.MULTILINE)
    assert image, f"{path}: no '# image: NAME:TAG' line documenting the image the manifests use"
    lines = re.sub(r"\\\n", " ", text).splitlines()  # join continuation lines
    args: dict[str, str] = {}
    env: dict[str, str] = {}
    info = Dockerfile(image.group(1), "", args, env, "/", [], [], [])

    def subst(value: str) -> str:
        known = {**args, **env}
        return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: known.get(m.group(1) or m.group(2), m.group(0)), value)

    for line in lines:
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        instr, _, rest = line.strip().partition(" ")
        instr = instr.upper()
        if instr == "ARG":
            name, _, default = rest.strip().partition("=")
            args.setdefault(name, default)
        elif instr == "FROM":
            info.base = subst(rest.split()[0])
        elif instr == "ENV":
            for pair in shlex.split(rest):
                key, _, value = pair.partition("=")
                env[key] = subst(value)
        elif instr == "WORKDIR":
            info.workdir = subst(rest.strip())
        elif instr == "COPY":
            parts = [p for p in shlex.split(rest) if not p.startswith("--")]
            info.copies.append((parts[:-1], parts[-1]))
        elif instr == "USER":
            info.users.append(rest.strip())
        elif instr == "RUN":
            info.runs.append(subst(rest))
    return info


# --- Python sources (read, never imported) -----------------------------------------------------------

def module_file(module: str) -> Path | None:
    """The repository file that `python -m module` / `import module` would run, if it exists
    (through pyproject's `package-dir`: `rayrank.jobs.rerank` is `jobs/rerank.py`)."""
    parts = module.split(".")
    for package, folder in PACKAGE_DIRS.items():
        if module == package or module.startswith(package + "."):
            parts = [folder, *parts[len(package.split(".")):]]
    base = REPO.joinpath(*parts)
    for candidate in (base.with_suffix(".py"), base / "__main__.py", base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def top_level_names(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
    return names


def serve_deployment_names(package: Path) -> set[str]:
    """Names of Serve deployments declared in a package: classes or functions decorated with
    `serve.deployment` / `deployment` (the class name, or its `name=` argument)."""
    names = set()
    for path in package.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for deco in node.decorator_list:
                call = deco if isinstance(deco, ast.Call) else None
                target = call.func if call else deco
                if (isinstance(target, ast.Attribute) and target.attr == "deployment") or (
                        isinstance(target, ast.Name) and target.id == "deployment"):
                    explicit = [k.value.value for k in (call.keywords if call else [])
                                if k.arg == "name" and isinstance(k.value, ast.Constant)]
                    names.add(explicit[0] if explicit else node.name)
    return names


def builder_arg_fields(path: Path, builder: str) -> set[str] | None:
    """Field names of the pydantic model an application builder takes (`def build_app(args: Model)`),
    when the model is a class defined in the same package; None when that cannot be read statically."""
    tree = ast.parse(path.read_text())
    func = next((n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == builder), None)
    if func is None or not func.args.args or not isinstance(func.args.args[0].annotation, ast.Name):
        return None
    model = func.args.args[0].annotation.id
    for source in path.parent.rglob("*.py"):
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, ast.ClassDef) and node.name == model:
                return {n.target.id for n in node.body
                        if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name)}
    return None
