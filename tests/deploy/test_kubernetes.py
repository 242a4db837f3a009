"""The Kubernetes manifests of ``kubernetes/``, checked offline (no cluster here).

Every document is validated against the Kubernetes API's JSON schemas (the
``kubernetes-validate`` package, strict: an unknown field is an error) for pinned
versions; then what a schema cannot see: the probes ask for /health on the port the
process serves it, the workers' scheduler address is the Service's, the token Secret is
mounted where ``--token-file`` reads it, and every container's arguments parse with
regrow's own command line. Where ``kubectl`` is installed, ``kubectl kustomize``
renders the directory and an overlay that renames the image.
"""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import click
import kubernetes_validate
import pytest
import yaml

from regrow.cli import main
from regrow.protocol.comm import parse_address
from regrow.protocol.health import parse_http_address

ROOT = Path(__file__).resolve().parents[2]
KUBE = ROOT / "kubernetes"
# The oldest Kubernetes still commonly run, and a recent one: the schemas are bundled.
K8S_VERSIONS = ("1.31", "1.37")
# What the downward API gives a pod, to stand in for $(VAR) in its arguments.
ENV_EXAMPLES = {
    "POD_IP": "10.244.1.7",
    "POD_NAME": "regrow-worker-5d9c7b6f4-x2x9q",
    "CPU_LIMIT": "2",
    "MEMORY_LIMIT": "2147483648",
}

Doc = dict[str, Any]


def _load(path: Path) -> list[Doc]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _kustomization() -> Doc:
    [kust] = _load(KUBE / "kustomization.yaml")
    return kust


def _documents() -> list[tuple[str, Doc]]:
    return [
        (f"{name}:{doc['kind']}/{doc['metadata']['name']}", doc)
        for name in _kustomization()["resources"]
        for doc in _load(KUBE / name)
    ]


DOCS = _documents()


def _one(kind: str, name: str) -> Doc:
    [doc] = [d for _, d in DOCS if d["kind"] == kind and d["metadata"]["name"] == name]
    return doc


def _pod(deployment: str) -> Doc:
    spec: Doc = _one("Deployment", deployment)["spec"]["template"]["spec"]
    return spec


def _container(deployment: str) -> Doc:
    [container] = _pod(deployment)["containers"]
    return container


def _flag(args: list[str], name: str) -> str:
    """The value of ``--name VALUE`` in ``args`` (the manifests never write ``--name=V``)."""
    assert args.count(name) == 1, f"{name} given {args.count(name)} times in {args}"
    return args[args.index(name) + 1]


def _port_number(container: Doc, port: int | str) -> int:
    """A probe's or Service's port, by number or by name, as the container declares it."""
    for declared in container["ports"]:
        if port in (declared["containerPort"], declared.get("name")):
            return int(declared["containerPort"])
    raise AssertionError(f"port {port!r} is not declared by container {container['name']}")


