"""The deployment files under deploy/ are well formed and agree with this repository.

- Every YAML parses and is one of the kinds checked here (a new file cannot go unchecked).
- The cluster-launcher files pass Ray's own cluster schema (``ray-schema.json``, shipped with
  core ray) and name what ``ray up`` needs: ``cluster_name``, ``provider.type``, node types with
  ``node_config`` and ``resources``, a ``head_node_type`` among them, a head that offers no CPU
  (so partitions go to the workers), setup commands that install this repository.
- The KubeRay files name the fields their CRDs require (``ray.io/v1``; ``RayCluster``: head
  group, worker groups with replicas/minReplicas/maxReplicas, the in-tree autoscaler;
  ``RayJob``: entrypoint, ``shutdownAfterJobFinishes``, a cluster spec, a volume for results).
- The image they run is the one ``deploy/Dockerfile`` builds under the name the guide gives;
  the Dockerfile starts from an official ``rayproject/ray`` image of the same Ray version as the
  other files, and installs the packages ``pyproject.toml`` declares.
- Every ``mmusim run`` command in these files and in the guide parses with mmusim's own command
  line, names a built-in scenario, and its ``--set`` overrides apply to it; every ``ray start``
  option they use exists.

Nothing here touches the network or starts anything.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from typing import Any, Iterator

import jsonschema
import pytest
import yaml
from packaging.specifiers import SpecifierSet

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
GUIDE = DEPLOY / "README.md"
DOCKERFILE = DEPLOY / "Dockerfile"
LAUNCHER_FILES = ("aws.yaml", "gcp.yaml")
KUBE_FILES = ("kuberay/raycluster.yaml", "kuberay/rayjob.yaml", "kuberay/results-pod.yaml")
PYPROJECT_TEXT = (ROOT / "pyproject.toml").read_text()


def pyproject(pattern: str) -> str:
    """One value of pyproject.toml (read with a pattern: tomllib is not in Python 3.10)."""
    m = re.search(pattern, PYPROJECT_TEXT, re.M)
    assert m, f"pyproject.toml: nothing matches {pattern!r}"
    return m.group(1)


VERSION = pyproject(r'^version = "([^"]+)"')
REQUIRES_PYTHON = SpecifierSet(pyproject(r'^requires-python = "([^"]+)"'))
RAY_REQUIREMENT = SpecifierSet(pyproject(r'^\s*"ray([<>=!~][^"]*)"'))
PACKAGES = re.findall(r'"([^"]+)\*"', pyproject(r"^include = \[(.*)\]$"))


def load(rel: str) -> list[Any]:
    return [d for d in yaml.safe_load_all((DEPLOY / rel).read_text()) if d is not None]


def docs_of_kind(rel: str, kind: str) -> list[dict[str, Any]]:
    return [d for d in load(rel) if d.get("kind") == kind]


def dockerfile_ray_version() -> str:
    m = re.search(r"^ARG RAY_VERSION=(\S+)$", DOCKERFILE.read_text(), re.M)
    assert m, "deploy/Dockerfile: no `ARG RAY_VERSION=...` before FROM"
    return m.group(1)


def built_image() -> str:
    """The image name the guide builds: ``docker build -f deploy/Dockerfile -t NAME .``."""
    names = set(re.findall(r"docker build -f deploy/Dockerfile -t (\S+) \.", GUIDE.read_text()))
    assert len(names) == 1, f"the guide should build deploy/Dockerfile under one name, found {sorted(names)}"
    return names.pop()


# -- every file -------------------------------------------------------------------------------


def test_every_yaml_under_deploy_parses_and_is_checked_here() -> None:
    found = sorted(str(p.relative_to(DEPLOY)) for p in DEPLOY.rglob("*") if p.suffix in (".yaml", ".yml"))
    assert found == sorted(LAUNCHER_FILES + KUBE_FILES), "a YAML file under deploy/ that this test does not check"
    for rel in found:
        docs = load(rel)
        assert docs and all(isinstance(d, dict) for d in docs), f"deploy/{rel}: expected YAML mappings"


# -- the Dockerfile and the image name --------------------------------------------------------


def test_the_dockerfile_starts_from_an_official_ray_image_and_installs_this_repository() -> None:
    text = DOCKERFILE.read_text()
    version = dockerfile_ray_version()
    froms = re.findall(r"^FROM (\S+)", text, re.M)
    assert froms == ["rayproject/ray:${RAY_VERSION}-py311"], froms  # official image, one stage, CPU
    assert version in RAY_REQUIREMENT, f"the image's Ray {version} is outside pyproject.toml's ray{RAY_REQUIREMENT}"
    py = re.search(r"-py3(\d+)", froms[0])
    assert py and REQUIRES_PYTHON.contains(f"3.{py.group(1)}")
    # the packages pyproject.toml declares, copied into one directory that pip installs
    packages = PACKAGES
    assert packages, "pyproject.toml: no packages under [tool.setuptools.packages.find] include"
    copied = re.findall(r"^COPY --chown=ray:users (.+) /home/ray/mmusim/?\S*$", text, re.M)
    sources = {s for line in copied for s in line.split()}
    assert {"pyproject.toml", "README.md", *packages} <= sources, sources
    for source in sources:
        assert (ROOT / source).exists(), f"deploy/Dockerfile copies {source}, which is not in the repository"
    assert "pip install --no-cache-dir /home/ray/mmusim" in text
    assert re.search(r"^EXPOSE 6379 8265 10001$", text, re.M)
    # the build context sends what is copied, and only that
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text().split("\n")
    allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    assert "*" in ignore and allowed == sources, (allowed, sources)


def test_every_manifest_runs_the_image_the_guide_builds_at_one_ray_version() -> None:
    image = built_image()
    assert image == f"mmusim:{VERSION}"
    version = dockerfile_ray_version()
    for rel in LAUNCHER_FILES:
        assert load(rel)[0]["docker"]["image"] == f"rayproject/ray:{version}-py311", rel  # the Dockerfile's base
    images = []
    for rel in KUBE_FILES:
        for doc in load(rel):
            images += [c["image"] for c in _containers(doc)]
            for spec in _ray_cluster_specs(doc):
                assert spec["rayVersion"] == version, rel
    assert images and set(images) == {image}, images
    guide = GUIDE.read_text()
    assert f"ray[default]=={version}" in guide and f"pip install . 'ray=={version}'" in guide


# -- the cluster launcher ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def ray_cluster_schema() -> dict[str, Any]:
    import ray.autoscaler

    return json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())


@pytest.mark.parametrize("rel", LAUNCHER_FILES)
def test_launcher_config_passes_rays_schema_and_names_what_ray_up_needs(rel: str, ray_cluster_schema) -> None:
    (config,) = load(rel)
    jsonschema.validate(config, ray_cluster_schema)
    assert config["cluster_name"] and config["provider"]["type"] == rel.split(".")[0]
    types = config["available_node_types"]
    for name, t in types.items():
        assert isinstance(t["node_config"], dict) and t["node_config"], f"{rel}: {name} has no node_config"
        assert isinstance(t["resources"], dict), f"{rel}: {name} has no resources"
    head = config["head_node_type"]
    assert head in types
    assert types[head]["resources"] == {"CPU": 0}  # no partition on the head
    workers = [t for n, t in types.items() if n != head]
    assert len(workers) == 1 and workers[0].get("resources", {}).get("CPU", 1) > 0
    w = workers[0]
    assert 2 <= w["min_workers"] <= w["max_workers"] <= config["max_workers"]  # quickstart's 2 partitions, one each
    # this repository, copied to every node and installed there before Ray starts
    assert config["file_mounts"] == {"~/mmusim": "."}
    assert any(re.search(r"\bpip install\b.*~/mmusim", c) for c in config["setup_commands"]), config["setup_commands"]
    assert any("ray start --head --port=6379" in c for c in config["head_start_ray_commands"])
    assert any("ray start --address=$RAY_HEAD_IP:6379" in c for c in config["worker_start_ray_commands"])


@pytest.mark.parametrize("rel", LAUNCHER_FILES)
def test_launcher_config_passes_rays_own_config_checks(rel: str) -> None:
    """What ``ray up`` does to a config before launching anything: fill in the provider's
    defaults, then validate (schema, node types, head type, worker bounds). Offline."""
    try:
        from ray.autoscaler._private.util import prepare_config, validate_config
    except ImportError as e:  # a private module: name the reason if a Ray release moves it
        pytest.skip(f"this Ray has no ray.autoscaler._private.util.prepare_config/validate_config: {e}")
    (config,) = load(rel)
    validate_config(prepare_config(config))


# -- KubeRay ----------------------------------------------------------------------------------


def _ray_cluster_specs(doc: dict[str, Any]) -> list[dict[str, Any]]:
    if doc.get("kind") == "RayCluster":
        return [doc["spec"]]
    if doc.get("kind") == "RayJob":
        return [doc["spec"]["rayClusterSpec"]]
    return []


def _pod_specs(doc: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for spec in _ray_cluster_specs(doc):
        yield spec["headGroupSpec"]["template"]["spec"]
        for group in spec["workerGroupSpecs"]:
            yield group["template"]["spec"]
    if doc.get("kind") == "Pod":
        yield doc["spec"]


def _containers(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return [c for pod in _pod_specs(doc) for c in pod["containers"]]


def check_ray_cluster_spec(spec: dict[str, Any], where: str) -> None:
    assert spec["enableInTreeAutoscaling"] is True, where
    head = spec["headGroupSpec"]
    assert head["rayStartParams"].get("num-cpus") == "0", f"{where}: partitions must not land on the head"
    c = head["template"]["spec"]["containers"][0]
    assert c["name"] and c["image"], where
    assert {p["containerPort"] for p in c["ports"]} >= {6379, 8265}, where
    groups = spec["workerGroupSpecs"]
    assert groups, f"{where}: no worker group"
    for g in groups:
        assert g["groupName"] and g["template"]["spec"]["containers"][0]["image"], where
        for key in ("replicas", "minReplicas", "maxReplicas"):
            assert isinstance(g[key], int) and not isinstance(g[key], bool), f"{where}: {key} must be an integer"
        assert 2 <= g["minReplicas"] <= g["replicas"] <= g["maxReplicas"], f"{where}: 2 <= min <= replicas <= max"
    for params in [head["rayStartParams"]] + [g.get("rayStartParams", {}) for g in groups]:
        assert all(isinstance(v, str) for v in params.values()), f"{where}: rayStartParams values must be strings"


def test_raycluster_names_the_fields_its_crd_requires() -> None:
    (doc,) = load("kuberay/raycluster.yaml")
    assert doc["apiVersion"] == "ray.io/v1" and doc["kind"] == "RayCluster" and doc["metadata"]["name"]
    check_ray_cluster_spec(doc["spec"], "raycluster.yaml")


def test_rayjob_runs_a_builtin_scenario_and_keeps_its_results_on_a_volume() -> None:
    (job,) = docs_of_kind("kuberay/rayjob.yaml", "RayJob")
    assert job["apiVersion"] == "ray.io/v1" and job["metadata"]["name"]
    spec = job["spec"]
    assert spec["shutdownAfterJobFinishes"] is True
    check_ray_cluster_spec(spec["rayClusterSpec"], "rayjob.yaml")
    args = parse_mmusim_run(spec["entrypoint"])
    assert args.backend == "ray" and args.address == "auto"
    # --out is on a persistent volume mounted on the head, where the entrypoint runs
    head_pod = spec["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    mounts = {m["mountPath"]: m["name"] for m in head_pod["containers"][0]["volumeMounts"]}
    mount = next((p for p in mounts if str(args.out).startswith(p.rstrip("/") + "/")), None)
    assert mount is not None, f"--out {args.out} is not under a volume mounted on the head: {sorted(mounts)}"
    volume = next(v for v in head_pod["volumes"] if v["name"] == mounts[mount])
    claim = volume["persistentVolumeClaim"]["claimName"]
    assert [d["metadata"]["name"] for d in docs_of_kind("kuberay/rayjob.yaml", "PersistentVolumeClaim")] == [claim]
    (pod,) = load("kuberay/results-pod.yaml")  # the pod the guide copies results out of
    assert pod["kind"] == "Pod" and pod["metadata"]["name"] == "mmusim-results"
    assert [v["persistentVolumeClaim"]["claimName"] for v in pod["spec"]["volumes"]] == [claim]
    assert [m["mountPath"] for m in pod["spec"]["containers"][0]["volumeMounts"]] == [mount]
    assert f"kubectl logs job/{job['metadata']['name']}" in GUIDE.read_text()  # the submitter Job's name


# -- the commands the files and the guide give --------------------------------------------------


def parse_mmusim_run(command: str) -> Any:
    """``mmusim run ...`` (or ``python -m workloads.cli run ...``) parsed by mmusim's own
    command line, the run itself replaced by a stub; its scenario is loaded and its overrides
    applied, which raises on an unknown scenario or knob."""
    import workloads.cli as cli
    from workloads.scenario import builtin_scenarios, load_scenario

    argv = shlex.split(command, comments=True)
    start = next(i for i, a in enumerate(argv) if a == "run" and i > 0 and argv[i - 1] in ("mmusim", "workloads.cli"))
    seen: list[Any] = []
    real = cli._cmd_run
    cli._cmd_run = lambda args: seen.append(args) or 0  # type: ignore[assignment]
    try:
        assert cli.main(argv[start:]) == 0, command
    finally:
        cli._cmd_run = real
    (args,) = seen
    assert args.scenario in {name for name, _ in builtin_scenarios()}, f"{command}: not a built-in scenario"
    load_scenario(args.scenario).with_overrides(args.overrides)
    if args.address not in (None, "auto"):
        from cluster.ray_backend import RayConfig

        RayConfig(address=args.address.replace("HEAD_IP", "10.0.0.1"))  # a placeholder for the head's address
    return args


RUN = re.compile(r"(?:\bmmusim|python -m workloads\.cli) run [a-z][^'\n`]*")  # `mmusim run <scenario>...`


def guide_code() -> list[str]:
    """The lines of the guide's fenced code blocks, and its inline code spans that are whole
    ``mmusim run`` commands (``mmusim run SCENARIO ...``, a template, is left out)."""
    lines, fenced = [], False
    for line in GUIDE.read_text().splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif fenced:
            lines.append(line)
    prose = re.sub(r"```.*?```", "", GUIDE.read_text(), flags=re.S).replace("\n", " ")
    lines += [span for span in re.findall(r"`([^`]+)`", prose) if re.match(r"mmusim run [a-z]", span)]
    return lines


def documented_commands() -> list[tuple[str, str]]:
    """(file, command) for every ``mmusim run`` in the guide's code and in the files under
    deploy/ (their comments included)."""
    sources = [(GUIDE, guide_code())]
    sources += [(path, path.read_text().splitlines()) for path in [DOCKERFILE, *(DEPLOY / rel for rel in LAUNCHER_FILES + KUBE_FILES)]]
    found = []
    for path, lines in sources:
        for line in lines:
            for m in RUN.finditer(line):
                found.append((str(path.relative_to(ROOT)), m.group(0).strip()))
    return found


def test_every_documented_mmusim_run_parses_and_names_a_builtin_scenario() -> None:
    commands = documented_commands()
    files = {f for f, _ in commands}
    assert {"deploy/README.md", "deploy/aws.yaml", "deploy/gcp.yaml", "deploy/kuberay/rayjob.yaml"} <= files, files
    backends = []
    for where, command in commands:
        args = parse_mmusim_run(command)
        backends.append(args.backend)
        if args.backend == "ray" and where != "deploy/README.md":
            assert args.address == "auto", f"{where}: {command}: inside a cluster, join it with --address auto"
    assert backends.count("ray") >= 8, commands


def test_every_documented_ray_start_uses_options_ray_start_has() -> None:
    from ray.scripts.scripts import start

    options = {o for p in start.params for o in p.opts}
    code = guide_code() + [line for rel in LAUNCHER_FILES for line in (DEPLOY / rel).read_text().splitlines()]
    lines = [line for line in code if "ray start " in line]
    assert len(lines) >= 8, lines
    for line in lines:
        words = shlex.split(line[line.index("ray start "):].split(";")[0].split("`")[0])
        used = {w.split("=")[0] for w in words if w.startswith("--")}
        assert used <= options, f"{line.strip()}: ray start has no {sorted(used - options)}"
