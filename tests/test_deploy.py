"""Deployment files: docker/ (Dockerfile, compose, Prometheus, Grafana) and k8s/.

Nothing here starts a container. The files are checked with the tools that consume them
(docker-compose, promtool, kubernetes-validate, kubectl kustomize), against each other (ports,
uids, paths, image tags, thread counts) and against the service itself: every metric that a
dashboard query or an alert names must be one the running app really exports on /metrics.
"""

from __future__ import annotations

import io
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile
import yaml

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: pytest itself depends on tomli there
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[1]
DOCKER = REPO / "docker"
DOCKERFILE = DOCKER / "Dockerfile"
COMPOSE = DOCKER / "compose.yaml"
PROMETHEUS_CONFIG = DOCKER / "prometheus" / "prometheus.yml"
ALERTS = DOCKER / "prometheus" / "alerts.yml"
GRAFANA = DOCKER / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "quads.json"
K8S = REPO / "k8s"
K8S_MANIFESTS = ["deployment.yaml", "service.yaml", "hpa.yaml", "pdb.yaml"]
KUBERNETES_VALIDATE = Path(sys.executable).with_name("kubernetes-validate")

DASHBOARD_UID = "quads-service"
SERVICE_PORT = 8000
# Series Prometheus itself attaches to every scrape target; the service does not export them.
PROMETHEUS_SYNTHETIC_SERIES = {"up"}


def load_yaml(path: Path):
    return yaml.safe_load(path.read_text())


def require_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed (.ci/run installs it from Debian packages)")
    return path


def run_tool(*argv: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    """Run a command; on failure the assertion message carries its full output."""
    proc = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, f"{shlex.join(argv)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    return proc


# --- PromQL: which metric names does an expression select? -----------------------------------

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'')
_LABEL_MATCHERS = re.compile(r"\{[^}]*\}")
_MATCHER = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"')
_RANGE = re.compile(r"\[[^\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
# An identifier not glued to a number, '.' or '$' (so not the 'e' of 1e-3 or a Grafana variable).
_IDENTIFIER = re.compile(r"(?<![\w.$])[A-Za-z_:][A-Za-z0-9_:]*")
_PROMQL_KEYWORDS = {
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "and",
    "or",
    "unless",
    "offset",
    "atan2",
    "inf",
    "nan",
}
_HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


def promql_metric_names(expr: str) -> set[str]:
    """Metric names selected by a PromQL expression (functions, keywords and labels excluded)."""
    text = _STRING.sub('""', expr)
    text = _LABEL_MATCHERS.sub(" ", text)
    text = _RANGE.sub(" ", text)
    text = _GROUPING.sub(" ", text)
    names = set()
    for match in _IDENTIFIER.finditer(text):
        followed_by_call = text[match.end() :].lstrip().startswith("(")
        if not followed_by_call and match.group().lower() not in _PROMQL_KEYWORDS:
            names.add(match.group())
    return names


def promql_equality_matchers(expr: str) -> set[tuple[str, str, str]]:
    """(metric, label, value) for every ``metric{label="value"}`` matcher in an expression."""
    found = set()
    for selector in re.finditer(r"([A-Za-z_:][A-Za-z0-9_:]*)\s*\{([^}]*)\}", expr):
        for label, op, value in _MATCHER.findall(selector.group(2)):
            if op == "=":
                found.add((selector.group(1), label, value))
    return found


def histogram_base(name: str) -> tuple[str, str | None]:
    """('x', '_bucket') for 'x_bucket'; (name, None) when there is no histogram suffix."""
    for suffix in _HISTOGRAM_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)], suffix
    return name, None


@pytest.mark.parametrize(
    "expr, names",
    [
        (
            'histogram_quantile(0.95, sum by (le, stage) (rate(a_seconds_bucket{stage="total"}[5m])))',
            {"a_seconds_bucket"},
        ),
        ('sum(rate(b_total{status=~"5.."}[$__rate_interval])) / sum(rate(b_total[1m] offset 5m)) > 1e-3', {"b_total"}),
        ("max by (name, sha256) (c_info) * on(instance) group_left(job) up", {"c_info", "up"}),
        ('d == bool 1 and ignoring(x) e{label="sum(f)"}', {"d", "e"}),
    ],
)
def test_promql_metric_names(expr, names):
    assert promql_metric_names(expr) == names


def dashboard_exprs(dashboard: dict) -> list[str]:
    def panels(items):
        for panel in items:
            yield panel
            yield from panels(panel.get("panels", []))

    return [t["expr"] for p in panels(dashboard["panels"]) for t in p.get("targets", []) if t.get("expr")]


def alert_exprs() -> list[str]:
    return [rule["expr"] for group in load_yaml(ALERTS)["groups"] for rule in group["rules"]]


# --- Dockerfile --------------------------------------------------------------------------------