def _expand(container: Doc) -> list[str]:
    """The container's args with each $(VAR) replaced as Kubernetes would: only variables
    its ``env`` defines (an undefined one would be passed on literally)."""
    defined = {e["name"] for e in container.get("env", [])}
    out = []
    for arg in container["args"]:
        for var in re.findall(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", arg):
            assert var in defined, f"{container['name']}: $({var}) is not in its env"
            arg = arg.replace(f"$({var})", ENV_EXAMPLES[var])
        out.append(arg)
    return out


def _parse_cli(args: list[str]) -> tuple[str, dict[str, Any]]:
    """Parse ``regrow ARGS`` with regrow's real click commands, without running them:
    every flag must exist and every value convert (a bad one raises a UsageError)."""
    name, *rest = args
    command = main.get_command(click.Context(main, info_name="regrow"), name)
    assert command is not None, f"regrow has no command {name!r}"
    with command.make_context(name, rest) as ctx:
        return name, dict(ctx.params)


# ------------------------------------------------------------------- schemas


def test_kustomization_lists_every_manifest() -> None:
    listed = set(_kustomization()["resources"])
    present = {p.name for p in KUBE.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == present
    assert [i["name"] for i in _kustomization()["images"]] == ["regrow"]


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize(("name", "doc"), DOCS, ids=[n for n, _ in DOCS])
def test_schema(name: str, doc: Doc, version: str) -> None:
    kubernetes_validate.validate(doc, version, strict=True)


def test_schema_check_is_strict() -> None:
    """The validation above would catch a misspelt field (it is not a no-op)."""
    doc = copy.deepcopy(_one("Deployment", "regrow-worker"))
    doc["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["paht"] = "/"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(doc, K8S_VERSIONS[-1], strict=True)


# ------------------------------------------------------------ what they mean


def test_selectors_match_their_pods() -> None:
    for deployment in ("regrow-scheduler", "regrow-worker"):
        spec = _one("Deployment", deployment)["spec"]
        labels = spec["template"]["metadata"]["labels"]
        assert spec["selector"]["matchLabels"].items() <= labels.items()
    service = _one("Service", "regrow-scheduler")["spec"]["selector"]
    scheduler = _one("Deployment", "regrow-scheduler")["spec"]["template"]["metadata"]["labels"]
    worker = _one("Deployment", "regrow-worker")["spec"]["template"]["metadata"]["labels"]
    assert service.items() <= scheduler.items()
    assert not service.items() <= worker.items()


@pytest.mark.parametrize("deployment", ["regrow-scheduler", "regrow-worker"])
def test_probes_ask_for_health_where_it_is_served(deployment: str) -> None:
    container = _container(deployment)
    _host, port = parse_http_address(_flag(container["args"], "--dashboard-address"))
    probes = [p for p in ("startupProbe", "readinessProbe", "livenessProbe") if p in container]
    assert {"readinessProbe", "livenessProbe"} <= set(probes)
    for probe in probes:
        get = container[probe]["httpGet"]
        assert get["path"] == "/health", probe
        assert _port_number(container, get["port"]) == port, probe


def test_workers_reach_the_scheduler_service() -> None:
    service = _one("Service", "regrow-scheduler")
    scheduler = _container("regrow-scheduler")
    args = _container("regrow-worker")["args"]
    assert args[0] == "worker"
    host, port = parse_address(args[1])
    assert host == service["metadata"]["name"]
    [svc_port] = [p for p in service["spec"]["ports"] if p["port"] == port]
    assert _port_number(scheduler, svc_port["targetPort"]) == int(
        _flag(scheduler["args"], "--port")
    )
    # The Service's HTTP port reaches the health endpoint too.
    [http] = [p for p in service["spec"]["ports"] if p["name"] == "http"]
    _h, health_port = parse_http_address(_flag(scheduler["args"], "--dashboard-address"))
    assert _port_number(scheduler, http["targetPort"]) == health_port


@pytest.mark.parametrize("deployment", ["regrow-scheduler", "regrow-worker"])
def test_token_secret_is_mounted_where_token_file_reads(deployment: str) -> None:
    pod, container = _pod(deployment), _container(deployment)
    token_file = Path(_flag(container["args"], "--token-file"))
    [mount] = [m for m in container["volumeMounts"] if Path(m["mountPath"]) == token_file.parent]
    assert mount.get("readOnly") is True
    [volume] = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    secret = volume["secret"]
    assert secret["secretName"] == "regrow-token"
    assert secret["items"] == [{"key": "token", "path": token_file.name}]
    # Readable by the pod's group (fsGroup), which the non-root user is in.
    assert secret["defaultMode"] & 0o040
    assert pod["securityContext"]["fsGroup"] == pod["securityContext"]["runAsUser"]


def test_scheduler_journal_is_on_the_claim() -> None:
    pod, container = _pod("regrow-scheduler"), _container("regrow-scheduler")
    journal = Path(_flag(container["args"], "--journal"))
    [mount] = [m for m in container["volumeMounts"] if Path(m["mountPath"]) == journal.parent]
    [volume] = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    claim = volume["persistentVolumeClaim"]["claimName"]
    assert _one("PersistentVolumeClaim", claim)["spec"]["accessModes"] == ["ReadWriteOnce"]
    # Never two schedulers on one journal: the old pod goes before the new one starts.
    deployment = _one("Deployment", "regrow-scheduler")["spec"]
    assert deployment["replicas"] == 1
    assert deployment["strategy"]["type"] == "Recreate"


@pytest.mark.parametrize("deployment", ["regrow-scheduler", "regrow-worker"])
def test_pods_run_as_the_images_user(deployment: str) -> None:
    pod, container = _pod(deployment), _container(deployment)
    dockerfile = (ROOT / "Dockerfile").read_text()
    [user] = re.findall(r"^USER (\d+)(?::\d+)?$", dockerfile, re.M)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == int(user)
    # Service links would put REGROW_SCHEDULER_* variables in the environment.
    assert pod["enableServiceLinks"] is False
    # The image's ENTRYPOINT is `regrow`: the manifests give its arguments only.
    assert "command" not in container
    assert re.search(r'^ENTRYPOINT \["regrow"\]$', dockerfile, re.M)
    exposed = {int(p) for p in re.findall(r"^EXPOSE (.+)$", dockerfile, re.M)[0].split()}
    assert {p["containerPort"] for p in container["ports"]} <= exposed
    # A read-only root: whatever is written (spilled results) goes to a volume.
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert "/tmp" in {m["mountPath"] for m in container["volumeMounts"]}


def test_scheduler_command_line_parses() -> None:
    container = _container("regrow-scheduler")
    name, params = _parse_cli(_expand(container))
    assert name == "scheduler"
    assert (params["host"], params["port"]) == ("0.0.0.0", 8786)
    assert _port_number(container, "comm") == params["port"]
    assert parse_http_address(params["dashboard_address"])[1] == _port_number(container, "http")


def test_worker_command_line_parses() -> None:
    container = _container("regrow-worker")
    name, params = _parse_cli(_expand(container))
    assert name == "worker"
    assert params["nanny"] is True
    assert params["host"] == "0.0.0.0"
    assert params["contact_address"] == ENV_EXAMPLES["POD_IP"]
    assert params["name"] == ENV_EXAMPLES["POD_NAME"]
    assert params["nthreads"] == int(ENV_EXAMPLES["CPU_LIMIT"])
    assert params["memory_limit"] == ENV_EXAMPLES["MEMORY_LIMIT"]
    # The threads and the memory limit are the container's own limits.
    env = {e["name"]: e["valueFrom"] for e in container["env"]}
    assert env["CPU_LIMIT"]["resourceFieldRef"]["resource"] == "limits.cpu"
    assert env["MEMORY_LIMIT"]["resourceFieldRef"]["resource"] == "limits.memory"
    assert env["POD_IP"]["fieldRef"]["fieldPath"] == "status.podIP"
    assert {"cpu", "memory"} <= set(container["resources"]["limits"])


def test_a_misspelt_flag_would_fail() -> None:
    """The parse above is a real check: click refuses an unknown flag."""
    args = [*_expand(_container("regrow-worker")), "--nthread", "2"]
    with pytest.raises(click.UsageError):
        _parse_cli(args)


# ------------------------------------------------------------------ kustomize


def _kustomize(directory: Path) -> list[Doc]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed: `kubectl kustomize` not run")
    out = subprocess.run(
        [kubectl, "kustomize", str(directory)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def test_kustomize_renders_what_was_checked() -> None:
    rendered = _kustomize(KUBE)
    for doc in rendered:
        kubernetes_validate.validate(doc, K8S_VERSIONS[-1], strict=True)
    names = sorted((d["kind"], d["metadata"]["name"]) for d in rendered)
    assert names == sorted((d["kind"], d["metadata"]["name"]) for _, d in DOCS)


def test_kustomize_sets_the_image(tmp_path: Path) -> None:
    shutil.copytree(KUBE, tmp_path / "base", ignore=shutil.ignore_patterns("*.md"))
    (tmp_path / "overlay").mkdir()
    overlay = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": ["../base"],
        "images": [
            {"name": "regrow", "newName": "registry.example.com/team/regrow", "newTag": "0.1.0"}
        ],
    }
    (tmp_path / "overlay" / "kustomization.yaml").write_text(yaml.safe_dump(overlay))
    images = [
        c["image"]
        for d in _kustomize(tmp_path / "overlay")
        if d["kind"] == "Deployment"
        for c in d["spec"]["template"]["spec"]["containers"]
    ]
    assert images == ["registry.example.com/team/regrow:0.1.0"] * 2
