"""What the manifests point at exists and agrees: modules, config files, the image, Ray versions, GPU
capacity against the job and Serve configs, and the CronJob -> ConfigMap -> RBAC chain."""

from __future__ import annotations

import importlib
import re
import shlex
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.version import Version

from tests.cluster.manifests import (CLUSTER, OTHER_IMAGES, REPO, all_containers, builder_arg_fields, gpu_capacity,
                                     gpus_per_pod, load_pyproject, module_file, of_kind, ray_cluster_spec,
                                     ray_pod_templates, read_dockerfile, serve_deployment_names, top_level_names)

PYPROJECT = load_pyproject()
DOCKER = read_dockerfile()
RAY_OBJECTS = of_kind("RayJob", "RayService")
RAY_JOBS = of_kind("RayJob")
RAYSERVICE = of_kind("RayService")
SAMPLE_DATE = "2026-01-31"  # stands in for $(date -u +%F) in entrypoints


def pyproject_requirement(name: str) -> Requirement:
    reqs = [Requirement(r) for r in PYPROJECT["project"]["dependencies"]]
    return next(r for r in reqs if r.name == name)


def installed(module: str) -> bool:
    """Whether `pip install .` puts `module`'s package in the image (pyproject's `packages`)."""
    package = module.rpartition(".")[0] if module_file(module).name != "__init__.py" else module
    return package in PYPROJECT["tool"]["setuptools"]["packages"]


def image_path_in_repo(path: str) -> Path:
    """Map a path inside the image ($RAYRANK_HOME/...) to the repository file COPY put there."""
    home = DOCKER.env["RAYRANK_HOME"].rstrip("/") + "/"
    assert path.startswith(home), f"{path} is not under RAYRANK_HOME ({home}), where the image keeps configs"
    rel = path[len(home):]
    copied = [dest.rstrip("/") for _, dest in DOCKER.copies]
    assert rel.split("/")[0] in copied, f"{path}: cluster/Dockerfile does not COPY {rel.split('/')[0]}/ into the image"
    return REPO / rel


def entrypoint(manifest) -> tuple[str, list[str]]:
    """(module, argv) of a RayJob entrypoint `python -m MODULE ARGS...`."""
    tokens = shlex.split(manifest.obj["spec"]["entrypoint"].replace("$(date -u +%F)", SAMPLE_DATE))
    assert tokens[:2] == ["python", "-m"], f"{manifest}: entrypoint must be `python -m MODULE ...`, got {tokens[:3]}"
    return tokens[2], tokens[3:]


def option(argv: list[str], name: str) -> str | None:
    for i, token in enumerate(argv):
        if token == name:
            return argv[i + 1]
        if token.startswith(name + "="):
            return token.split("=", 1)[1]
    return None


# --- modules and config paths ------------------------------------------------------------------------

@pytest.mark.parametrize("manifest", RAY_JOBS, ids=str)
def test_entrypoint_module_exists_and_is_installed(manifest):
    module, _ = entrypoint(manifest)
    assert module_file(module), f"{manifest}: `python -m {module}` but {module.replace('.', '/')}.py is not in the repo"
    assert installed(module), f"{module} is not in pyproject's packages"


@pytest.mark.parametrize("manifest", RAY_JOBS, ids=str)
def test_entrypoint_config_exists_in_image(manifest):
    _, argv = entrypoint(manifest)
    config = option(argv, "--config")
    assert config, f"{manifest}: entrypoint has no --config"
    path = image_path_in_repo(config)
    assert path.is_file(), f"{manifest}: --config {config} -> {path.relative_to(REPO)} does not exist"
    assert isinstance(yaml.safe_load(path.read_text()), dict)


def parsed_job_config(manifest):
    """The RayJob's entrypoint arguments and config file through the job module's own `parse_args`,
    with the config's image path mapped to the repository file."""
    module, argv = entrypoint(manifest)
    parse_args = getattr(importlib.import_module(module), "parse_args", None)
    assert parse_args, f"{module} has no parse_args(argv) to check the entrypoint with"
    argv = [str(image_path_in_repo(a)) if a == option(argv, "--config") else a for a in argv]
    return parse_args(argv)


@pytest.mark.parametrize("manifest", RAY_JOBS, ids=str)
def test_entrypoint_parses_with_the_real_cli(manifest):
    config = parsed_job_config(manifest)
    assert config.input.startswith("s3://") and config.output.startswith("s3://")
    assert config.input != config.output
    assert config.cluster.gpus_per_actor > 0, f"{manifest}: runs on GPU workers; set cluster.gpus_per_actor"