def dockerfile_instructions(path: Path = DOCKERFILE) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with comments dropped and line continuations joined."""
    instructions, pending = [], ""
    for line in path.read_text().splitlines():
        if line.lstrip().startswith("#") or (not line.strip() and not pending):
            continue
        pending += line.rstrip()
        if pending.endswith("\\"):
            pending = pending[:-1] + " "
            continue
        keyword, _, args = pending.strip().partition(" ")
        instructions.append((keyword.upper(), " ".join(args.split())))
        pending = ""
    return instructions


def dockerfile_stages() -> list[list[tuple[str, str]]]:
    stages: list[list[tuple[str, str]]] = []
    for keyword, args in dockerfile_instructions():
        if keyword == "FROM":
            stages.append([])
        if stages:
            stages[-1].append((keyword, args))
    return stages


def dockerfile_env(stage: list[tuple[str, str]]) -> dict[str, str]:
    env = {}
    for keyword, args in stage:
        if keyword == "ENV":
            env.update(item.split("=", 1) for item in shlex.split(args))
    return env


def dockerfile_copies(stage: list[tuple[str, str]]) -> list[tuple[list[str], str]]:
    """(sources, destination) of every COPY from the build context (not --from another stage)."""
    copies = []
    for keyword, args in stage:
        if keyword == "COPY" and "--from=" not in args:
            words = [w for w in shlex.split(args) if not w.startswith("--")]
            copies.append((words[:-1], words[-1]))
    return copies


def dockerfile_user_uid() -> int:
    users = [args for keyword, args in dockerfile_stages()[-1] if keyword == "USER"]
    assert users, "the final stage sets no USER: the container would run as root"
    return int(users[-1].split(":")[0])


def pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def test_dockerfile_is_multi_stage_with_nothing_but_the_venv_and_model_in_the_final_image():
    stages = dockerfile_stages()
    assert len(stages) >= 2, "expected a builder stage and a runtime stage"
    final = stages[-1]
    assert any(k == "COPY" and "--from=builder" in a and "/opt/venv" in a for k, a in final)
    final_runs = " ".join(a for k, a in final if k == "RUN")
    for build_step in ("pip install", "apt-get install", "gcc", "build-essential"):
        assert build_step not in final_runs, f"the final stage runs {build_step!r}; do that in the builder"


def test_dockerfile_preloads_jemalloc_that_the_builder_puts_in_the_venv():
    """Under glibc's malloc, clips of many lengths fragment the heap (service/heap.py)."""
    builder, runtime = dockerfile_stages()[0], dockerfile_stages()[-1]
    preload = dockerfile_env(runtime).get("LD_PRELOAD", "")
    assert preload.startswith("/opt/venv/") and "libjemalloc" in preload
    builder_runs = " ".join(a for k, a in builder if k == "RUN")
    assert "libjemalloc2" in builder_runs and preload in builder_runs, (
        "the builder must install jemalloc and copy it to LD_PRELOAD's path"
    )


def test_dockerfile_installs_cpu_torch_pinned_like_pyproject():
    pins = {re.split(r"==", d)[0]: d for d in pyproject()["project"]["dependencies"] if d.startswith("torch")}
    assert set(pins) == {"torch", "torchaudio"}
    installs = [a for k, a in dockerfile_stages()[0] if k == "RUN" and "pip install" in a]
    torch_install = next(a for a in installs if "torch==" in a)
    assert "--index-url https://download.pytorch.org/whl/cpu" in torch_install
    for pin in pins.values():
        assert pin in torch_install.split(), f"{pin} from pyproject.toml is not what the Dockerfile installs"
    # The package install must come after torch, or pip would pull the CUDA wheel from PyPI.
    assert installs.index(torch_install) < next(i for i, a in enumerate(installs) if a.split()[-1] == ".")


def test_the_image_installs_the_package_under_constraints_that_pin_every_dependency():
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    install = next(a for k, a in dockerfile_stages()[0] if k == "RUN" and a.split()[-1] == ".")
    assert "-c docker/constraints.txt" in install
    lines = [line.strip() for line in (REPO / "docker" / "constraints.txt").read_text().splitlines()]
    pins = [Requirement(line) for line in lines if line and not line.startswith("#")]
    versions = {canonicalize_name(r.name): next(iter(r.specifier)).version for r in pins}
    assert len(versions) == len(pins) and all(str(r.specifier).startswith("==") for r in pins)
    for dependency in map(Requirement, pyproject()["project"]["dependencies"]):
        name = canonicalize_name(dependency.name)
        assert name in versions, f"docker/constraints.txt does not pin {name}"
        assert dependency.specifier.contains(versions[name]), f"{name}=={versions[name]} is outside {dependency}"
    assert not [n for n in versions if n.startswith(("nvidia-", "cuda-", "triton"))]  # CPU image: no CUDA wheels


def test_dockerfile_runs_as_non_root_with_healthcheck_and_quads_serve():
    final = dockerfile_stages()[-1]
    assert dockerfile_user_uid() > 0
    healthchecks = [a for k, a in final if k == "HEALTHCHECK"]
    assert len(healthchecks) == 1
    probe = healthchecks[0]
    assert "CMD" in probe and "python" in probe and "curl" not in probe
    assert f"127.0.0.1:{SERVICE_PORT}/healthz" in probe
    cmd = [json.loads(a) for k, a in final if k == "CMD"]
    assert cmd == [["quads-serve", "--host", "0.0.0.0", "--port", str(SERVICE_PORT)]]
    assert pyproject()["project"]["scripts"]["quads-serve"] == "service.cli:cli"
    assert (f"{SERVICE_PORT}",) == tuple(a for k, a in final if k == "EXPOSE")


