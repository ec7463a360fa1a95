"""deploy/compose.yaml: valid by the Compose Specification's JSON schema, and the
invariants the deployment promises (issue 5), each read from the file: Redis 7
with AOF fsynced every second and an ACL user per process, PostgreSQL, two
replicas of every service with stable and distinct consumer names, one live clock
publisher, the office registry, migrations before the replicas, Prometheus with
the rules and a scrape target per replica, Grafana with the provisioned
dashboards, a health check on everything that keeps running, and no secret in
the file. Also the Dockerfile's user and port, and the entrypoint that turns
secret files into variables (run with /bin/sh).

The schema is vendored, unmodified, at tests/data/compose-spec.json:
  source:  github.com/compose-spec/compose-spec, schema/compose-spec.json
  version: last changed by commit a08f8d51631b7127ddac3d2c65537db429d0f1d0
           (2025-10-21, "Update compose-spec.json"), as of the repository's
           commit 170098ba07d9f53c383a41bfd4c5166b0a4529a6; JSON Schema draft-07.
(That repository keeps it as a copy of compose-spec/compose-go's schema, which
is the one Docker Compose itself loads.) To update it, replace the file and
SCHEMA_SHA256 below together.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
from collections.abc import Iterator
from importlib import import_module
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import pytest
import yaml

from idt_cli.services import SERVICES

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
COMPOSE = DEPLOY / "compose.yaml"
SCHEMA = ROOT / "tests" / "data" / "compose-spec.json"
SCHEMA_SHA256 = "1f91e091f16b2dd50ab8860e02bb391d22df553d91c145eacedb1b6eff9c3f0e"
DATASOURCE = DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
DASHBOARD_PROVIDER = DEPLOY / "grafana" / "provisioning" / "dashboards" / "idt.yml"
GRAFANA_HOME = PurePosixPath("/usr/share/grafana")

#: Variables the file may interpolate; each must have a default (`${NAME:-...}`).
VARIABLES = {"IDT_IMAGE"}
SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|(^|_)KEY($|_)|AUTH", re.IGNORECASE)


# ------------------------------------------------------------------ reading the file


def interpolate(value: Any, where: str = "") -> Any:
    """The file as Docker Compose reads it: `$$` is a literal `$`, `${NAME:-default}`
    a variable (unset here, so its default); anything else with `$` is an error,
    and so is a variable outside VARIABLES or without a default."""
    if isinstance(value, dict):
        return {k: interpolate(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if not isinstance(value, str):
        return value

    def one(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name, default = m.group("name"), m.group("default")
        if m.group("unbraced"):
            raise AssertionError(
                f"{where}: ${m.group('unbraced')} is a Compose variable: {value!r}"
            )
        if name is None:
            raise AssertionError(f"{where}: a bare $ (write $$ for a literal one): {value!r}")
        if name not in VARIABLES or default is None:
            raise AssertionError(f"{where}: ${{{name}}} needs a default and a place in VARIABLES")
        return default

    pattern = (
        r"\$\$|\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::-(?P<default>[^}]*))?\}"
        r"|\$(?P<unbraced>[A-Za-z_][A-Za-z0-9_]*)|\$"
    )
    return re.sub(pattern, one, value)


def raw() -> dict[str, Any]:
    doc = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    assert isinstance(doc, dict)
    return doc


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return interpolate(raw())


def services(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return doc["services"]


def command(svc: dict[str, Any]) -> list[str]:
    cmd = svc.get("command", [])
    return shlex.split(cmd) if isinstance(cmd, str) else [str(c) for c in cmd]


def env(svc: dict[str, Any]) -> dict[str, str]:
    e = svc.get("environment") or {}
    if isinstance(e, list):
        e = dict(item.split("=", 1) for item in e)
    return {k: str(v) for k, v in e.items()}


def secrets_of(svc: dict[str, Any]) -> set[str]:
    return {s if isinstance(s, str) else s["source"] for s in svc.get("secrets", [])}


def mounts(svc: dict[str, Any]) -> dict[str, str]:
    """{target: source} of the service's volumes (short syntax)."""
    out = {}
    for v in svc.get("volumes", []):
        source, target = v.split(":")[:2]
        out[target] = source
    return out


def option(cmd: list[str], name: str) -> str | None:
    """The value after `name` (or in `name=value`) in a command line."""
    for i, word in enumerate(cmd):
        if word == name and i + 1 < len(cmd):
            return cmd[i + 1]
        if word.startswith(name + "="):
            return word.split("=", 1)[1]
    return None