def test_nightly_input_and_output_are_dated():
    (nightly,) = [m for m in RAY_JOBS if "ConfigMap" in m.source]
    config = parsed_job_config(nightly)
    assert SAMPLE_DATE in config.input and SAMPLE_DATE in config.output


@pytest.mark.parametrize("manifest", RAY_JOBS, ids=str)
def test_job_actor_pool_fits_the_gpu_worker_group(manifest):
    """MAX actors x GPUs per actor must fit what the autoscaler may add, or actors wait forever."""
    cluster = parsed_job_config(manifest).cluster
    needed = cluster.actors[1] * cluster.gpus_per_actor
    assert 0 < needed <= gpu_capacity(manifest.obj), (
        f"{manifest}: {cluster.actors[1]} actors x {cluster.gpus_per_actor} GPU > {gpu_capacity(manifest.obj)} GPUs "
        "(worker groups' maxReplicas x nvidia.com/gpu)")
    cpus = min(_cpu(t["spec"]["containers"][0]) for g, t in ray_pod_templates(manifest.obj) if g != "head")
    assert cluster.cpus_per_actor <= cpus


def _cpu(container: dict) -> float:
    value = str(container["resources"]["limits"]["cpu"])
    return float(value[:-1]) / 1000 if value.endswith("m") else float(value)


# --- Ray cluster shape -------------------------------------------------------------------------------

@pytest.mark.parametrize("manifest", RAY_OBJECTS, ids=str)
def test_ray_cluster_autoscales_gpu_workers(manifest):
    spec = ray_cluster_spec(manifest.obj)
    assert spec.get("enableInTreeAutoscaling") is True, f"{manifest}: enableInTreeAutoscaling must be true"
    gpu_groups = [g for g in spec["workerGroupSpecs"] if gpus_per_pod(g["template"]) > 0]
    assert gpu_groups, f"{manifest}: no worker group with an nvidia.com/gpu limit"
    for g in spec["workerGroupSpecs"]:
        assert g["minReplicas"] <= g.get("replicas", g["minReplicas"]) <= g["maxReplicas"], g["groupName"]
        resources = g["template"]["spec"]["containers"][0]["resources"]
        # Kubernetes requires requests == limits for extended resources such as GPUs.
        assert resources.get("requests", {}).get("nvidia.com/gpu") in (None, resources["limits"].get("nvidia.com/gpu"))
    for _, template in ray_pod_templates(manifest.obj):
        assert template["spec"]["containers"][0]["image"] == DOCKER.image, (
            f"{manifest}: the Ray container must come first (KubeRay uses containers[0])")


@pytest.mark.parametrize("manifest", RAY_OBJECTS, ids=str)
def test_ray_version_matches_image_and_pin(manifest):
    ray_version = ray_cluster_spec(manifest.obj)["rayVersion"]
    assert ray_version == DOCKER.args["RAY_VERSION"], f"{manifest}: rayVersion {ray_version} != the image's Ray"
    assert Version(ray_version) in pyproject_requirement("ray").specifier


def test_ray_pods_use_the_rayrank_image_and_others_are_allowed():
    for manifest in of_kind("RayJob", "RayService", "CronJob"):
        for kind, container in all_containers(manifest.obj):
            image = container["image"]
            if image == DOCKER.image:
                continue
            allowed = OTHER_IMAGES.get((kind, container["name"]))
            assert allowed and image.startswith(allowed), (
                f"{manifest}: container {container['name']} uses {image}; expected {DOCKER.image} (cluster/Dockerfile)")
            assert ":" in image and not image.endswith(":latest"), f"{image}: pin a version"


# --- the nightly CronJob chain -----------------------------------------------------------------------