def settings_from_env(monkeypatch, env: dict[str, str]):
    """The service's Settings as a container with exactly these QUADS_* variables would see them."""
    from service.settings import Settings

    for name in [n for n in os.environ if n.startswith("QUADS_")]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, str(value))
    return Settings()


def test_image_compose_and_k8s_settings_all_serve_the_baked_in_model(monkeypatch):
    final = dockerfile_stages()[-1]
    workdir = Path([a for k, a in final if k == "WORKDIR"][-1])
    model_copies = [(s, d) for s, d in dockerfile_copies(final) if any(x.endswith(".safetensors") for x in s)]
    shipped = [
        "models/quads-fsc-4bit.safetensors",
        "models/quads-fsc-8bit.safetensors",
        "models/quads-fsc-3bit.safetensors",
        "models/quads-fsc-2bit.safetensors",
    ]
    assert model_copies == [(shipped, "models/")]
    baked = workdir / shipped[0]

    image_env = {k: v for k, v in dockerfile_env(final).items() if k.startswith("QUADS_")}
    compose_env = load_yaml(COMPOSE)["services"]["service"]["environment"]
    k8s_env = k8s_settings()
    for where, overrides in (("image", {}), ("compose", compose_env), ("k8s", k8s_env)):
        settings = settings_from_env(monkeypatch, {**image_env, **overrides})
        assert settings.model_path == baked, f"{where} settings serve {settings.model_path}, not {baked}"
        assert settings.expected_bits in (None, 4), where
        eight = settings_from_env(monkeypatch, {**image_env, **overrides, "QUADS_BITS": "8"})
        assert eight.model_path == workdir / shipped[1], f"{where}: QUADS_BITS=8 serves {eight.model_path}"
        for bits, path in (("3", shipped[2]), ("2", shipped[3])):
            low = settings_from_env(monkeypatch, {**image_env, **overrides, "QUADS_BITS": bits})
            assert low.model_path == workdir / path, f"{where}: QUADS_BITS={bits} serves {low.model_path}"


def test_docker_build_context_holds_exactly_what_the_dockerfile_copies(tmp_path):
    """The root .dockerignore is an allow-list; a path the Dockerfile COPYs but the list drops
    would only fail at `docker build`, so check it here against Docker's own matching rules."""
    build = pytest.importorskip("docker.utils.build", reason="the docker Python package implements .dockerignore")
    sources = [src for stage in dockerfile_stages() for srcs, _ in dockerfile_copies(stage) for src in srcs]
    # Mirror the repository layout (the model may not be trained yet), plus paths that must stay out.
    wanted = [
        "pyproject.toml",
        "README.md",
        "LICENSE",
        "docker/constraints.txt",
        "service/main.py",
        "core/model.py",
        "models/quads-fsc-4bit.safetensors",
        "models/quads-fsc-8bit.safetensors",
        "models/quads-fsc-3bit.safetensors",
        "models/quads-fsc-2bit.safetensors",
    ]
    unwanted = [
        ".git/HEAD",
        ".venv/bin/python",
        "data/fsc/a.wav",
        "runs/x/log.txt",
        "tests/test_x.py",
        "training/train.py",
        "models/quads-fsc-32bit.safetensors",
        "service/__pycache__/model.pyc",
    ]
    for rel in wanted + unwanted:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("")
    patterns = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    context = set(build.exclude_paths(str(tmp_path), patterns, dockerfile="docker/Dockerfile"))
    for src in sources:
        assert src.rstrip("/") in context, f"COPY {src} but .dockerignore leaves it out of the build context"
    assert set(wanted) <= context
    assert not set(unwanted) & context, f"sent to the Docker daemon needlessly: {set(unwanted) & context}"


def test_default_model_file_loads_as_4_bit():
    model = REPO / "models" / "quads-fsc-4bit.safetensors"
    if not model.is_file():
        pytest.skip(f"{model.relative_to(REPO)} is not built yet; `docker build` needs it")
    from core.checkpoint import load_checkpoint

    assert load_checkpoint(model).bits == 4


# --- docker-compose ----------------------------------------------------------------------------


def compose_command() -> list[str]:
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    if shutil.which("docker") and subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    pytest.skip("neither docker-compose nor the docker compose plugin is installed (.ci/run installs docker-compose)")


@pytest.fixture(scope="module")
def compose_config() -> dict:
    """The compose file as docker-compose resolves it (paths absolute, defaults filled in)."""
    proc = run_tool(*compose_command(), "-f", str(COMPOSE), "config")
    return yaml.safe_load(proc.stdout)


def bind_mounts(service: dict) -> dict[str, Path]:
    """Container path -> host path of a compose service's bind mounts (short or long syntax)."""
    mounts = {}
    for volume in service.get("volumes", []):
        if isinstance(volume, str):
            source, target = volume.split(":")[:2]
            bind = source.startswith(("/", "."))
        else:
            source, target, bind = volume.get("source", ""), volume["target"], volume.get("type") == "bind"
        if bind:
            mounts[target] = Path(source)
    return mounts


