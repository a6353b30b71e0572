"""The deployment files in deploy/: they parse, the KubeRay objects are complete and agree with each other and
with the run configs, every command names a module or file that exists, the Serve configs pass Ray Serve's own
schema and build the real application, and (marked `ray`) the Serve config file starts a solver that answers
over HTTP. Everything but the last test runs without starting Ray."""

from __future__ import annotations

import copy
import importlib.util
import itertools
import json
import re
import shlex
import sys
from functools import lru_cache
from pathlib import Path, PurePosixPath
from typing import Any, Iterator

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
KUBERAY = DEPLOY / "kuberay"
SERVE_SOLVER = DEPLOY / "serve_solver.yaml"
CLUSTER_LAUNCHER = DEPLOY / "cluster.yaml"
DOCKERFILE = DEPLOY / "Dockerfile"

API_VERSIONS = {"RayCluster": "ray.io/v1", "RayJob": "ray.io/v1", "RayService": "ray.io/v1",
                "PersistentVolumeClaim": "v1", "ConfigMap": "v1"}
BUILTIN_RESOURCES = {"CPU", "GPU", "memory", "object_store_memory"}
# The public solver app's whole surface: nothing here changes state (swap, rollback, scale, job control).
PUBLIC_ROUTES = {("POST", "/v1/solve"), ("POST", "/v1/completions"), ("POST", "/v1/chat/completions"),
                 ("GET", "/v1/models"), ("GET", "/v1/model"), ("GET", "/healthz"),
                 ("GET", "/"), ("GET", "/static/{name}"), ("GET", "/v1/run")}
DOC_ROUTES = {"/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"}


# ------------------------------------------------------------------------------------------------- helpers
def _docs(path: Path) -> list[Any]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


@lru_cache(maxsize=None)
def _kube_objects() -> tuple[tuple[str, dict], ...]:
    return tuple((p.name, d) for p in sorted(KUBERAY.glob("*.yaml")) for d in _docs(p))


def _objects(kind: str) -> list[dict]:
    return [d for _, d in _kube_objects() if d.get("kind") == kind]


def _cluster_specs() -> list[tuple[str, dict]]:
    """Every Ray cluster spec: the RayCluster's, the RayJob's rayClusterSpec, the RayService's rayClusterConfig."""
    specs = [(f"RayCluster {o['metadata']['name']}", o["spec"]) for o in _objects("RayCluster")]
    specs += [(f"RayJob {o['metadata']['name']}", o["spec"]["rayClusterSpec"]) for o in _objects("RayJob")]
    specs += [(f"RayService {o['metadata']['name']}", o["spec"]["rayClusterConfig"]) for o in _objects("RayService")]
    return specs


def _groups(spec: dict) -> Iterator[tuple[str, dict]]:
    yield "head", spec["headGroupSpec"]
    for group in spec.get("workerGroupSpecs", []):
        yield group["groupName"], group


def _ray_resources(group: dict) -> dict[str, float]:
    """Custom Ray resources of a KubeRay group: `rayStartParams.resources` is a shell-quoted JSON string
    ('"{\\"sampler\\": 1}"'); newer KubeRay also has a group-level `resources` map."""
    out: dict[str, float] = {}
    raw = (group.get("rayStartParams") or {}).get("resources")
    if raw:
        text = raw.strip()
        if text[0] == text[-1] and text[0] in "'\"":
            text = text[1:-1].replace('\\"', '"')
        out.update(json.loads(text))
    if isinstance(group.get("resources"), dict):
        out.update(group["resources"])
    return out


def _custom(resources: dict | None) -> set[str]:
    return set(resources or {}) - BUILTIN_RESOURCES


def _run_configs() -> list[tuple[str, dict]]:
    """The example run configs shipped in ConfigMaps (every `*.yaml` key)."""
    out = []
    for cm in _objects("ConfigMap"):
        for key, text in (cm.get("data") or {}).items():
            if key.endswith((".yaml", ".yml")):
                out.append((f"{cm['metadata']['name']}/{key}", yaml.safe_load(text)))
    return out