def replicas(doc: dict[str, Any], factory: str) -> dict[str, dict[str, Any]]:
    return {n: s for n, s in services(doc).items() if factory in command(s)}


def a_replica(doc: dict[str, Any]) -> dict[str, Any]:
    return next(iter(replicas(doc, SERVICES[0].factory).values()))


def strings(value: Any) -> Iterator[str]:
    if isinstance(value, dict):
        for k, v in value.items():
            yield str(k)
            yield from strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from strings(v)
    elif isinstance(value, str):
        yield value


def image_tag(svc: dict[str, Any]) -> tuple[str, str]:
    name, _, tag = svc["image"].rpartition(":")
    return name, tag


# ------------------------------------------------------------------ the schema


def schema() -> dict[str, Any]:
    return json.loads(SCHEMA.read_text(encoding="utf-8"))


def test_the_vendored_schema_is_the_recorded_upstream_file():
    assert hashlib.sha256(SCHEMA.read_bytes()).hexdigest() == SCHEMA_SHA256
    s = schema()
    assert s["title"] == "Compose Specification"
    assert "services" in s["properties"]


def schema_errors(doc: dict[str, Any]) -> list[str]:
    validator = jsonschema.Draft7Validator(schema())
    return [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
        for e in sorted(validator.iter_errors(doc), key=lambda e: list(e.absolute_path))
    ]


def test_the_file_is_valid_by_the_compose_specification(compose):
    assert schema_errors(compose) == []


@pytest.mark.parametrize(
    "breakage", ["unknown service key", "command of the wrong type", "unknown healthcheck key"]
)
def test_the_schema_catches_a_broken_copy(compose, breakage):
    """The validation above is not vacuous: small breakages of the file fail it."""
    broken = copy.deepcopy(compose)
    svc = a_replica(broken)
    if breakage == "unknown service key":
        svc["replicas"] = 2  # belongs under deploy:
    elif breakage == "command of the wrong type":
        svc["command"] = {"run": "uvicorn"}
    else:
        svc["healthcheck"]["every"] = "10s"
    assert schema_errors(broken)


def test_interpolation_leaves_no_bare_dollar():
    interpolate(raw())  # raises on a `$` Compose would reject or expand unexpectedly
    with pytest.raises(AssertionError, match="bare"):
        interpolate({"command": "echo $(cat /run/secrets/x)"})
    with pytest.raises(AssertionError, match="default"):
        interpolate({"image": "${SOMETHING}"})
    with pytest.raises(AssertionError, match="Compose variable"):
        interpolate({"command": 'exec "$name"'})
    assert interpolate({"a": "$${x} ${IDT_IMAGE:-idt:1}"}) == {"a": "${x} idt:1"}


# ------------------------------------------------------------------ Redis