def test_compose_config_is_accepted(compose_config):
    assert {"service", "prometheus", "grafana"} <= set(compose_config["services"])


def test_compose_builds_the_service_from_the_repo_root(compose_config):
    service = compose_config["services"]["service"]
    context = Path(service["build"]["context"])
    assert context.resolve() == REPO
    assert (context / service["build"]["dockerfile"]).resolve() == DOCKERFILE
    assert service["image"].split(":")[1] == pyproject()["project"]["version"]


def test_compose_service_threads_match_its_cpu_limit_and_it_is_hardened(compose_config):
    service = compose_config["services"]["service"]
    cpus = service.get("cpus") or service["deploy"]["resources"]["limits"]["cpus"]
    assert int(service["environment"]["QUADS_THREADS"]) == float(cpus)
    published = [str(p["published"]) if isinstance(p, dict) else p.split(":")[-2] for p in service["ports"]]
    assert str(SERVICE_PORT) in published
    assert any(f"127.0.0.1:{SERVICE_PORT}/readyz" in part for part in service["healthcheck"]["test"])
    assert service["read_only"] is True and "/tmp" in service["tmpfs"]
    assert service["cap_drop"] == ["ALL"]


def test_compose_bind_mounts_exist_and_match_the_configs_that_read_them(compose_config):
    services = compose_config["services"]
    for name, service in services.items():
        for target, source in bind_mounts(service).items():
            assert source.exists(), f"{name}: bind mount source {source} for {target} does not exist"

    prometheus = bind_mounts(services["prometheus"])
    config_target = next(t for t, s in prometheus.items() if s.resolve() == PROMETHEUS_CONFIG)
    assert f"--config.file={config_target}" in services["prometheus"]["command"]
    for rule_file in load_yaml(PROMETHEUS_CONFIG)["rule_files"]:
        in_container = str(Path(config_target).parent / rule_file)
        assert prometheus.get(in_container, Path()).resolve() == DOCKER / "prometheus" / rule_file

    grafana = bind_mounts(services["grafana"])
    assert grafana["/etc/grafana/provisioning"].resolve() == GRAFANA / "provisioning"
    providers = [p for f in (GRAFANA / "provisioning" / "dashboards").glob("*.yaml") for p in load_yaml(f)["providers"]]
    dashboards_dir = providers[0]["options"]["path"]
    assert grafana[dashboards_dir].resolve() == DASHBOARD.parent
    home = services["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == f"{dashboards_dir}/{DASHBOARD.name}"


def test_prometheus_scrapes_the_compose_service_and_grafana_reads_prometheus(compose_config):
    config = load_yaml(PROMETHEUS_CONFIG)
    (job,) = config["scrape_configs"]
    assert job["job_name"] == "quads"  # QuadsServiceDown selects up{job="quads"}
    assert job["metrics_path"] == "/metrics"
    assert job["static_configs"][0]["targets"] == [f"service:{SERVICE_PORT}"]
    assert "9090" in str(compose_config["services"]["prometheus"]["ports"])
    datasource = provisioned_datasource()
    assert datasource["url"] == "http://prometheus:9090"
    # Grafana's $__rate_interval is derived from this; it must be the real scrape interval.
    assert datasource["jsonData"]["timeInterval"] == config["global"]["scrape_interval"]


# --- promtool: Prometheus config, alert rules, and every dashboard query parse ---------------


def test_promtool_accepts_prometheus_config_and_alert_rules():
    promtool = require_tool("promtool")
    run_tool(promtool, "check", "config", str(PROMETHEUS_CONFIG))  # also checks the rule_files it names
    out = run_tool(promtool, "check", "rules", str(ALERTS)).stdout
    assert f"SUCCESS: {len(alert_exprs())} rules found" in out


def test_promtool_parses_every_dashboard_query(tmp_path):
    promtool = require_tool("promtool")
    # Grafana substitutes $__rate_interval before querying; any duration stands in for it here.
    exprs = [
        e.replace("$__rate_interval", "1m").replace("$instance", ".*")
        for e in dashboard_exprs(json.loads(DASHBOARD.read_text()))
    ]
    rules = {
        "groups": [
            {"name": "dashboard", "rules": [{"record": f"dashboard:query_{i}", "expr": e} for i, e in enumerate(exprs)]}
        ]
    }
    (tmp_path / "dashboard_rules.yml").write_text(yaml.safe_dump(rules))
    out = run_tool(promtool, "check", "rules", str(tmp_path / "dashboard_rules.yml")).stdout
    assert f"SUCCESS: {len(exprs)} rules found" in out


def histogram_series(
    name: str, labels: str, bounds: list[float], bucket_rates: list[float], minutes: int
) -> list[dict]:
    """promtool input series of a histogram whose buckets gain ``bucket_rates[i]`` per minute."""
    series, cumulative = [], 0.0
    for bound, rate in zip([*map(str, bounds), "+Inf"], bucket_rates):
        cumulative += rate
        series.append({"series": f'{name}_bucket{{{labels}, le="{bound}"}}', "values": f"0+{cumulative:g}x{minutes}"})
    return series


def test_alerts_fire_when_they_should_and_stay_quiet_otherwise(tmp_path):
    """promtool unit tests over synthetic series. Annotations are stripped from the copy under
    test (their templates are checked by `promtool check rules`), so only labels are compared."""
    promtool = require_tool("promtool")
    alerts = load_yaml(ALERTS)
    for group in alerts["groups"]:
        for rule in group["rules"]:
            rule.pop("annotations", None)
    (tmp_path / "alerts.yml").write_text(yaml.safe_dump(alerts))
    severity = {r["alert"]: r["labels"]["severity"] for g in alerts["groups"] for r in g["rules"]}

    target = 'job="quads", instance="service:8000"'
    stage_total = f'{target}, stage="total"'
    bounds = [0.05, 0.1, 0.25, 0.5]
    minutes = 30

    def requests(status: str, per_minute: int) -> dict:
        return {
            "series": f'quads_http_requests_total{{{target}, route="/intent", status="{status}"}}',
            "values": f"0+{per_minute}x{minutes}",
        }

    def rejected(reason: str) -> dict:
        return {"series": f'quads_rejected_total{{{target}, reason="{reason}"}}', "values": f"0+30x{minutes}"}

    def answers(understood: str, per_minute: int) -> dict:
        return {
            "series": f'quads_intent_answers_total{{{target}, understood="{understood}"}}',
            "values": f"0+{per_minute}x{minutes}",
        }

    def fired(alertname: str, **labels: str) -> dict:
        return {
            "eval_time": f"{minutes - 1}m",
            "alertname": alertname,
            "exp_alerts": [{"exp_labels": {"severity": severity[alertname], **labels}}],
        }

    def quiet(alertname: str) -> dict:
        return {"eval_time": f"{minutes - 1}m", "alertname": alertname, "exp_alerts": []}

    broken = {  # target down from minute 2, 10% of /intent answered 500, every request 250-500 ms, shedding
        "interval": "1m",
        "input_series": [
            {"series": f"up{{{target}}}", "values": "1 1 " + " ".join(["0"] * minutes)},
            requests("200", 80),
            requests("422", 10),
            requests("500", 10),
            *histogram_series("quads_stage_duration_seconds", stage_total, bounds, [0, 0, 0, 10, 0], minutes),
            rejected("overloaded"),
            answers("true", 50),
            answers("false", 40),  # 44% not understood
        ],
        "alert_rule_test": [
            fired("QuadsServiceDown", job="quads", instance="service:8000"),
            fired("QuadsHighErrorRate"),
            fired("QuadsHighLatencyP95"),
            fired("QuadsShedding"),
            fired("QuadsManyNotUnderstood"),
        ],
    }
    healthy = {  # up, many 4xx but no 5xx, every request under 50 ms, rejections only while draining
        "interval": "1m",
        "input_series": [
            {"series": f"up{{{target}}}", "values": f"1+0x{minutes}"},
            requests("200", 80),
            requests("422", 20),
            *histogram_series("quads_stage_duration_seconds", stage_total, bounds, [10, 0, 0, 0, 0], minutes),
            rejected("draining"),
            answers("true", 90),
            answers("false", 10),
        ],
        "alert_rule_test": [quiet(name) for name in severity],
    }
    assert set(severity) == {
        "QuadsServiceDown",
        "QuadsHighErrorRate",
        "QuadsHighLatencyP95",
        "QuadsShedding",
        "QuadsManyNotUnderstood",
    }
    tests = {"rule_files": ["alerts.yml"], "evaluation_interval": "1m", "tests": [broken, healthy]}
    (tmp_path / "alerts_test.yml").write_text(yaml.safe_dump(tests, sort_keys=False))
    run_tool(promtool, "test", "rules", "alerts_test.yml", cwd=tmp_path)


# --- Grafana -----------------------------------------------------------------------------------


def provisioned_datasource() -> dict:
    (datasource,) = [
        d for f in (GRAFANA / "provisioning" / "datasources").glob("*.yaml") for d in load_yaml(f)["datasources"]
    ]
    return datasource


def test_dashboard_has_fixed_uid_and_a_datasource_variable_defaulting_to_the_provisioned_one():
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == DASHBOARD_UID
    datasource = provisioned_datasource()
    assert datasource["type"] == "prometheus" and datasource["uid"]
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    assert variables["datasource"]["current"]["value"] == datasource["uid"]  # works as provisioned, and elsewhere

    referenced = []

    def walk(node):
        if isinstance(node, dict):
            if isinstance(node.get("datasource"), dict):
                referenced.append(node["datasource"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk([dashboard["panels"], variables["instance"]])
    assert referenced, "no panel names a datasource"
    assert all(ref == {"type": "prometheus", "uid": "${datasource}"} for ref in referenced), referenced
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"


def test_every_dashboard_query_follows_the_replica_picker():
    dashboard = json.loads(DASHBOARD.read_text())
    instance = {v["name"]: v for v in dashboard["templating"]["list"]}["instance"]
    assert instance["query"]["query"] == "label_values(quads_model_info, instance)"
    assert instance["multi"] and instance["includeAll"] and instance["allValue"] == ".*"
    for expr in dashboard_exprs(dashboard):
        names = promql_metric_names(expr)
        selectors = [m.group(1) or "" for n in names for m in re.finditer(rf"\b{n}(\{{[^}}]*\}})?", expr)]
        assert names and all('instance=~"$instance"' in s for s in selectors), expr


def test_dashboard_shows_what_the_issue_asks_for():
    exprs = dashboard_exprs(json.loads(DASHBOARD.read_text()))
    names = {histogram_base(n)[0] for e in exprs for n in promql_metric_names(e)}
    assert {
        "quads_stage_duration_seconds",
        "quads_http_requests_total",
        "quads_requests_in_flight",
        "quads_model_file_bytes",
        "quads_model_memory_bytes",
        "quads_model_bit_width",
        "quads_queue_depth",
        "quads_batch_size",
        "quads_rejected_total",
        "process_resident_memory_bytes",
        "process_cpu_seconds_total",
        "process_open_fds",
        "python_gc_collections_total",
    } <= names
    compact = [e.replace(" ", "") for e in exprs]
    for q in ("0.5", "0.95", "0.99"):
        latency = (
            f'histogram_quantile({q},sumby(le,stage)(rate(quads_stage_duration_seconds_bucket{{instance=~"$instance"}}['
        )
        assert any(e.startswith(latency) for e in compact), f"no per-stage latency panel for quantile {q}"
    assert any('status=~"5.."' in e and "/" in e for e in exprs), "no 5xx error-rate panel"
    assert any('status=~"4.."' in e and "/" in e for e in exprs), "no 4xx error-rate panel"


# --- The metrics the service really exports ----------------------------------------------------


@pytest.fixture(scope="module")
def exported_metrics(tmp_path_factory) -> dict[str, dict]:
    """{metric name: {"type": ..., "labels": set of (label, value)}} scraped from GET /metrics of the
    real app (tiny 4-bit checkpoint) after one POST /intent, so labelled series exist too."""
    import torch
    from fastapi.testclient import TestClient
    from prometheus_client.parser import text_string_to_metric_families

    from core.checkpoint import save_checkpoint
    from core.model import IntentClassifier, ModelDims
    from service.main import create_app
    from service.settings import Settings
    from training.quantize import quantize_model

    torch.manual_seed(0)
    torch.set_num_threads(1)
    labels = ["activate_lights", "deactivate_music", "increase_volume"]
    model = IntentClassifier(ModelDims(n_mels=80, n_ctx=1500, n_state=64, n_head=2, n_layer=2), len(labels))
    quantize_model(model, 4)
    checkpoint = save_checkpoint(tmp_path_factory.mktemp("model") / "tiny-4bit.safetensors", model, labels, 4)

    t = np.arange(16000) / 16000
    wav = io.BytesIO()
    soundfile.write(wav, (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), 16000, format="WAV")

    app = create_app(Settings(model=checkpoint, threads=1))
    with TestClient(app) as client:
        answer = client.post("/intent", files={"file": ("tone.wav", wav.getvalue(), "audio/wav")})
        assert answer.status_code == 200, answer.text
        scrape = client.get("/metrics")
        assert scrape.status_code == 200

    metrics: dict[str, dict] = {}

    def add(name: str, kind: str, sample_labels: dict | None = None):
        entry = metrics.setdefault(name, {"type": kind, "labels": set()})
        entry["labels"] |= set((sample_labels or {}).items())

    for family in text_string_to_metric_families(scrape.text):
        # The parser names a counter family without its _total; a family with no samples yet
        # (a labelled counter nobody incremented) is still exported, so add its name from the type.
        add(family.name + ("_total" if family.type == "counter" else ""), family.type)
        for sample in family.samples:
            add(sample.name, family.type, sample.labels)
    return metrics


def referenced_metrics() -> dict[str, list[str]]:
    """Metric name -> where it is used, over every dashboard query and alert expression."""
    uses: dict[str, list[str]] = {}
    for where, exprs in (("dashboard", dashboard_exprs(json.loads(DASHBOARD.read_text()))), ("alerts", alert_exprs())):
        for expr in exprs:
            for name in promql_metric_names(expr):
                uses.setdefault(name, []).append(f"{where}: {expr}")
    return uses


def test_dashboards_and_alerts_only_name_metrics_the_service_exports(exported_metrics):
    missing = {}
    for name, uses in referenced_metrics().items():
        if name in PROMETHEUS_SYNTHETIC_SERIES:
            continue
        base, suffix = histogram_base(name)
        if suffix and exported_metrics.get(base, {}).get("type") == "histogram":
            continue
        if name not in exported_metrics:
            missing[name] = uses
    assert not missing, f"queries name metrics that GET /metrics does not export: {json.dumps(missing, indent=1)}"


def test_label_values_in_queries_exist_on_the_exported_series(exported_metrics):
    """`stage="total"`, `route="/intent"`... must match what the service writes, or a panel is
    silently empty. Checked for every series that has samples after one /intent request."""
    exprs = dashboard_exprs(json.loads(DASHBOARD.read_text())) + alert_exprs()
    checked = 0
    for metric, label, value in set().union(*map(promql_equality_matchers, exprs)):
        series_labels = exported_metrics.get(metric, {}).get("labels")
        if metric in PROMETHEUS_SYNTHETIC_SERIES or not series_labels:
            continue
        assert (label, value) in series_labels, f'{metric}{{{label}="{value}"}} matches no exported series'
        checked += 1
    assert checked >= 2, "expected the route and stage matchers to be checked"


def test_quads_settings_in_deploy_files_are_real_settings():
    """Every QUADS_* variable set by the Dockerfile, compose or the ConfigMap is a Settings field
    (pydantic-settings would silently ignore a misspelt one)."""
    from service.settings import Settings

    prefix = Settings.model_config.get("env_prefix", "")
    known = {(prefix + name).upper() for name in Settings.model_fields}
    compose_env = load_yaml(COMPOSE)["services"]["service"]["environment"]
    deployment_env = [e["name"] for e in deployment_container().get("env", [])]
    used = {*dockerfile_env(dockerfile_stages()[-1]), *compose_env, *k8s_settings(), *deployment_env}
    quads = {name for name in used if name.startswith("QUADS_")}
    assert quads, "no QUADS_ settings found"
    assert quads <= known, f"not Settings fields: {sorted(quads - known)} (known: {sorted(known)})"


# --- Kubernetes --------------------------------------------------------------------------------


def k8s_settings() -> dict[str, str]:
    """The KEY=VALUE lines of k8s/quads.env, as kustomize's configMapGenerator reads them."""
    lines = [line.strip() for line in (K8S / "quads.env").read_text().splitlines()]
    return dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))


def test_the_settings_env_file_is_plain_key_value_lines():
    settings = k8s_settings()
    assert settings["QUADS_BITS"] == "4" and len(settings) >= 5
    assert all(re.fullmatch(r"QUADS_[A-Z_]+", k) for k in settings)
    assert not [v for v in settings.values() if v[:1] in "\"'" or v != v.strip()]  # kustomize keeps quotes and spaces


def k8s_docs() -> dict[str, dict]:
    return {name: load_yaml(K8S / name) for name in K8S_MANIFESTS}


def deployment_container() -> dict:
    (container,) = load_yaml(K8S / "deployment.yaml")["spec"]["template"]["spec"]["containers"]
    return container


def kubernetes_validate(*files: Path, version: str) -> subprocess.CompletedProcess:
    if not KUBERNETES_VALIDATE.exists():
        pytest.skip(f"kubernetes-validate is not installed next to {sys.executable} (pip install -e '.[dev]')")
    argv = [str(KUBERNETES_VALIDATE), "--strict", "--kubernetes-version", version, *map(str, files)]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60)