def _serve_configs() -> list[tuple[str, dict]]:
    configs = [(SERVE_SOLVER.name, yaml.safe_load(SERVE_SOLVER.read_text()))]
    for svc in _objects("RayService"):
        assert isinstance(svc["spec"]["serveConfigV2"], str), "serveConfigV2 must be a YAML string"
        configs.append((f"RayService {svc['metadata']['name']}", yaml.safe_load(svc["spec"]["serveConfigV2"])))
    return configs


def _cpu(quantity: Any) -> float:
    text = str(quantity)
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


def _container(pod_spec: dict) -> dict:
    return pod_spec["containers"][0]


def _mount_path_for(pod_spec: dict, path: str, volume_kind: str) -> tuple[str, dict] | None:
    """(mountPath, volume) of the `volume_kind` volume mounted at a parent of `path` in the Ray container."""
    volumes = {v["name"]: v for v in pod_spec.get("volumes", [])}
    for mount in _container(pod_spec).get("volumeMounts", []):
        volume = volumes.get(mount["name"], {})
        if volume_kind in volume and PurePosixPath(path).is_relative_to(mount["mountPath"]):
            return mount["mountPath"], volume
    return None


def _shared_mount(pod_spec: dict) -> str:
    """Where the pod mounts the shared PersistentVolumeClaim."""
    volumes = {v["name"]: v for v in pod_spec.get("volumes", [])}
    (path,) = [m["mountPath"] for m in _container(pod_spec).get("volumeMounts", [])
               if "persistentVolumeClaim" in volumes.get(m["name"], {})]
    return path


def _module_file(module: str) -> Path:
    """The repository file `python -m module` runs; fails with a clear message when it does not exist."""
    parts = module.split(".")
    for candidate in (ROOT.joinpath(*parts).with_suffix(".py"), ROOT.joinpath(*parts, "__main__.py")):
        if candidate.is_file():
            return candidate
    pytest.fail(f"`python -m {module}`: no {'/'.join(parts)}.py (or package __main__) in the repository")