def redis_service(doc: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    found = [(n, s) for n, s in services(doc).items() if image_tag(s)[0] == "redis"]
    assert len(found) == 1, [n for n, _ in found]
    return found[0]


def test_redis_is_7_with_aof_fsynced_every_second(compose):
    _, redis = redis_service(compose)
    assert image_tag(redis)[1].split(".")[0] == "7"
    cmd = command(redis)
    assert cmd[0] == "redis-server"
    assert option(cmd, "--appendonly") == "yes"
    assert option(cmd, "--appendfsync") == "everysec"
    assert option(cmd, "--maxmemory-policy") == "noeviction"
    assert "/data" in mounts(redis), "the AOF must live on a volume"


def test_redis_loads_the_aclfile_the_init_step_renders(compose):
    _, redis = redis_service(compose)
    aclfile = PurePosixPath(option(command(redis), "--aclfile") or "")
    volume = mounts(redis)[str(aclfile.parent)]
    # The init step: the project's image, writing that file into the same volume.
    inits = [
        (n, s)
        for n, s in services(compose).items()
        if "idt_contract.acl" in " ".join(command(s)) and "render" in " ".join(command(s))
    ]
    assert len(inits) == 1
    init_name, init = inits[0]
    app = a_replica(compose)
    assert (init["image"], init["build"]) == (app["image"], app["build"])
    script = shlex.split(command(init)[-1])
    out = PurePosixPath(option(script, "--out") or "")
    assert mounts(init)[str(out.parent)] == volume and out.name == aclfile.name
    assert redis["depends_on"][init_name]["condition"] == "service_completed_successfully"
    assert init.get("restart") == "no"
    # Rendered for the server's version, from the shipped rules and the secrets.
    assert option(script, "--redis-version") == image_tag(redis)[1]
    rules = option(script, "--rules")
    assert mounts(init)[rules] == "./redis/users.acl.rules"
    assert (DEPLOY / "redis" / "users.acl.rules").is_file()
    assert mounts(init)[option(script, "--passwords-dir")] == "./secrets/redis"
    # The healthcheck of Redis logs in as a user the rules define.
    assert "--user admin" in redis["healthcheck"]["test"][1]
    assert "redis_admin" in secrets_of(redis)


def test_every_process_talks_to_redis_as_its_own_acl_user(compose):
    users: dict[str, str] = {}
    for name, svc in services(compose).items():
        e = env(svc)
        if "REDIS_URL" not in e:
            continue
        assert urlsplit(e["REDIS_URL"]).hostname == redis_service(compose)[0]
        user = e.get("IDT_REDIS_USERNAME")
        assert user, f"{name} connects to Redis without an ACL user"
        path = PurePosixPath(e["IDT_REDIS_PASSWORD_FILE"])
        assert path.parent == PurePosixPath("/run/secrets")
        assert path.name in secrets_of(svc), name
        # The secret is that user's password file.
        assert compose["secrets"][path.name]["file"] == f"./secrets/redis/{user}"
        users[name] = user
    expected = {s.name for s in SERVICES} | {"clock", "registry", "trim"}
    assert set(users.values()) == expected
    rules = (DEPLOY / "redis" / "users.acl.rules").read_text(encoding="utf-8")
    for user in expected:
        assert re.search(rf"^user {re.escape(user)} .* on ", rules, re.M), user


# ------------------------------------------------------------------ PostgreSQL


def test_postgresql_serves_every_service_without_a_password_in_the_url(compose):
    pg = {n: s for n, s in services(compose).items() if image_tag(s)[0] == "postgres"}
    assert len(pg) == 1
    ((pg_name, postgres),) = pg.items()
    assert postgres["environment"]["POSTGRES_PASSWORD_FILE"].startswith("/run/secrets/")
    assert "/var/lib/postgresql/data" in mounts(postgres)
    db_user = postgres["environment"]["POSTGRES_USER"]
    users = 0
    for name, svc in services(compose).items():
        url = env(svc).get("DATABASE_URL")
        if url is None:
            continue
        users += 1
        parts = urlsplit(url)
        assert parts.scheme == "postgresql+psycopg", name
        assert parts.hostname == pg_name and parts.username == db_user, name
        assert parts.password is None, name
        assert env(svc)["PGPASSWORD__FILE"] == postgres["environment"]["POSTGRES_PASSWORD_FILE"]
        assert svc["depends_on"][pg_name]["condition"] == "service_healthy"
    assert users >= 2 * len(SERVICES) + 1  # the replicas and the migrations


# ------------------------------------------------------------------ the services


def test_every_service_runs_two_replicas_with_stable_distinct_consumer_names(compose):
    consumer_names: dict[str, str] = {}
    host_ports: set[str] = set()
    for service in SERVICES:
        reps = replicas(compose, service.factory)
        # Two at least (issue 5); docs/deployment.md says how to add more.
        assert len(reps) >= 2, f"{service.name}: {sorted(reps)}"
        slots = set()
        for name, svc in reps.items():
            cmd = command(svc)
            assert cmd[:2] == ["uvicorn", "--factory"] and cmd[2] == service.factory
            assert "replicas" not in svc.get("deploy", {}), name
            e = env(svc)
            # The consumer name is <service>-<HOSTNAME>-<slot>: both fixed in the file.
            hostname, slot = svc.get("hostname"), e.get("IDT_CONSUMER_SLOT")
            assert hostname and slot, f"{name}: consumer name would change on re-creation"
            assert e["IDT_ENVIRONMENT"] == "production"
            consumer = f"{service.name}-{hostname}-{slot}"
            assert consumer not in consumer_names, (name, consumer_names.get(consumer))
            consumer_names[consumer] = name
            slots.add(slot)
            assert e["IDT_REDIS_USERNAME"] == service.name
            assert svc.get("restart") in ("unless-stopped", "always")
            for port in svc.get("ports", []):
                assert port.startswith("127.0.0.1:"), f"{name} published beyond the host"
                host = port.rsplit(":", 1)[0]  # address:port on the host
                assert host not in host_ports, f"{name}: {host} published twice"
                host_ports.add(host)
        assert len(slots) == len(reps)
    assert len(consumer_names) >= 2 * len(SERVICES)


def test_the_contact_centre_gets_its_hmac_key_from_a_secret(compose):
    for name, svc in replicas(compose, "services.contact_centre.app:create_app").items():
        path = env(svc)["IDT_CUSTOMER_REF_KEY__FILE"]
        assert PurePosixPath(path).name in secrets_of(svc), name
        assert "IDT_CUSTOMER_REF_KEY" not in env(svc)


def test_migrations_run_once_before_any_replica(compose, tmp_path, monkeypatch, capsys):
    """The one-shot runs every service's migrations; run here on SQLite, it brings
    each service's version table to its newest revision."""
    from alembic.script import ScriptDirectory
    from sqlalchemy import create_engine, text

    found = [
        (n, s)
        for n, s in services(compose).items()
        if command(s)[:2] == ["python", "-c"] and "migrate(" in command(s)[2]
    ]
    assert len(found) == 1
    name, migrate = found[0]
    assert migrate.get("restart") == "no"
    for service in SERVICES:
        for rep, svc in replicas(compose, service.factory).items():
            assert svc["depends_on"][name]["condition"] == "service_completed_successfully", rep

    # In this process (its imports are already paid for), as the container runs it.
    db = tmp_path / "all.db"
    for name_ in ("IDT_DATABASE_URL", "IDT_VAR_DIR"):
        monkeypatch.delenv(name_, raising=False)
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{db}")
    monkeypatch.chdir(tmp_path)
    exec(compile(command(migrate)[2], f"{name}: python -c", "exec"), {"__name__": "__main__"})
    printed = capsys.readouterr().out
    engine = create_engine(f"sqlite:///{db}")
    try:
        with engine.connect() as conn:
            for service in SERVICES:
                spec = import_module(service.module).SPEC
                head = ScriptDirectory(str(spec.migrations)).get_current_head()
                version = conn.execute(
                    text(f"SELECT version_num FROM {spec.prefix}_alembic_version")
                ).scalar_one()
                assert version == head, service.name
                assert f"migrate: {service.name} is at head" in printed
    finally:
        engine.dispose()


# ------------------------------------------------------------------ publishers


def test_one_live_clock_publisher(compose):
    clocks = {n: s for n, s in services(compose).items() if "idt_cli.clock" in command(s)}
    assert len(clocks) == 1, sorted(clocks)
    ((_, clock),) = clocks.items()
    cmd = command(clock)
    assert cmd[:3] == ["python", "-m", "idt_cli.clock"]
    assert float(option(cmd, "--interval") or 0) == 60
    assert clock.get("restart") in ("unless-stopped", "always")
    assert env(clock)["IDT_REDIS_USERNAME"] == "clock"
    assert "replicas" not in clock.get("deploy", {})


def test_one_stream_trimmer_keeps_a_week(compose):
    found = {n: s for n, s in services(compose).items() if "idt_cli.trim" in command(s)}
    assert len(found) == 1, sorted(found)
    ((_, trimmer),) = found.items()
    cmd = command(trimmer)
    assert cmd[:3] == ["python", "-m", "idt_cli.trim"]
    assert float(option(cmd, "--retention-days") or 0) == 7
    assert float(option(cmd, "--interval") or 0) == 300
    assert trimmer.get("restart") in ("unless-stopped", "always")
    assert env(trimmer)["IDT_REDIS_USERNAME"] == "trim"
    # The options it is given are ones it accepts.
    from idt_cli.trim import parse_args

    args = parse_args(cmd[3:], {"REDIS_URL": "redis://redis:6379/0"})
    assert args.retention_days == 7 and args.interval == 300


def test_a_one_shot_publishes_the_office_registry(compose):
    found = {n: s for n, s in services(compose).items() if "offices load" in " ".join(command(s))}
    assert len(found) == 1
    ((_, registry),) = found.items()
    assert registry.get("restart") == "no"
    script = shlex.split(command(registry)[-1])
    csv = script[-1]
    assert script[-4:-1] == ["idt", "offices", "load"]
    assert mounts(registry)[csv] == "./registry/offices.csv"
    assert (DEPLOY / "registry" / "offices.csv").is_file()
    assert env(registry)["IDT_REDIS_USERNAME"] == "registry"


# ------------------------------------------------------------------ health


def test_everything_that_keeps_running_has_a_healthcheck(compose):
    for name, svc in services(compose).items():
        if svc.get("restart", "no") == "no":
            continue  # a one-shot: it exits, and its dependants wait for exit 0
        check = svc.get("healthcheck")
        assert check and not check.get("disable"), f"{name} has no health check"
        assert check["test"][0] in ("CMD", "CMD-SHELL") and len(check["test"]) > 1, name


def test_dependencies_wait_for_what_can_report_it(compose):
    svcs = services(compose)
    for name, svc in svcs.items():
        deps = svc.get("depends_on", {})
        assert isinstance(deps, dict), f"{name}: depends_on without conditions"
        for dep, how in deps.items():
            if how["condition"] == "service_healthy":
                assert svcs[dep].get("healthcheck"), (name, dep)
            elif how["condition"] == "service_completed_successfully":
                assert svcs[dep].get("restart") == "no", (name, dep)
            else:
                pytest.fail(f"{name} -> {dep}: {how}")


def test_the_services_health_checks_ask_their_own_health_endpoint(compose):
    for service in SERVICES:
        for name, svc in replicas(compose, service.factory).items():
            port = option(command(svc), "--port")
            code = svc["healthcheck"]["test"][-1]
            assert f"http://127.0.0.1:{port}/health" in code, name


def test_python_one_liners_compile(compose):
    count = 0
    for name, svc in services(compose).items():
        for cmd in (command(svc), (svc.get("healthcheck") or {}).get("test", [])):
            for i, word in enumerate(cmd[:-1]):
                if word == "-c" and cmd[i - 1] == "python":
                    compile(cmd[i + 1], f"{name}: python -c", "exec")
                    count += 1
    assert count >= 2 * len(SERVICES) + 2


# ------------------------------------------------------------------ secrets


def test_no_secret_is_written_in_the_file(compose):
    for name, svc in services(compose).items():
        for key, value in env(svc).items():
            if SECRET_NAME.search(key):
                assert key.endswith("_FILE"), f"{name}: {key} holds a secret itself"
                path = PurePosixPath(value)
                assert path.parent == PurePosixPath("/run/secrets"), (name, key)
                assert path.name in secrets_of(svc), f"{name}: {key} names an unmounted secret"
    for text in strings(compose):
        for url in re.findall(r"[a-z][a-z0-9+.-]*://\S+", text):
            assert urlsplit(url).password is None, f"a password in {url!r}"
        # Shell assignments of secret-looking variables read a mounted file.
        for m in re.finditer(r"\b([A-Za-z_]+)=", text):
            if SECRET_NAME.search(m.group(1)) and not m.group(1).endswith("_FILE"):
                assert text[m.end() :].startswith('"$(cat /run/secrets/'), text
        assert not re.search(r"requirepass|masterauth|--pass\b|redis-cli.* -a ", text), text
    for secret, spec in compose["secrets"].items():
        assert set(spec) == {"file"}, f"{secret}: only file secrets"
        assert spec["file"].startswith("./secrets/"), secret


def test_every_secret_is_used_and_every_used_secret_defined(compose):
    used = set().union(*(secrets_of(s) for s in services(compose).values()))
    assert used == set(compose["secrets"])


def test_the_entrypoint_turns_secret_files_into_variables(compose, tmp_path):
    entrypoint = a_replica(compose)["entrypoint"]
    assert entrypoint[:2] == ["/bin/sh", "-c"]
    key = tmp_path / "key"
    key.write_text("k" * 40 + "\n", encoding="utf-8")
    redis_pw = tmp_path / "redis"
    redis_pw.write_text("pw\n", encoding="utf-8")
    base = {"PATH": os.environ["PATH"]}

    def run(extra: dict[str, str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*entrypoint, "env"],
            env={**base, **extra},
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )

    done = run({"IDT_CUSTOMER_REF_KEY__FILE": str(key), "IDT_REDIS_PASSWORD_FILE": str(redis_pw)})
    assert done.returncode == 0, done.stderr
    seen = dict(line.split("=", 1) for line in done.stdout.splitlines() if "=" in line)
    assert seen["IDT_CUSTOMER_REF_KEY"] == "k" * 40
    assert "IDT_CUSTOMER_REF_KEY__FILE" not in seen
    assert seen["IDT_REDIS_PASSWORD_FILE"] == str(redis_pw)  # a single _FILE is the app's
    missing = run({"PGPASSWORD__FILE": str(tmp_path / "absent")})
    assert missing.returncode != 0 and "PGPASSWORD" not in missing.stdout


# ------------------------------------------------------------------ Prometheus


def prometheus_service(doc: dict[str, Any]) -> dict[str, Any]:
    found = [s for s in services(doc).values() if image_tag(s)[0] == "prom/prometheus"]
    assert len(found) == 1
    return found[0]


def test_prometheus_loads_the_rules_and_scrapes_every_replica(compose):
    prom = prometheus_service(compose)
    config_path = PurePosixPath(option(command(prom), "--config.file") or "")
    m = mounts(prom)
    config_file = DEPLOY / m[str(config_path)]
    assert config_file == DEPLOY / "./prometheus/prometheus.compose.yml"
    config = yaml.safe_load(config_file.read_text(encoding="utf-8"))
    # rule_files are relative to the config: they must fall inside the rules mount.
    rules_target = next(t for t, s in m.items() if s.startswith("./prometheus/rules"))
    for pattern in config["rule_files"]:
        assert str(config_path.parent / pattern).startswith(rules_target + "/"), pattern
        assert list((DEPLOY / "prometheus").glob(pattern)), pattern
    jobs = {j["job_name"]: j for j in config["scrape_configs"]}
    assert set(jobs) == {s.name for s in SERVICES}
    for service in SERVICES:
        targets = {t for sc in jobs[service.name]["static_configs"] for t in sc["targets"]}
        expected = {
            f"{name}:{option(command(svc), '--port')}"
            for name, svc in replicas(compose, service.factory).items()
        }
        assert targets == expected, service.name


def promtool() -> str:
    path = shutil.which("promtool")
    if path:
        return path
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail("promtool is not installed but CI is set (.ci/run installs it)")
    pytest.skip("promtool not found (apt-get install prometheus)")


def test_promtool_accepts_the_compose_config():
    config = DEPLOY / "prometheus" / "prometheus.compose.yml"
    result = subprocess.run(
        [promtool(), "check", "config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    rule_files = sorted((DEPLOY / "prometheus" / "rules").glob("*.yml"))
    assert f"SUCCESS: {len(rule_files)} rule files found" in result.stdout, result.stdout


# ------------------------------------------------------------------ Grafana


def test_grafana_gets_the_dashboards_and_the_datasource(compose):
    grafana = next(s for s in services(compose).values() if image_tag(s)[0] == "grafana/grafana")
    m = mounts(grafana)
    assert m["/etc/grafana/provisioning/dashboards"] == "./grafana/provisioning/dashboards"
    # The provider reads a path relative to Grafana's home: the dashboards are there.
    provider = yaml.safe_load(DASHBOARD_PROVIDER.read_text(encoding="utf-8"))["providers"][0]
    path = PurePosixPath(provider["options"]["path"])
    target = path if path.is_absolute() else GRAFANA_HOME / path
    assert m[str(target)] == "./grafana/dashboards"
    assert list((DEPLOY / "grafana" / "dashboards").glob("*.json"))
    # The datasource: the repository's, pointed at this stack's Prometheus.
    (cfg,) = grafana["configs"]
    assert cfg["target"] == "/etc/grafana/provisioning/datasources/" + DATASOURCE.name
    ours = yaml.safe_load(compose["configs"][cfg["source"]]["content"])
    theirs = yaml.safe_load(DATASOURCE.read_text(encoding="utf-8"))
    url = urlsplit(ours["datasources"][0].pop("url"))
    theirs["datasources"][0].pop("url")
    assert ours == theirs
    prom_name = next(
        n for n, s in services(compose).items() if image_tag(s)[0] == "prom/prometheus"
    )
    assert (url.hostname, url.port) == (prom_name, 9090)
    assert grafana["environment"]["GF_SECURITY_ADMIN_PASSWORD__FILE"].startswith("/run/secrets/")


# ------------------------------------------------------------------ the image


def test_the_dockerfile_builds_one_non_root_image_exposing_the_service_port(compose):
    text = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    stages = re.findall(r"^FROM\s+(\S+)", text, re.M)
    assert stages and all(s == "python:3.11-slim" for s in stages)
    final = text[text.rfind("\nFROM ") :]
    users = re.findall(r"^USER\s+(\S+)", final, re.M)
    assert users and users[-1].split(":")[0] not in ("0", "root")
    exposed = {p for line in re.findall(r"^EXPOSE\s+(.+)$", final, re.M) for p in line.split()}
    ports = {
        option(command(s), "--port")
        for f in SERVICES
        for s in replicas(compose, f.factory).values()
    }
    assert ports <= exposed
    assert re.search(r"pip install \.$", text, re.M), "install the project itself, not editable"
    assert "[dev]" not in text
