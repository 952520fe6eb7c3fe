"""cluster/Dockerfile: a CUDA Ray base matching the project's pins, onnxruntime-gpu in place of the CPU
wheel, the project installed from sources that exist, non-root, and no model weights copied in."""

from __future__ import annotations

import fnmatch
import re

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

from tests.cluster.manifests import CLUSTER, REPO, load_pyproject, read_dockerfile

DOCKER = read_dockerfile()
PYPROJECT = load_pyproject()
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".onnx", ".gguf", ".ckpt", ".h5")


def test_documented_image_is_tagged_with_the_project_version():
    name, _, tag = DOCKER.image.rpartition(":")
    assert name.endswith("/rayrank") and tag == PYPROJECT["project"]["version"], DOCKER.image


def test_base_is_the_pinned_ray_with_cuda_and_a_supported_python():
    match = re.fullmatch(r"rayproject/ray:(?P<ray>[\d.]+)-py(?P<py>\d)(?P<minor>\d+)-(?P<cuda>gpu|cu\d+)", DOCKER.base)
    assert match, f"base image {DOCKER.base} is not a rayproject/ray CUDA image"
    ray_req = next(Requirement(r) for r in PYPROJECT["project"]["dependencies"] if r.startswith("ray"))
    assert Version(match["ray"]) in ray_req.specifier, f"{DOCKER.base}: Ray {match['ray']} outside {ray_req}"
    python = Version(f"{match['py']}.{match['minor']}")
    assert python in SpecifierSet(PYPROJECT["project"]["requires-python"])


def test_installs_torch_the_project_and_onnxruntime_gpu_last():
    script = " && ".join(DOCKER.runs)
    assert f"torch=={DOCKER.args['TORCH_VERSION']}" in script
    # the project with every extra: a cluster runs the funnel (faiss, PyStemmer) and OpenVINO too
    project, uninstall, gpu = (script.find(s) for s in (' ".[all]" ', "pip uninstall -y onnxruntime", "onnxruntime-gpu"))
    assert -1 < project < uninstall < gpu, "install the project, then swap onnxruntime for onnxruntime-gpu"
    assert "CUDAExecutionProvider" in script, "the build should prove the CUDA provider is in the wheel"


def test_runs_as_a_numeric_non_root_user():
    user = DOCKER.users[-1].split(":")[0]
    assert user.isdigit() and int(user) != 0, f"USER {DOCKER.users[-1]}: numeric and non-root (runAsNonRoot)"


def test_copy_sources_exist_and_pass_the_dockerignore():
    ignore = [line.strip() for line in (CLUSTER / "Dockerfile.dockerignore").read_text().splitlines()
              if line.strip() and not line.startswith("#")]

    def excluded(path: str) -> bool:
        state = False  # later patterns win, `!` re-includes
        for pattern in ignore:
            negate, pat = pattern.startswith("!"), pattern.lstrip("!").rstrip("/")
            if fnmatch.fnmatch(path, pat) or pat == "**":
                state = not negate
        return state

    sources = [s for srcs, _ in DOCKER.copies for s in srcs]
    for source in sources:
        path = REPO / source
        assert path.exists(), f"cluster/Dockerfile copies {source}, which is not in the repository"
        assert not excluded(source.rstrip("/")), f"{source} is excluded by cluster/Dockerfile.dockerignore"
    # what the manifests and pip need is copied: packages, configs, build metadata
    for needed in ("pyproject.toml", "README.md", "configs/", "rayrank/", "jobs/", "ray_app/"):
        assert needed in sources, f"cluster/Dockerfile does not COPY {needed}"


def test_configs_land_in_rayrank_home():
    home = DOCKER.env["RAYRANK_HOME"]
    assert DOCKER.workdir == home
    (dest,) = [d for srcs, d in DOCKER.copies if "configs/" in srcs]
    assert dest.rstrip("/") == "configs", "relative COPY into WORKDIR puts configs at $RAYRANK_HOME/configs"


def test_no_model_weights_are_copied():
    for sources, _ in DOCKER.copies:
        for source in sources:
            path = REPO / source
            files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
            weights = [p.relative_to(REPO).as_posix() for p in files if p.suffix in WEIGHT_SUFFIXES]
            assert not weights, f"weights would be baked into the image: {weights}"