def _load_render_module():
    spec = importlib.util.spec_from_file_location("render_serve_config", DEPLOY / "render_serve_config.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("render_serve_config", module)
    spec.loader.exec_module(module)
    return module


def _pyproject() -> dict:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _pin(package: str) -> str:
    for dep in _pyproject()["project"]["dependencies"]:
        m = re.fullmatch(rf"{re.escape(package)}(\[[^\]]*\])?==(\S+)", dep.replace(" ", ""))
        if m:
            return m.group(2)
    raise AssertionError(f"pyproject.toml does not pin {package}")


# ------------------------------------------------------------------------------------------- parse + shape
def test_every_yaml_in_deploy_parses():
    files = sorted(DEPLOY.rglob("*.yaml")) + sorted(DEPLOY.rglob("*.yml"))
    assert {p.name for p in files} >= {"cluster.yaml", "serve_solver.yaml", "raycluster.yaml", "rayjob.yaml",
                                       "rayservice.yaml", "pvc.yaml", "run-config.yaml"}
    for path in files:
        docs = _docs(path)
        assert docs, f"{path} is empty"
        assert all(isinstance(d, dict) for d in docs), f"{path}: every document must be a mapping"
    for name, config in _run_configs():  # YAML embedded in ConfigMaps and the RayService
        assert isinstance(config, dict), name
    for name, config in _serve_configs():
        assert isinstance(config, dict), name


def test_kuberay_objects_have_api_version_kind_and_required_fields():
    kinds = [d.get("kind") for _, d in _kube_objects()]
    assert {"RayCluster", "RayJob", "RayService", "PersistentVolumeClaim", "ConfigMap"} <= set(kinds)
    for filename, obj in _kube_objects():
        kind = obj.get("kind")
        assert kind in API_VERSIONS, f"{filename}: unexpected kind {kind!r}"
        assert obj.get("apiVersion") == API_VERSIONS[kind], f"{filename}: {kind} needs apiVersion {API_VERSIONS[kind]}"
        assert obj.get("metadata", {}).get("name"), f"{filename}: {kind} without metadata.name"
    names = [(d["kind"], d["metadata"]["name"]) for _, d in _kube_objects()]
    assert len(names) == len(set(names)), "duplicate object names"

    for job in _objects("RayJob"):
        spec = job["spec"]
        assert spec["entrypoint"].strip()
        assert spec["shutdownAfterJobFinishes"] is True and "rayClusterSpec" in spec
        assert spec.get("submissionMode", "K8sJobMode") in ("K8sJobMode", "HTTPMode", "SidecarMode")
    for svc in _objects("RayService"):
        assert svc["spec"]["serveConfigV2"].strip() and "rayClusterConfig" in svc["spec"]
    for pvc in _objects("PersistentVolumeClaim"):
        assert "ReadWriteMany" in pvc["spec"]["accessModes"], "the run directory is shared across nodes: RWX"
        assert pvc["spec"]["resources"]["requests"]["storage"]

    import ray

    for where, spec in _cluster_specs():
        assert str(spec["rayVersion"]) == ray.__version__, f"{where}: rayVersion must be the pinned Ray"
        assert spec.get("authOptions", {}).get("mode") == "token", f"{where}: Ray token auth must be on"
        head = spec["headGroupSpec"]
        assert head.get("serviceType", "ClusterIP") == "ClusterIP", f"{where}: never expose the head Service"
        assert str(head["rayStartParams"].get("num-cpus")) == "0", f"{where}: keep workers off the head"
        assert spec.get("workerGroupSpecs"), f"{where}: no worker groups"
        for group_name, group in _groups(spec):
            pod = group["template"]["spec"]
            container = _container(pod)
            assert container.get("image"), f"{where}/{group_name}: container without image"
            resources = container.get("resources", {})
            for part in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(resources.get(part, {})), f"{where}/{group_name}: {part}"
            if group_name != "head":
                assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"], f"{where}/{group_name}"


def test_raycluster_rayjob_and_rayservice_run_the_same_cluster():
    """The three manifests repeat one cluster layout (YAML cannot share it across files): any drift between
    them (an image, a resource, a mount) is a bug, so only replica counts may differ."""
    def layout(spec: dict) -> dict:
        spec = copy.deepcopy(spec)
        for group in spec.get("workerGroupSpecs", []):
            for key in ("replicas", "minReplicas", "maxReplicas"):
                group.pop(key, None)
        return spec

    specs = _cluster_specs()
    assert len(specs) >= 3
    first_name, first = specs[0]
    for name, spec in specs[1:]:
        assert layout(spec) == layout(first), f"{name} differs from {first_name}"
    images = {_container(g["template"]["spec"])["image"] for _, s in specs for _, g in _groups(s)}
    assert len(images) == 1, f"one image for every pod, got {images}"


def test_every_pod_mounts_the_shared_volume_and_the_run_configs():
    pvcs = {p["metadata"]["name"] for p in _objects("PersistentVolumeClaim")}
    config_maps = {c["metadata"]["name"] for c in _objects("ConfigMap")}
    shared_paths = set()
    for where, spec in _cluster_specs():
        for group_name, group in _groups(spec):
            pod = group["template"]["spec"]
            volumes = {v["name"]: v for v in pod.get("volumes", [])}
            for volume in volumes.values():
                if "persistentVolumeClaim" in volume:
                    assert volume["persistentVolumeClaim"]["claimName"] in pvcs, f"{where}/{group_name}"
                if "configMap" in volume:
                    assert volume["configMap"]["name"] in config_maps, f"{where}/{group_name}"
            mounts = _container(pod).get("volumeMounts", [])
            assert all(m["name"] in volumes for m in mounts), f"{where}/{group_name}: mount of a missing volume"
            shared = [m["mountPath"] for m in mounts if "persistentVolumeClaim" in volumes[m["name"]]]
            assert shared, f"{where}/{group_name}: no shared volume (checkpoints cross nodes through it)"
            shared_paths.update(shared)
    assert len(shared_paths) == 1, f"one mount path for the shared volume everywhere, got {shared_paths}"


# ----------------------------------------------------------------------------------- placement + configs
def test_custom_resources_in_worker_groups_match_the_run_configs():
    (mount,) = {_shared_mount(g["template"]["spec"]) for _, s in _cluster_specs() for _, g in _groups(s)}
    run_configs = _run_configs()
    assert run_configs, "the ConfigMap must carry at least one example run config"
    for where, spec in _cluster_specs():
        providers: dict[str, list[dict]] = {}
        for group_name, group in _groups(spec):
            for name in _custom(_ray_resources(group)):
                providers.setdefault(name, []).append(group)
        assert {"trainer", "sampler"} <= set(providers), f"{where}: groups need `trainer` and `sampler`"
        for name, groups in providers.items():
            assert len(groups) == 1, f"{where}: custom resource {name!r} on more than one group"
        (trainer_group,) = providers["trainer"]
        (sampler_group,) = providers["sampler"]
        trainer_limits = _container(trainer_group["template"]["spec"])["resources"]["limits"]
        sampler_cpus = _cpu(_container(sampler_group["template"]["spec"])["resources"]["limits"]["cpu"])

        for name, rc in run_configs:
            training = rc.get("training", {})
            wanted = _custom(training.get("resources_per_worker"))
            assert wanted, f"{name}: pin training workers with a custom resource"
            assert wanted <= set(providers), f"{name}: training wants {wanted - set(providers)}, no group has it"
            if training.get("use_gpu"):
                for resource in wanted:
                    (group,) = providers[resource]
                    limits = _container(group["template"]["spec"])["resources"]["limits"]
                    assert int(limits.get("nvidia.com/gpu", 0)) >= 1, f"{name}: use_gpu on a group without GPUs"
            for pool in ("rollout", "solver"):
                pool_cfg = rc.get("serving", {}).get(pool, {})
                wanted = _custom(pool_cfg.get("resources"))
                assert wanted, f"{name}: pin serving.{pool} with a custom resource"
                assert wanted <= set(providers), f"{name}: serving.{pool} wants {wanted - set(providers)}"
                for resource in wanted:
                    (group,) = providers[resource]
                    cpus = _cpu(_container(group["template"]["spec"])["resources"]["limits"]["cpu"])
                    assert pool_cfg.get("num_cpus", 0) <= cpus, f"{name}: serving.{pool} replicas do not fit"
            root = rc.get("storage", {}).get("root", "runs")
            assert PurePosixPath(root).is_relative_to(mount), f"{name}: storage.root must be on {mount}"
        assert "nvidia.com/gpu" in trainer_limits, f"{where}: the trainer group is the GPU group"

        for svc_name, config in _serve_configs():
            for app in config["applications"]:
                solver = (app.get("args") or {}).get("serving", {}).get("solver", {})
                if svc_name.startswith("RayService"):
                    assert _custom(solver.get("resources")) <= set(providers) and solver.get("resources")
                    assert solver.get("num_cpus", 0) <= sampler_cpus


def test_example_run_configs_are_valid_dpost_configs():
    """Each ConfigMap run config parses with dpost's own loader (unknown keys and bad values fail there).
    Data files live on the cluster volume, so they are pointed at a local fixture for the check."""
    from cluster.config import parse_config

    fixture = str(ROOT / "tests" / "fixtures" / "gsm8k.jsonl")
    for name, raw in _run_configs():
        raw = copy.deepcopy(raw)
        for key in ("labeled", "unlabeled", "dev", "test"):
            if raw.get("data", {}).get(key):
                assert raw["data"][key].startswith("/"), f"{name}: data.{key} must be an absolute cluster path"
                raw["data"][key] = fixture
        config = parse_config(raw, where=name)
        assert config.training.resources_per_worker and config.serving.rollout.resources, name


def test_launcher_config_passes_rays_schema_and_matches_the_placement():
    from ray.autoscaler._private.util import prepare_config, validate_config

    import ray

    config = yaml.safe_load(CLUSTER_LAUNCHER.read_text())
    validate_config(prepare_config(copy.deepcopy(config)))  # Ray's ray-schema.json plus its AWS defaults
    assert config["provider"]["type"] == "aws"
    assert ray.__version__ in config["docker"]["image"]
    pinned = re.findall(r"ray\.__version__ == '([^']+)'", " ".join(config["setup_commands"]))
    assert set(pinned) <= {ray.__version__}
    assert f"torch=={_pin('torch')}" in " ".join(config["setup_commands"])
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert head["resources"].get("CPU") == 0, "keep training workers and replicas off the head"
    custom = {name: _custom(t.get("resources")) for name, t in types.items()}
    kube_custom = {r for _, s in _cluster_specs() for _, g in _groups(s) for r in _custom(_ray_resources(g))}
    assert set().union(*custom.values()) == kube_custom, "launcher and KubeRay must offer the same resources"
    for name, rc in _run_configs():
        assert _custom(rc["training"]["resources_per_worker"]) <= set().union(*custom.values()), name
    trainer_types = [t for t, names in custom.items() if "trainer" in names]
    assert [types[t]["node_config"]["InstanceType"].startswith(("g", "p")) for t in trainer_types] == [True]

    # file_mounts: local sources exist (the token is generated by the user: `ray get-auth-token --generate`)
    for remote, local in config["file_mounts"].items():
        if not local.startswith("~"):
            assert (ROOT / local).exists(), f"file_mounts {remote}: {local} does not exist"
    # setup: `pip install PATH` installs a synced checkout that is a Python project
    installs = [c for c in config["setup_commands"] if re.search(r"pip install\b.*~/", c)]
    assert installs, "setup_commands must install dpost"
    for command in installs:
        target = re.search(r"(~/\S+)", command).group(1)
        assert target in config["file_mounts"], f"{command!r} installs {target}, which file_mounts does not sync"
        assert (ROOT / config["file_mounts"][target] / "pyproject.toml").is_file()
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        start = " ".join(config[key])
        assert "RAY_AUTH_MODE=token" in start, f"{key}: start Ray with token authentication"
        assert "dashboard-host=0.0.0.0" not in start, f"{key}: the dashboard stays on 127.0.0.1"


# ------------------------------------------------------------------------------------ commands + modules
def test_rayjob_entrypoint_runs_an_existing_module_on_a_mounted_config():
    config_maps = {c["metadata"]["name"]: c for c in _objects("ConfigMap")}
    for job in _objects("RayJob"):
        argv = shlex.split(job["spec"]["entrypoint"])
        assert argv[:2] == ["python", "-m"], argv
        source = _module_file(argv[2]).read_text()
        assert "--config" in source, f"{argv[2]} takes no --config"
        config_path = argv[argv.index("--config") + 1]
        head_pod = job["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
        found = _mount_path_for(head_pod, config_path, "configMap")
        assert found, f"{config_path} is not on a ConfigMap mounted in the head pod (the driver runs there)"
        mount_path, volume = found
        key = str(PurePosixPath(config_path).relative_to(mount_path))
        assert key in config_maps[volume["configMap"]["name"]]["data"], f"no key {key} in the ConfigMap"


def test_dockerfile_installs_dpost_on_the_pinned_ray_image():
    import ray

    lines, current = [], ""
    for raw in DOCKERFILE.read_text().splitlines():
        if raw.strip().startswith("#") or not raw.strip():
            continue
        current += raw.rstrip("\\").strip() + " "
        if not raw.rstrip().endswith("\\"):
            lines.append(current.strip())
            current = ""
    args = dict(re.match(r"ARG (\w+)=?(.*)", line).groups() for line in lines if line.startswith("ARG "))
    assert lines[[i for i, line in enumerate(lines) if line.startswith("FROM")][0]] == "FROM ${RAY_IMAGE}"
    assert args["RAY_IMAGE"].startswith(f"rayproject/ray:{ray.__version__}-"), args["RAY_IMAGE"]
    assert _pin("ray") == ray.__version__
    text = " ".join(lines)
    assert set(re.findall(r"ray\.__version__ == '([^']+)'", text)) == {ray.__version__}
    assert f"torch=={_pin('torch')}" in text, "the image must install the torch version pyproject pins"
    assert re.search(r"pip install \.(\s|$)", text), "the image must `pip install .`"
    env = " ".join(line for line in lines if line.startswith("ENV "))
    assert "TORCH_EXTENSIONS_DIR=" in env
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text().split()
    for line in lines:
        if line.startswith("COPY "):
            *sources, _ = [t for t in line.split()[1:] if not t.startswith("--")]
            for src in sources:
                assert (ROOT / src).exists(), f"Dockerfile copies {src}, which does not exist"
                assert f"!{src}" in ignore or f"!{src}/**" in ignore, f"{src} is excluded by the .dockerignore"
    if "dpost " in text:  # the console script the image checks
        assert _pyproject()["project"]["scripts"]["dpost"] == "cluster.cli:main"


def _shell_commands(markdown: str) -> Iterator[list[str]]:
    for block in re.findall(r"```(?:bash|sh)\n(.*?)```", markdown, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            argv = shlex.split(line, comments=True)
            while argv and re.fullmatch(r"[A-Z_]+=.*", argv[0]):  # VAR=value prefixes
                argv = argv[1:]
            if argv and argv[-1] == "&":
                argv = argv[:-1]
            if not argv or argv[0] == "export":
                continue
            if argv[:2] == ["kubectl", "exec"] and "--" in argv:
                argv = argv[argv.index("--") + 1:]
            if argv[:2] == ["ray", "exec"]:
                yield argv[:3]
                argv = shlex.split(argv[3])
            yield argv


def _check_commands(readme: Path) -> list[list[str]]:
    """Every shell command of a README names files, modules, make targets and dpost arguments that exist;
    returns the dpost command lines."""
    from cluster.cli import build_parser

    targets = set(re.findall(r"^([a-z][\w-]*):", (ROOT / "Makefile").read_text(), re.M))
    name = readme.relative_to(ROOT)
    dpost = []
    for argv in _shell_commands(readme.read_text()):
        argv = list(itertools.takewhile(lambda t: t not in (">", ">>", "<", "|", "&&", ";"), argv))
        for token in argv:
            if re.match(r"(deploy|benchmarks|configs)/", token):
                assert (ROOT / token).exists(), f"{name} names {token}, which does not exist: {argv}"
        for i, token in enumerate(argv[:-1]):
            if token == "-m" and i > 0 and argv[i - 1].startswith("python") and (
                    argv[i + 1].split(".")[0] not in sys.stdlib_module_names):  # e.g. `python3 -m venv`
                _module_file(argv[i + 1])
        if argv[0] == "make":
            assert set(argv[1:]) <= targets, f"{name}: `{shlex.join(argv)}` names a target the Makefile lacks"
        if argv[0] == "dpost":
            dpost.append(argv)
            try:
                build_parser().parse_args(argv[1:])
            except SystemExit:
                pytest.fail(f"{name}: `{shlex.join(argv)}` is not a valid dpost command line")
    return dpost


def test_readme_commands_name_files_modules_and_cli_arguments_that_exist():
    assert len(list(_shell_commands((DEPLOY / "README.md").read_text()))) > 10
    assert len(_check_commands(DEPLOY / "README.md")) >= 5
    for readme in (ROOT / "README.md", ROOT / "benchmarks" / "README.md"):
        _check_commands(readme)


# ------------------------------------------------------------------------------------------ Serve configs
def test_serve_configs_pass_ray_serves_schema_with_no_ignored_keys():
    """`serve run`/`serve deploy` validate with ServeDeploySchema, which silently drops unknown keys: a typo
    like `num_replica` would be ignored, so the keys are also checked against the schema's fields."""
    from ray.serve.schema import (DeploymentSchema, HTTPOptionsSchema, ServeApplicationSchema,
                                  ServeDeploySchema)

    def unknown(data: dict, model: Any) -> set[str]:
        names = {n for n, f in model.model_fields.items()} | {
            f.alias for f in model.model_fields.values() if f.alias}
        return set(data) - names

    for name, config in _serve_configs():
        ServeDeploySchema.model_validate(config)
        assert not unknown(config, ServeDeploySchema), f"{name}: {unknown(config, ServeDeploySchema)}"
        assert not unknown(config.get("http_options", {}), HTTPOptionsSchema), name
        for app in config["applications"]:
            assert not unknown(app, ServeApplicationSchema), f"{name}: {unknown(app, ServeApplicationSchema)}"
            for dep in app.get("deployments", []):
                assert not unknown(dep, DeploymentSchema), f"{name}: {unknown(dep, DeploymentSchema)}"
            checkpoint = (app.get("args") or {}).get("checkpoint", "")
            assert checkpoint.startswith("/"), f"{name}: the checkpoint must be an absolute path"


def test_serve_import_paths_resolve_and_build_the_app_with_their_args_and_overrides():
    """What Serve's build task does, without Ray: import the builder by its import_path, call it with the
    config's args (minus the checkpoint, so nothing is published to the registry), build the application,
    and apply each `deployments` override to the deployment it names."""
    from ray._common.utils import import_attr
    from ray.serve._private.api import call_user_app_builder_with_args_if_necessary
    from ray.serve._private.build_app import build_app

    for name, config in _serve_configs():
        for app in config["applications"]:
            target = import_attr(app["import_path"])
            assert callable(target), f"{name}: {app['import_path']} is not callable"
            args = dict(app.get("args") or {})
            args.pop("checkpoint", None)
            built = build_app(call_user_app_builder_with_args_if_necessary(target, args), name=app["name"])
            deployments = {d.name: d for d in built.deployments}
            assert {"Sampler", "SolverAPI"} <= set(deployments), f"{name}: {sorted(deployments)}"
            for override in app.get("deployments", []):
                assert override["name"] in deployments, f"{name}: no deployment {override['name']!r}"
                deployments[override["name"]].options(**{k: v for k, v in override.items() if k != "name"})


def _routes(routes: list, prefix: str = "") -> set[tuple[str, str]]:
    """(method, path) of every route, descending into routers FastAPI included (Serve's class ingress)."""
    out: set[tuple[str, str]] = set()
    for route in routes:
        inner = getattr(route, "original_router", None) or getattr(route, "router", None)
        if inner is not None and hasattr(inner, "routes"):
            out |= _routes(inner.routes, prefix + (getattr(route, "prefix", "") or ""))
        elif getattr(route, "methods", None):
            path = prefix + route.path
            out |= {(m, path) for m in route.methods if m != "HEAD" and path not in DOC_ROUTES}
    return out


def test_public_solver_app_has_no_state_changing_route():
    """The app the Serve configs expose publicly answers questions and reports the model, nothing else: no
    swap, rollback, scale or job route (those go through the private, token-protected Ray API)."""
    from services.api import app

    routes = _routes(app.routes)
    documented = {(m.upper(), path) for path, ops in app.openapi()["paths"].items() for m in ops}
    assert routes == documented == PUBLIC_ROUTES, f"extra routes: {sorted((routes | documented) - PUBLIC_ROUTES)}"
    for name, config in _serve_configs():
        assert [a["import_path"] for a in config["applications"]] == ["services.app:solver_app"], name


def test_render_serve_config_overrides_checkpoint_version_and_port(tmp_path, monkeypatch):
    render = _load_render_module()
    original = render.load()
    monkeypatch.chdir(tmp_path)
    config = render.render(original, checkpoint="runs/demo/checkpoints/sft-1", host="0.0.0.0", port=18123)
    args = config["applications"][0]["args"]
    assert args["checkpoint"] == str(tmp_path / "runs" / "demo" / "checkpoints" / "sft-1")
    assert args["version"] == "demo:sft-1"
    assert config["http_options"] == {**original["http_options"], "host": "0.0.0.0", "port": 18123}
    assert args["serving"] == original["applications"][0]["args"]["serving"]
    assert render.load() == original, "the file itself is never changed"
    render.validate(config)

    out = tmp_path / "solver.yaml"
    assert render.main(["--checkpoint", str(tmp_path / "ck"), "--version", "v9", "--out", str(out)]) == 0
    written = yaml.safe_load(out.read_text())["applications"][0]["args"]
    assert written["checkpoint"] == str(tmp_path / "ck") and written["version"] == "v9"
    assert render.main(["--app", "nope", "--out", str(tmp_path / "x.yaml")]) == 2
    assert not (tmp_path / "x.yaml").exists()


# --------------------------------------------------------------------------- the Serve config, for real
@pytest.mark.ray
def test_serve_config_file_starts_the_solver_and_it_answers_over_http(ray_cluster, serve_port, sft_result):
    """deploy/serve_solver.yaml, with the checkpoint and port overridden the documented way, deployed the way
    `serve run CONFIG` deploys a config file: validate with ServeDeploySchema, `serve_start` with its HTTP
    options (this joins the session's Serve instance), then `client.deploy_apps(config)`, which makes the
    controller import `services.app:solver_app` and build it from the file's args. Replaces the session's
    `solver` app, and deletes it at the end."""
    import time

    import httpx
    from ray import serve
    from ray.serve._private import api as _private_api
    from ray.serve.schema import ServeDeploySchema

    from services.pools import wait_for_version

    render = _load_render_module()
    version = "deploy-test:sft"
    config = render.render(render.load(), checkpoint=str(sft_result.checkpoint), version=version,
                           host="127.0.0.1", port=serve_port)
    # the tiny model: keep decoding short (the file's 300 tokens are for a real model)
    config["applications"][0]["args"]["serving"]["max_new_tokens"] = 48
    schema = ServeDeploySchema.model_validate(config)
    client = _private_api.serve_start(http_options=schema.http_options.model_dump(),
                                      proxy_location=schema.proxy_location,
                                      controller_options=schema.controller_options)
    try:
        client.deploy_apps(schema, _blocking=False)
        deadline = time.monotonic() + 600
        while True:
            app = serve.status().applications.get("solver")
            status = str(app.status) if app else "NOT_STARTED"
            if status.endswith("RUNNING"):
                break
            assert not status.endswith("DEPLOY_FAILED"), app.message
            assert time.monotonic() < deadline, f"solver app still {status}"
            time.sleep(1)
        wait_for_version("solver", version, timeout_s=300)

        url = f"http://127.0.0.1:{serve_port}"
        health = httpx.get(f"{url}/healthz", timeout=30)
        assert health.status_code == 200 and health.json()["status"] == "ok", health.text
        r = httpx.post(f"{url}/v1/solve", json={"question": "Ava has 12 pens. She buys 5 more. How many pens?"},
                       timeout=120)
        assert r.status_code == 200, r.text
        body = r.json()
        assert set(body) >= {"answer", "rationale", "votes", "model_version"}
        assert body["model_version"] == version
        assert httpx.get(f"{url}/v1/model", timeout=30).status_code == 200
    finally:
        serve.delete("solver")
