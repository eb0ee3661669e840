"""The docker-compose stack, checked on machines where no Docker engine runs.

``docker compose config`` needs no engine: it parses docker-compose.yaml, validates it against the
Compose schema, resolves anchors, ``.env`` interpolation and paths, and prints the model the engine
would get. The tests run it with ``.env.example`` (and with a filled-in copy) and check that model.
When neither the ``docker compose`` plugin nor ``docker-compose`` is on the machine and the tests
run as root, they install Debian's ``docker-compose`` (the Compose CLI alone: no engine, no daemon).

The image cannot be built here: the Dockerfile is checked statically, and its model-baking step is
run exactly as written, against this checkout and its venv.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yaml"
ENV_EXAMPLE = ROOT / ".env.example"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"

# Debian 12's Compose CLI (1.29, Python), installed without its recommended docker.io engine.
COMPOSE_DEB = "docker-compose=1.29.2-3"

AIRFLOW_SERVICES = {
    "airflow-apiserver",
    "airflow-scheduler",
    "airflow-dag-processor",
    "airflow-triggerer",
    "airflow-worker",
    "airflow-init",
}
LONG_RUNNING = AIRFLOW_SERVICES - {"airflow-init"} | {"postgres", "redis"}
IMAGE = "apache/airflow:3.3.2-python3.11"
MODEL_DIR = "/opt/airflow/models"


def _compose_command() -> list[str] | None:
    """``docker compose`` (the plugin) if it works, else ``docker-compose``, else None."""
    candidates = []
    if docker := shutil.which("docker"):
        candidates.append([docker, "compose"])
    if legacy := shutil.which("docker-compose"):
        candidates.append([legacy])
    for command in candidates:
        probe = subprocess.run([*command, "version"], capture_output=True, timeout=60)
        if probe.returncode == 0:
            return command
    return None


@pytest.fixture(scope="session")
def compose() -> list[str]:
    command = _compose_command()
    if command is None:
        if os.geteuid() != 0 or not shutil.which("apt-get"):
            message = (
                "needs `docker compose` or docker-compose: run "
                f"`apt-get install -y --no-install-recommends {COMPOSE_DEB}` as root"
            )
            if os.environ.get("CI"):
                pytest.fail(message)
            pytest.skip(message)
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for step in (
            ["apt-get", "update", "-qq"],
            ["apt-get", "install", "-y", "-qq", "--no-install-recommends", COMPOSE_DEB],
        ):
            subprocess.run(step, check=True, env=env, timeout=1200, stdout=subprocess.DEVNULL)
        command = _compose_command()
    assert command, f"{COMPOSE_DEB} was installed but `docker-compose version` fails"
    return command


def _compose_variables() -> set[str]:
    return set(re.findall(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)", COMPOSE_FILE.read_text()))


def _config(compose: list[str], env_file: Path) -> dict:
    """``docker compose --env-file ENV_FILE config``, parsed.

    Variables of the caller's shell would win over the env file, so the ones the compose file reads
    (and Compose's own COMPOSE_*) are removed from the command's environment.
    """
    drop = _compose_variables()
    env = {k: v for k, v in os.environ.items() if k not in drop and not k.startswith("COMPOSE_")}
    result = subprocess.run(
        [*compose, "-f", str(COMPOSE_FILE), "--env-file", str(env_file), "config"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, f"compose config failed:\n{result.stderr}"
    return yaml.safe_load(result.stdout)


@pytest.fixture(scope="module")
def config(compose) -> dict:
    return _config(compose, ENV_EXAMPLE)


def _env_file(path: Path = ENV_EXAMPLE) -> dict[str, str]:
    """KEY=VALUE lines (comments skipped); single quotes around a value removed, as Compose does."""
    values = {}
    for line in path.read_text().splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        key, sep, value = line.partition("=")
        assert sep, f"{path.name}: not KEY=VALUE: {line!r}"
        if len(value) >= 2 and value[0] == value[-1] == "'":
            value = value[1:-1]
        values[key.strip()] = value
    return values


def _examples() -> dict[str, str]:
    """The commented-out example values of .env.example (``# KEY='...'``)."""
    found = re.findall(r"^# ([A-Z][A-Z0-9_]*)='(.*)'$", ENV_EXAMPLE.read_text(), flags=re.M)
    return dict(found)


def _volumes(service: dict) -> dict[str, tuple[str, bool]]:
    """target -> (source, read only), from Compose v1's short or v2's long syntax."""
    mounts = {}
    for volume in service.get("volumes", []):
        if isinstance(volume, str):
            source, target, *mode = volume.split(":")
            mounts[target] = (source, bool(mode) and "ro" in mode[0].split(","))
        else:
            mounts[volume["target"]] = (volume["source"], bool(volume.get("read_only")))
    return mounts


def _ports(service: dict) -> list[tuple[str, str, str]]:
    """(host ip, published, target) from Compose v1's short or v2's long syntax."""
    ports = []
    for port in service.get("ports", []):
        if isinstance(port, str):
            parts = port.split("/")[0].split(":")
            ip, published, target = ["", *parts][-3:] if len(parts) == 2 else parts
            ports.append((ip, published, target))
        else:
            ports.append((port.get("host_ip", ""), str(port["published"]), str(port["target"])))
    return ports


def test_the_stack_has_every_service(config):
    services = config["services"]
    assert LONG_RUNNING | AIRFLOW_SERVICES <= set(services)
    assert services["postgres"]["image"].startswith("postgres:")
    assert services["redis"]["image"].startswith("redis:")
    commands = {
        "airflow-apiserver": "api-server",
        "airflow-scheduler": "scheduler",
        "airflow-dag-processor": "dag-processor",
        "airflow-triggerer": "triggerer",
        "airflow-worker": "celery worker",
    }
    for name, command in commands.items():
        given = services[name]["command"]
        assert (given if isinstance(given, str) else " ".join(given)) == command, name


def test_airflow_services_share_the_built_image_and_the_celery_settings(config):
    services = config["services"]
    image = _env_file()["AIRFLOW_IMAGE_NAME"]
    for name in AIRFLOW_SERVICES:
        service = services[name]
        assert service["image"] == image, name
        assert Path(service["build"]["context"]) == ROOT, name
        assert service["build"].get("dockerfile", "Dockerfile") == "Dockerfile", name
        env = service["environment"]
        assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor", name
        assert re.fullmatch(
            r"postgresql\+psycopg2://airflow:[^@]+@postgres/airflow",
            env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"],
        ), name
        assert env["AIRFLOW__CELERY__RESULT_BACKEND"].startswith("db+postgresql+psycopg2://"), name
        assert env["AIRFLOW__CELERY__BROKER_URL"] == "redis://redis:6379/0", name
        assert (
            env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"]
            == "http://airflow-apiserver:8080/execution/"
        ), name
        assert env["IMAGE_SIMILARITY_MODEL_DIR"] == MODEL_DIR, name
        assert env["PYTHONPATH"].split(":") == ["/opt/airflow", "/opt/airflow/plugins"], name
        assert env["AIRFLOW_CONFIG"] == "/opt/airflow/config/airflow.cfg", name
        assert env["AIRFLOW__CORE__LOAD_EXAMPLES"] == "false", name
        assert env["AIRFLOW__CORE__AUTH_MANAGER"].endswith("FabAuthManager"), name
        # One password for the database and for the Airflow services that use it.
        password = env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].split(":")[2].split("@")[0]
        assert services["postgres"]["environment"]["POSTGRES_PASSWORD"] == password


def test_code_and_data_folders_are_mounted(config):
    for name in AIRFLOW_SERVICES:
        mounts = _volumes(config["services"][name])
        for folder in ("dags", "plugins", "include", "logs", "output"):
            source, read_only = mounts[f"/opt/airflow/{folder}"]
            assert Path(source) == ROOT / folder and not read_only, (name, folder)
        assert mounts["/opt/airflow/data"] == (str(ROOT / "data"), True), name
        # Named volumes: the generated config (keys every service must share) and the caches.
        assert mounts["/opt/airflow/config"][0] == "airflow-config", name
        assert mounts["/opt/airflow/.cache"][0] == "airflow-cache", name
    assert {"postgres-db-volume", "airflow-config", "airflow-cache"} <= set(config["volumes"])
    # The plugin loader reads only mturk_plugin.py: the .airflowignore travels with the mount.
    assert (ROOT / "plugins/mturk_provider/.airflowignore").is_file()


def test_the_containers_pythonpath_imports_include_and_the_mturk_provider(config, tmp_path):
    """The services' PYTHONPATH, mapped onto this checkout, imports the project's packages.

    In the containers /opt/airflow/{dags,plugins,include} are this checkout's folders. Airflow's
    own plugins folder is pointed elsewhere here, so only PYTHONPATH can make the imports work.
    """
    pythonpath = config["services"]["airflow-triggerer"]["environment"]["PYTHONPATH"]
    mapped = [str(ROOT / Path(p).relative_to("/opt/airflow")) for p in pythonpath.split(":")]
    modules = [
        "include.image_similarity.efficientnet_lite",
        "include.crowd.stage",
        "mturk_provider.triggers.mturk",
        "mturk_provider.sensors.mturk",
    ]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(mapped),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(tmp_path),
    }
    result = subprocess.run(
        [sys.executable, "-c", f"import {', '.join(modules)}"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]


def test_long_running_services_have_healthchecks_and_start_in_order(config):
    services = config["services"]
    for name in LONG_RUNNING:
        test = services[name].get("healthcheck", {}).get("test")
        assert test and test != ["NONE"], f"{name} has no healthcheck"
        assert services[name].get("restart") == "always", name
    for name in AIRFLOW_SERVICES:
        depends = services[name]["depends_on"]
        assert depends["postgres"]["condition"] == "service_healthy", name
        assert depends["redis"]["condition"] == "service_healthy", name
        if name != "airflow-init":
            assert depends["airflow-init"]["condition"] == "service_completed_successfully", name
    for name in ("airflow-worker", "airflow-triggerer"):
        depends = services[name]["depends_on"]
        assert depends["airflow-apiserver"]["condition"] == "service_healthy", name
    triggerer_check = " ".join(services["airflow-triggerer"]["healthcheck"]["test"])
    assert "TriggererJob" in triggerer_check


def test_workers_scale_and_only_the_api_server_is_published(config):
    services = config["services"]
    worker = services["airflow-worker"]
    # `docker compose up --scale airflow-worker=N` needs both.
    assert "container_name" not in worker and not worker.get("ports")
    assert "celery" in " ".join(worker["healthcheck"]["test"])
    assert _ports(services["airflow-apiserver"]) == [("127.0.0.1", "8080", "8080")]
    for name in ("postgres", "redis", "airflow-scheduler", "airflow-triggerer"):
        assert not services[name].get("ports"), name


def test_init_migrates_the_database_and_creates_the_admin(config):
    init = config["services"]["airflow-init"]
    script = " ".join(init["command"]) if isinstance(init["command"], list) else init["command"]
    script = script.replace("$$", "$")  # `config` prints the file's escapes back as they are
    assert init["user"] == "0:0"
    assert init.get("restart", "no") == "no"
    for step in ("airflow config list", "airflow db migrate", "airflow users create --role Admin"):
        assert step in script
    # The shell, not Compose, reads the password (`$$` in the file): it stays out of the command.
    assert '"${_AIRFLOW_WWW_USER_PASSWORD}"' in script
    assert init["environment"]["_AIRFLOW_WWW_USER_USERNAME"] == "airflow"
    # .env.example leaves the password empty, and the script refuses to go on without one.
    assert init["environment"]["_AIRFLOW_WWW_USER_PASSWORD"] == ""
    assert "exit 1" in script
    for name in AIRFLOW_SERVICES - {"airflow-init"}:
        assert config["services"][name]["user"] == "50000:0", name


def test_values_from_env_reach_every_airflow_service(compose, tmp_path):
    """A filled-in .env (the commented examples, uncommented) arrives intact in every service."""
    examples = _examples()
    assert set(examples) == {"AIRFLOW_CONN_AWS_DEFAULT", "AIRFLOW_CONN_GOOGLE_CLOUD_DEFAULT"}
    filled = {
        **examples,
        "AIRFLOW_UID": "1234",
        "AIRFLOW_ADMIN_PASSWORD": "not-a-real-password",
        "AIRFLOW_API_PORT": "8081",
        "IMAGE_SIMILARITY_S3_BUCKET": "my-private-bucket",
        "IMAGE_SIMILARITY_SCHEDULE": "@daily",
        "IMAGE_SIMILARITY_EMBEDDING_CACHE": "s3://my-private-bucket/embeddings",
        "POSTGRES_PASSWORD": "db-password",
    }
    lines = []
    for key, value in _env_file().items():
        value = filled.get(key, value)
        lines.append(f"{key}='{value}'" if key in examples else f"{key}={value}")
    env_file = tmp_path / ".env"
    env_file.write_text("\n".join(lines) + "\n")

    services = _config(compose, env_file)["services"]
    from airflow.models.connection import Connection

    for name in AIRFLOW_SERVICES:
        env = services[name]["environment"]
        for key in examples:
            assert env[key] == examples[key], (name, key)
        assert env["IMAGE_SIMILARITY_S3_BUCKET"] == "my-private-bucket", name
        assert env["IMAGE_SIMILARITY_SCHEDULE"] == "@daily", name
        assert env["IMAGE_SIMILARITY_EMBEDDING_CACHE"] == "s3://my-private-bucket/embeddings"
        assert ":db-password@postgres/" in env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"], name
        if name != "airflow-init":
            assert services[name]["user"] == "1234:0", name
    assert services["postgres"]["environment"]["POSTGRES_PASSWORD"] == "db-password"
    init_env = services["airflow-init"]["environment"]
    assert init_env["_AIRFLOW_WWW_USER_PASSWORD"] == "not-a-real-password"
    assert _ports(services["airflow-apiserver"]) == [("127.0.0.1", "8081", "8080")]

    # Airflow reads the examples as the connections the DAG expects.
    aws = Connection.from_json(examples["AIRFLOW_CONN_AWS_DEFAULT"], conn_id="aws_default")
    assert aws.conn_type == "aws" and aws.extra_dejson["region_name"] == "us-east-1"
    google = Connection.from_json(
        examples["AIRFLOW_CONN_GOOGLE_CLOUD_DEFAULT"], conn_id="google_cloud_default"
    )
    assert google.conn_type == "google_cloud_platform"
    assert google.extra_dejson["scope"] == "https://www.googleapis.com/auth/drive.readonly"


def test_env_example_holds_no_secret():
    text = ENV_EXAMPLE.read_text()
    assert not re.search(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b", text), "an AWS access key id"
    assert "PRIVATE KEY-----" not in text, "a private key"
    assert not re.search(r"(?<![A-Za-z0-9/+])[A-Za-z0-9/+]{40}(?![A-Za-z0-9/+])", text), (
        "something shaped like an AWS secret access key"
    )
    values = _env_file()
    for key, value in values.items():
        if re.search(r"PASSWORD|SECRET|TOKEN|FERNET|_KEY$|^AIRFLOW_CONN_", key):
            assert value == "", f"{key} must stay empty in .env.example"
    # The examples show where credentials go, with placeholders only.
    for key, example in _examples().items():
        parsed = json.loads(example)
        for field in ("login", "password"):
            assert parsed.get(field, "YOUR_").startswith("YOUR_"), (key, field)
        keyfile = parsed.get("extra", {}).get("keyfile_dict", {})
        assert keyfile.get("private_key", "YOUR_").startswith("YOUR_"), key


def test_env_example_and_the_compose_file_name_the_same_variables():
    documented = set(_env_file()) | set(_examples())
    assert _compose_variables() == documented


def _dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments), continuation lines joined, comments dropped."""
    logical, current = [], ""
    for line in DOCKERFILE.read_text().splitlines():
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        current += line.rstrip("\\").strip() + " " if line.endswith("\\") else line.strip()
        if not line.endswith("\\"):
            logical.append(current)
            current = ""
    return [tuple(item.split(None, 1)) for item in logical]


def test_dockerfile_pins_the_base_installs_the_lock_and_bakes_the_model():
    instructions = _dockerfile_instructions()
    froms = [args for op, args in instructions if op == "FROM"]
    assert froms == [IMAGE]
    runs = [args for op, args in instructions if op == "RUN"]
    copies = [args for op, args in instructions if op == "COPY"]
    env = " ".join(args for op, args in instructions if op == "ENV")

    install = next(run for run in runs if "pip install" in run)
    words = shlex.split(install)
    assert words[words.index("-r") + 1].endswith("/requirements.txt")
    assert words[words.index("-c") + 1].endswith("/constraints.txt")
    assert any("requirements.txt" in c and "constraints.txt" in c for c in copies)
    # requirements.txt pins Airflow to the base image's version and carries the stack's drivers.
    requirements = (ROOT / "requirements.txt").read_text()
    for pin in (
        "apache-airflow==3.3.2",
        "apache-airflow-providers-celery==",
        "psycopg2-binary==",
        "redis==",
        "asyncpg==",
        "apache-airflow-providers-fab==",
    ):
        assert re.search(rf"^{re.escape(pin)}", requirements, flags=re.M), pin

    assert f"IMAGE_SIMILARITY_MODEL_DIR={MODEL_DIR}" in env
    assert "PYTHONPATH=/opt/airflow:/opt/airflow/plugins" in env
    bake = next(run for run in runs if "converted_model" in run)
    order = [args for op, args in instructions if op in {"COPY", "RUN"}]
    include_copy = next(i for i, args in enumerate(order) if args.split()[-2] == "include/")
    assert include_copy < order.index(bake) and order.index(install) < order.index(bake)


def test_dockerignore_keeps_env_out_of_the_build_context():
    patterns = [
        line.strip()
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    # Everything is excluded, then only what the Dockerfile copies is let back in.
    assert patterns[0] == "*"
    allowed = {p[1:].rstrip("/") for p in patterns if p.startswith("!")}
    assert allowed == {"requirements.txt", "constraints.txt", "dags", "plugins", "include"}


@pytest.mark.slow
def test_the_dockerfiles_model_step_converts_the_weights(tmp_path):
    """The RUN that bakes the model, run as written with this venv's python (about 20 s)."""
    bake = next(
        args for op, args in _dockerfile_instructions() if op == "RUN" and "converted_model" in args
    )
    model_dir = tmp_path / "models"
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "PYTHONPATH": str(ROOT),
        "IMAGE_SIMILARITY_MODEL_DIR": str(model_dir),
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }
    result = subprocess.run(
        ["bash", "-c", bake], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    baked = model_dir / "efficientnet_lite0_imagenet_notop.keras"
    assert baked.stat().st_size > 1_000_000