def test_cronjob_creates_the_rayjob_template_with_a_create_only_role():
    (cron,) = of_kind("CronJob")
    pod = cron.obj["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    namespace = cron.obj["metadata"]["namespace"]
    (container,) = pod["containers"]
    args = container.get("command", []) + container.get("args", [])
    assert args[-3:-1] == ["create", "-f"], f"{cron}: expected `kubectl create -f FILE`, got {args}"
    target = Path(args[-1])

    # the file is a key of the mounted ConfigMap, and that key holds a RayJob with generateName
    mount = next(m for m in container["volumeMounts"] if Path(m["mountPath"]) == target.parent)
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    (configmap,) = [m for m in of_kind("ConfigMap") if m.name == volume["configMap"]["name"]]
    assert configmap.obj["metadata"]["namespace"] == namespace
    template = yaml.safe_load(configmap.obj["data"][target.name])
    assert template["kind"] == "RayJob" and template["apiVersion"] == "ray.io/v1"
    assert "generateName" in template["metadata"] and "name" not in template["metadata"], (
        "one RayJob per night needs metadata.generateName (and `kubectl create`, which apply cannot do)")
    assert template["metadata"].get("namespace", namespace) == namespace

    # ServiceAccount -> RoleBinding -> Role allowing create on ray.io rayjobs, all in one namespace
    account = pod["serviceAccountName"]
    assert [m.name for m in of_kind("ServiceAccount") if m.obj["metadata"]["namespace"] == namespace] == [account]
    (binding,) = of_kind("RoleBinding")
    assert {"kind": "ServiceAccount", "name": account, "namespace": namespace} in binding.obj["subjects"]
    assert binding.obj["metadata"]["namespace"] == namespace
    (role,) = [m for m in of_kind("Role") if m.name == binding.obj["roleRef"]["name"]]
    assert binding.obj["roleRef"]["kind"] == "Role" and role.obj["metadata"]["namespace"] == namespace
    assert any("ray.io" in r["apiGroups"] and "rayjobs" in r["resources"] and "create" in r["verbs"]
               for r in role.obj["rules"]), f"{role} must allow create on ray.io rayjobs"
    assert all(set(r["verbs"]) <= {"create"} for r in role.obj["rules"]), "the submitter needs create only"


def test_nightly_paths_are_dated_and_cron_runs_in_utc():
    (cron,) = of_kind("CronJob")
    assert cron.obj["spec"]["timeZone"] in ("Etc/UTC", "UTC")
    assert cron.obj["spec"]["concurrencyPolicy"] == "Forbid"
    (nightly,) = [m for m in RAY_JOBS if "ConfigMap" in m.source]
    assert nightly.obj["spec"]["entrypoint"].count("$(date -u +%F)") == 2
    assert nightly.obj["spec"]["shutdownAfterJobFinishes"] is True


# --- Serve -------------------------------------------------------------------------------------------

def serve_config() -> dict:
    (service,) = RAYSERVICE
    return yaml.safe_load(service.obj["spec"]["serveConfigV2"])


def serve_unknown_keys(config: dict) -> list[str]:
    """Keys Ray's Serve schema does not define. Its pydantic models ignore unknown keys, so a misspelt
    `max_replica` would silently fall back to a default: check names against the models' fields."""
    from ray.serve import schema
    from ray.serve.config import AutoscalingConfig

    def unknown(data: dict, model, where: str) -> list[str]:
        return [f"{where}.{k}" for k in data if k not in model.model_fields]

    found = unknown(config, schema.ServeDeploySchema, "serveConfigV2")
    found += unknown(config.get("http_options", {}), schema.HTTPOptionsSchema, "http_options")
    for app in config.get("applications", []):
        found += unknown(app, schema.ServeApplicationSchema, app.get("name", "?"))
        for d in app.get("deployments", []):
            where = f"{app.get('name')}.{d.get('name')}"
            found += unknown(d, schema.DeploymentSchema, where)
            found += unknown(d.get("autoscaling_config") or {}, AutoscalingConfig, where + ".autoscaling_config")
            found += unknown(d.get("ray_actor_options") or {}, schema.RayActorOptionsSchema,
                             where + ".ray_actor_options")
    return found


def test_serve_config_matches_rays_serve_schema():
    from ray.serve.schema import ServeDeploySchema

    ServeDeploySchema.model_validate(serve_config())
    assert serve_unknown_keys(serve_config()) == []


def test_serve_key_check_catches_a_misspelt_key():
    config = serve_config()
    app = config["applications"][0]
    deployment = app["deployments"][0]
    deployment["autoscaling_config"]["max_replica"] = 3
    assert serve_unknown_keys(config) == [f"{app['name']}.{deployment['name']}.autoscaling_config.max_replica"]


def test_serve_import_paths_and_deployments_exist():
    declared = serve_deployment_names(REPO / "ray_app")
    for app in serve_config()["applications"]:
        module, _, attr = app["import_path"].partition(":")
        path = module_file(module)
        assert path, f"serveConfigV2 imports {module} but {module.replace('.', '/')}.py is not in the repo"
        assert installed(module)
        assert attr in top_level_names(path), f"{path.relative_to(REPO)} defines no top-level {attr}"
        fields = builder_arg_fields(path, attr)
        if fields is not None:  # args go to the builder's pydantic model: unknown keys would be rejected
            assert set(app.get("args") or {}) <= fields, f"args {sorted(app['args'])}; {attr} accepts {sorted(fields)}"
        for deployment in app.get("deployments", []):
            assert deployment["name"] in declared, (
                f"serveConfigV2 configures deployment {deployment['name']!r}; ray_app declares {sorted(declared)}")


def test_serve_config_agrees_with_the_local_one():
    """The packaged default Serve config and the RayService run the same application and deployments."""
    path = REPO / "ray_app" / "serve.default.yaml"
    assert path.is_file(), "ray_app/serve.default.yaml (the default Serve config) is missing"
    local = {a["import_path"]: a for a in yaml.safe_load(path.read_text()).get("applications", [])}
    for app in serve_config()["applications"]:
        assert app["import_path"] in local, f"{path.name} runs {sorted(local)}, the RayService {app['import_path']}"
        local_names = {d["name"] for d in local[app["import_path"]].get("deployments", [])}
        names = {d["name"] for d in app.get("deployments", [])}
        assert not local_names or names <= local_names, f"RayService deployments {names}, {path.name}: {local_names}"


def test_serve_autoscaling_fits_the_gpu_worker_group():
    (service,) = RAYSERVICE
    capacity = gpu_capacity(service.obj)
    for app in serve_config()["applications"]:
        for deployment in app.get("deployments", []):
            scaling = deployment.get("autoscaling_config")
            assert scaling, f"deployment {deployment['name']} has no autoscaling_config"
            gpus = deployment.get("ray_actor_options", {}).get("num_gpus", 0)
            assert gpus > 0, f"deployment {deployment['name']} asks for no GPU"
            assert 1 <= scaling["min_replicas"] <= scaling["max_replicas"]
            assert scaling["max_replicas"] * gpus <= capacity, (
                f"{deployment['name']}: max_replicas {scaling['max_replicas']} x {gpus} GPU > {capacity} GPUs")


# --- VM launcher -------------------------------------------------------------------------------------

LAUNCHER = yaml.safe_load((CLUSTER / "aws" / "ray-cluster.yaml").read_text())
GPU_INSTANCE = re.compile(r"^(g4dn|g5|g5g|g6|g6e|gr6|p3|p3dn|p4d|p4de|p5|p5e|p5en|p6-b200)\.")


def test_launcher_has_cpu_head_and_gpu_workers_on_aws():
    assert LAUNCHER["provider"]["type"] == "aws" and LAUNCHER["provider"]["region"]
    types = LAUNCHER["available_node_types"]
    head = types[LAUNCHER["head_node_type"]]
    assert not GPU_INSTANCE.match(head["node_config"]["InstanceType"]), "the head should be a CPU instance"
    gpu = [n for n, t in types.items()
           if n != LAUNCHER["head_node_type"] and GPU_INSTANCE.match(t["node_config"]["InstanceType"])]
    assert gpu, "no GPU worker type (g*/p* instance) in available_node_types"
    for name in gpu:
        assert types[name].get("max_workers", 0) > 0 and types[name].get("max_workers") <= LAUNCHER["max_workers"]


def test_launcher_installs_this_checkout_with_onnxruntime_gpu():
    (remote, local), = LAUNCHER["file_mounts"].items()
    assert (REPO / local / "pyproject.toml").resolve() == REPO / "pyproject.toml", (
        "file_mounts must sync the repository root (ray up runs from it)")
    setup = "\n".join(LAUNCHER["setup_commands"])
    assert re.search(rf"pip install .*-e {re.escape(remote)}\b", setup), setup
    assert f"torch=={DOCKER.args['TORCH_VERSION']}" in setup, "same torch pin as cluster/Dockerfile"
    assert "pip uninstall -y onnxruntime" in setup and "onnxruntime-gpu" in setup
    assert setup.index("uninstall -y onnxruntime") > setup.index(f"-e {remote}")
    assert LAUNCHER["docker"]["image"] == DOCKER.base, "the launcher runs the Dockerfile's base image"
    assert any("ray start --head" in c for c in LAUNCHER["head_start_ray_commands"])
    assert any("ray start --address" in c for c in LAUNCHER["worker_start_ray_commands"])


# --- docs --------------------------------------------------------------------------------------------

def test_readme_names_every_cluster_file():
    readme = (CLUSTER / "README.md").read_text()
    for path in sorted(CLUSTER.rglob("*")):
        if path.is_file() and path.name != "README.md":
            assert path.relative_to(CLUSTER).as_posix() in readme, f"cluster/README.md does not mention {path.name}"