# The oldest Kubernetes these manifests claim to support, and the newest schema bundled offline.
@pytest.mark.parametrize("version", ["1.29.0", "1.37.0"])
def test_every_manifest_validates_strictly_offline(version):
    proc = kubernetes_validate(*(K8S / name for name in K8S_MANIFESTS), version=version)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    # kubernetes-validate only warns (exit 0) when it has no schema for a kind: require a pass per file.
    for name in K8S_MANIFESTS:
        assert f"{name} passed" in output, output


def test_strict_validation_rejects_an_unknown_field(tmp_path):
    """Control for the test above: the schemas are really applied, unknown fields included."""
    deployment = load_yaml(K8S / "deployment.yaml")
    deployment["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {"httpGet": {"path": "/healthz"}}
    (tmp_path / "deployment.yaml").write_text(yaml.safe_dump(deployment))
    proc = kubernetes_validate(tmp_path / "deployment.yaml", version="1.37.0")
    assert proc.returncode != 0 and "livenesProbe" in proc.stdout + proc.stderr


def test_kustomization_lists_every_manifest_generates_the_settings_and_renders(tmp_path):
    kustomization = load_yaml(K8S / "kustomization.yaml")
    assert kustomization["kind"] == "Kustomization"
    on_disk = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert sorted(kustomization["resources"]) == sorted(on_disk) == sorted(K8S_MANIFESTS)
    (generator,) = kustomization["configMapGenerator"]
    assert generator["envs"] == ["quads.env"] and "behavior" not in generator  # hashed name: edits roll the pods
    (image,) = kustomization["images"]
    assert image["name"] == deployment_container()["image"].split(":")[0]
    assert image["newTag"] == pyproject()["project"]["version"]

    kubectl = require_tool("kubectl")
    rendered = list(yaml.safe_load_all(run_tool(kubectl, "kustomize", str(K8S)).stdout))
    assert sorted(doc["kind"] for doc in rendered) == sorted([*(d["kind"] for d in k8s_docs().values()), "ConfigMap"])
    (config_map,) = [doc for doc in rendered if doc["kind"] == "ConfigMap"]
    assert config_map["data"] == k8s_settings() and config_map["metadata"]["name"].startswith("quads-config-")
    (deployment,) = [doc for doc in rendered if doc["kind"] == "Deployment"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["envFrom"] == [{"configMapRef": {"name": config_map["metadata"]["name"]}}]
    (tmp_path / "rendered.yaml").write_text(yaml.safe_dump_all(rendered))
    proc = kubernetes_validate(tmp_path / "rendered.yaml", version="1.37.0")
    assert proc.returncode == 0 and proc.stdout.count(" passed ") == len(rendered), proc.stdout + proc.stderr


def test_deployment_probes_resources_and_threads():
    container = deployment_container()
    port = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert port["http"] == SERVICE_PORT
    probes = {kind: container[kind] for kind in ("startupProbe", "readinessProbe", "livenessProbe")}
    assert {k: p["httpGet"]["path"] for k, p in probes.items()} == {
        "startupProbe": "/readyz",
        "readinessProbe": "/readyz",
        "livenessProbe": "/healthz",
    }
    assert all(p["httpGet"]["port"] in ("http", SERVICE_PORT) for p in probes.values())
    startup = probes["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 60, "allow at least a minute to load the model"

    resources = container["resources"]
    assert resources["requests"] == resources["limits"], "requests must equal limits (Guaranteed QoS)"
    # Threads come from the CPU limit by service/cpu.py's one rule (rounded down), not from the
    # Downward API (which rounds up): nothing in the manifests sets them.
    assert "QUADS_THREADS" not in {e["name"] for e in container.get("env", [])}
    assert "QUADS_THREADS" not in k8s_settings()
    from service.settings import Settings

    assert Settings.model_fields["threads"].default == 0  # 0: resolve_threads reads the cgroup limit
    (generator,) = load_yaml(K8S / "kustomization.yaml")["configMapGenerator"]
    assert container["envFrom"] == [{"configMapRef": {"name": generator["name"]}}]


def test_deployment_uses_the_restricted_security_context():
    pod = load_yaml(K8S / "deployment.yaml")["spec"]["template"]["spec"]
    container = deployment_container()
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == dockerfile_user_uid()
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    security = container["securityContext"]
    assert security["allowPrivilegeEscalation"] is False
    assert security["readOnlyRootFilesystem"] is True
    assert security["capabilities"]["drop"] == ["ALL"]
    assert "add" not in security["capabilities"]
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]


def test_deployment_drains_gracefully():
    pod = load_yaml(K8S / "deployment.yaml")["spec"]["template"]["spec"]
    pre_stop = deployment_container()["lifecycle"]["preStop"]
    sleep_seconds = int(pre_stop["sleep"]["seconds"]) if "sleep" in pre_stop else int(pre_stop["exec"]["command"][-1])
    readiness = deployment_container()["readinessProbe"]
    # The endpoint is removed after readiness fails or the pod is marked terminating; the sleep
    # covers that propagation, and the grace period must leave time to drain after it.
    assert sleep_seconds >= 5
    assert pod["terminationGracePeriodSeconds"] >= sleep_seconds + 10
    assert readiness["periodSeconds"] * readiness["failureThreshold"] <= pod["terminationGracePeriodSeconds"]


def test_service_hpa_and_pdb_select_the_deployment():
    docs = k8s_docs()
    pod_labels = docs["deployment.yaml"]["spec"]["template"]["metadata"]["labels"]
    selector = docs["deployment.yaml"]["spec"]["selector"]["matchLabels"]
    assert selector.items() <= pod_labels.items()
    assert docs["service.yaml"]["spec"]["selector"].items() <= pod_labels.items()
    assert docs["pdb.yaml"]["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert docs["service.yaml"]["spec"]["ports"][0]["targetPort"] in ("http", SERVICE_PORT)

    hpa = docs["hpa.yaml"]
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": docs["deployment.yaml"]["metadata"]["name"],
    }
    assert [m["resource"]["name"] for m in hpa["spec"]["metrics"]] == ["cpu"]
    assert "replicas" not in docs["deployment.yaml"]["spec"], "the HPA owns replicas; apply would reset them"
    # With minAvailable below minReplicas, a node drain can always evict one pod.
    assert docs["pdb.yaml"]["spec"]["minAvailable"] < hpa["spec"]["minReplicas"]


def test_compose_publishes_on_localhost_and_takes_the_grafana_password_from_the_environment(compose_config):
    for name, service in compose_config["services"].items():
        for port in service.get("ports", []):
            host_ip = port.get("host_ip") if isinstance(port, dict) else port.rsplit(":", 2)[0]
            assert host_ip == "127.0.0.1", f"{name} publishes {port} beyond this host"
    raw = load_yaml(COMPOSE)["services"]["grafana"]["environment"]["GF_SECURITY_ADMIN_PASSWORD"]
    assert raw.startswith("${GRAFANA_ADMIN_PASSWORD")
    env = {**os.environ, "GRAFANA_ADMIN_PASSWORD": "s3cret-from-env"}
    resolved = yaml.safe_load(
        subprocess.run(
            [*compose_command(), "-f", str(COMPOSE), "config"],
            env=env,
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        ).stdout
    )
    assert resolved["services"]["grafana"]["environment"]["GF_SECURITY_ADMIN_PASSWORD"] == "s3cret-from-env"
