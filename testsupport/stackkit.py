"""The Airflow stack as users deploy it, as real processes on 127.0.0.1, for the full-stack tests.

Postgres (metadata database and Celery result backend) and Redis (Celery broker) are the
machine's services, started here (and installed from Debian's packages) when they are not
running. Each session gets its own database and its own Redis database number, so it clashes
with nothing else on the machine. ``airflow api-server``, ``scheduler``, ``dag-processor``,
``triggerer`` and ``celery worker`` then run from the project's ``dags/``, ``plugins/`` and
``include/``, each in its own process group, so that :meth:`AirflowStack.stop` ends them and
every child they started (task processes, log servers), also when a test fails.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests

PROJECT_ROOT = Path(__file__).resolve().parents[1]
PG_HOST, PG_PORT, PG_USER = "127.0.0.1", 5432, "postgres"
REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379
REDIS_CLAIM_KEY = "airflow-stack-test:claim"


class ServiceUnavailable(RuntimeError):
    """A machine service (Postgres, Redis) is not running and cannot be started here."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(
    check: Callable[[], Any], timeout: float, what: str, interval: float = 1.0, alive=None
) -> Any:
    """Call ``check`` until it returns something truthy; raise ``TimeoutError`` naming ``what``."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while True:
        if alive is not None:
            alive()
        try:
            result = check()
            if result:
                return result
        except (requests.RequestException, OSError) as error:
            last_error = error
        if time.monotonic() > deadline:
            detail = f" (last error: {last_error})" if last_error else ""
            raise TimeoutError(f"{what}: not within {timeout:.0f} s{detail}")
        time.sleep(interval)


# Machine services ----------------------------------------------------------------------------


def _apt_get_install(*packages: str) -> None:
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise ServiceUnavailable(
            f"needs Debian's {' '.join(packages)}: run `apt-get install -y {' '.join(packages)}` "
            "as root"
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (
        ["apt-get", "update", "-qq"],
        ["apt-get", "install", "-y", "-qq", *packages],
    ):
        subprocess.run(command, check=True, env=env, timeout=1200, stdout=subprocess.DEVNULL)


def _pg_connect(dbname: str = "postgres"):
    import psycopg2

    return psycopg2.connect(
        host=PG_HOST, port=PG_PORT, user=PG_USER, dbname=dbname, connect_timeout=5
    )


def _pg_clusters() -> list[tuple[str, str, str]]:
    """(version, cluster, config dir) of each Debian Postgres cluster."""
    out = subprocess.run(["pg_lsclusters", "-h"], capture_output=True, text=True, check=True)
    clusters = []
    for line in out.stdout.splitlines():
        fields = line.split()
        if len(fields) >= 2:
            clusters.append((fields[0], fields[1], f"/etc/postgresql/{fields[0]}/{fields[1]}"))
    return clusters


def ensure_postgres() -> None:
    """Make sure Postgres answers on 127.0.0.1:5432 for user postgres without a password."""
    import psycopg2

    try:
        _pg_connect().close()
        return
    except psycopg2.OperationalError as error:
        first_error = str(error)
    if not shutil.which("pg_lsclusters"):
        _apt_get_install("postgresql")
    clusters = _pg_clusters()
    if not clusters:
        raise ServiceUnavailable(f"Postgres is not reachable ({first_error}) and has no cluster")
    for version, cluster, _ in clusters:
        subprocess.run(
            ["pg_ctlcluster", "--skip-systemctl-redirect", version, cluster, "start"],
            capture_output=True,
        )  # already running: exits non-zero, harmless
    try:
        wait_for(lambda: _pg_connect().close() or True, 30, "Postgres on 127.0.0.1:5432")
        return
    except TimeoutError:
        pass
    # Running, but asking for a password: let user postgres in from 127.0.0.1 (trust auth).
    for version, cluster, conf_dir in clusters:
        hba = Path(conf_dir) / "pg_hba.conf"
        line = f"host all {PG_USER} 127.0.0.1/32 trust\n"
        if hba.exists() and line not in hba.read_text():
            hba.write_text(line + hba.read_text())
            subprocess.run(["pg_ctlcluster", version, cluster, "reload"], check=False)
    try:
        wait_for(lambda: _pg_connect().close() or True, 30, "Postgres on 127.0.0.1:5432")
    except TimeoutError as error:
        raise ServiceUnavailable(f"Postgres on 127.0.0.1:5432: {error}") from None


def ensure_redis() -> None:
    """Make sure Redis answers on 127.0.0.1:6379."""
    import redis

    def ping() -> bool:
        try:
            return bool(redis.Redis(host=REDIS_HOST, port=REDIS_PORT, socket_timeout=3).ping())
        except redis.RedisError:
            return False

    if ping():
        return
    if not shutil.which("redis-server"):
        _apt_get_install("redis-server")
    subprocess.run(
        ["redis-server", "--daemonize", "yes", "--bind", REDIS_HOST, "--port", str(REDIS_PORT),
         "--save", "", "--appendonly", "no"],
        check=True, cwd="/tmp", stdout=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_for(ping, 30, "Redis on 127.0.0.1:6379", interval=0.5)
    except TimeoutError as error:
        raise ServiceUnavailable(str(error)) from None


def create_database(name: str) -> None:
    conn = _pg_connect()
    conn.autocommit = True
    with conn.cursor() as cursor:
        cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        cursor.execute(f'CREATE DATABASE "{name}"')
    conn.close()


def drop_database(name: str) -> None:
    conn = _pg_connect()
    conn.autocommit = True
    with conn.cursor() as cursor:
        cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    conn.close()


def claim_redis_db() -> int:
    """An empty Redis database number, marked as ours so no concurrent session takes it."""
    import redis

    for number in range(1, 16):
        client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=number)
        if client.dbsize() == 0 and client.set(REDIS_CLAIM_KEY, os.getpid(), nx=True):
            if client.dbsize() == 1:
                return number
            client.delete(REDIS_CLAIM_KEY)
    raise ServiceUnavailable("no empty Redis database among 1..15")


def release_redis_db(number: int) -> None:
    import redis

    redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=number).flushdb()


# Airflow --------------------------------------------------------------------------------------


class ProcessDied(RuntimeError):
    pass


class AirflowStack:
    """Airflow's services as real processes sharing one home, one database and one broker."""

    def __init__(
        self,
        home: Path,
        *,
        database: str,
        redis_db: int,
        extra_env: dict[str, str] | None = None,
        worker_concurrency: int = 2,
        workers: int = 1,
    ) -> None:
        self.home = Path(home)
        self.database = database
        self.redis_db = redis_db
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.broker_url = f"redis://{REDIS_HOST}:{REDIS_PORT}/{redis_db}"
        self.worker_concurrency = worker_concurrency
        self.workers = workers
        self.worker_name = f"stack-{os.getpid()}@{socket.gethostname()}"
        self.processes: dict[str, subprocess.Popen] = {}
        self._token: str | None = None
        self._session = requests.Session()
        sql = f"postgresql+psycopg2://{PG_USER}@{PG_HOST}:{PG_PORT}/{database}"
        from cryptography.fernet import Fernet

        # Nothing of the developer's environment leaks in: no AIRFLOW_* but ours.
        base = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
        self.env = {
            **base,
            "AIRFLOW_HOME": str(self.home),
            "PYTHONPATH": str(PROJECT_ROOT),
            "TF_CPP_MIN_LOG_LEVEL": "2",
            "AIRFLOW__CORE__DAGS_FOLDER": str(PROJECT_ROOT / "dags"),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(PROJECT_ROOT / "plugins"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
            "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
            "AIRFLOW__CORE__FERNET_KEY": Fernet.generate_key().decode(),
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.url}/execution/",
            "AIRFLOW__CORE__AUTH_MANAGER": (
                "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"
            ),
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": sql,
            "AIRFLOW__CELERY__BROKER_URL": self.broker_url,
            "AIRFLOW__CELERY__RESULT_BACKEND": f"db+postgresql+psycopg2://{PG_USER}@{PG_HOST}:{PG_PORT}/"
            f"{database}",
            "AIRFLOW__CELERY__WORKER_CONCURRENCY": str(worker_concurrency),
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(self.port),
            "AIRFLOW__API__BASE_URL": self.url,
            "AIRFLOW__API__WORKERS": "1",
            "AIRFLOW__API__SECRET_KEY": os.urandom(16).hex(),
            "AIRFLOW__API_AUTH__JWT_SECRET": os.urandom(32).hex(),
            # A new DAG file is picked up within seconds, not minutes.
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
            **(extra_env or {}),
        }

    # processes

    def airflow(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
        """Run an ``airflow`` command with the stack's configuration; raise if it fails."""
        done = subprocess.run(
            [sys.executable, "-m", "airflow", *args],
            env=self.env, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=timeout,
        )  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(
                f"airflow {' '.join(args)} exited {done.returncode}:\n"
                f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
            )
        return done

    def _worker_command(self, name: str) -> list[str]:
        return [
            sys.executable, "-m", "airflow", "celery", "worker",
            "--concurrency", str(self.worker_concurrency), "--celery-hostname", name,
            "--without-mingle", "--without-gossip", "--skip-serve-logs",
        ]  # fmt: skip

    def commands(self) -> dict[str, list[str]]:
        airflow = [sys.executable, "-m", "airflow"]
        host = socket.gethostname()
        return {
            "api-server": [*airflow, "api-server", "--host", "127.0.0.1", "--port", str(self.port)],
            "scheduler": [*airflow, "scheduler"],
            "dag-processor": [*airflow, "dag-processor"],
            # No log servers (--skip-serve-logs): they would listen on every interface, and the
            # api-server reads the task and trigger logs from the shared home anyway.
            "triggerer": [*airflow, "triggerer", "--skip-serve-logs"],
            "celery-worker": self._worker_command(self.worker_name),
            # More Celery workers (as `docker compose up --scale airflow-worker=N` starts),
            # each its own process with its own name, consuming the same queue.
            **{
                f"celery-worker-{i}": self._worker_command(f"stack-{os.getpid()}-{i}@{host}")
                for i in range(2, self.workers + 1)
            },
        }  # fmt: skip

    def log_path(self, service: str) -> Path:
        return self.home / f"{service}.log"

    def start(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        (self.home / "env.json").write_text(
            json.dumps({k: v for k, v in self.env.items() if k.startswith("AIRFLOW")}, indent=1)
        )
        self.airflow("db", "migrate")
        for service, command in self.commands().items():
            with self.log_path(service).open("w") as log:
                self.processes[service] = subprocess.Popen(
                    command, env=self.env, cwd=PROJECT_ROOT, stdout=log, stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL, start_new_session=True,
                )  # fmt: skip
        wait_for(
            lambda: self._session.get(f"{self.url}/api/v2/monitor/health", timeout=5).ok,
            180, "the api-server's health endpoint", alive=self.check_alive,
        )  # fmt: skip

    def restart(self, service: str, sig: int = signal.SIGKILL) -> None:
        """End a service and every process it started (SIGKILL: as a crashed host would), then
        start it again with the same command; its log continues in the same file."""
        process = self.processes[service]
        try:
            os.killpg(process.pid, sig)  # started in its own session: its group id is its pid
        except ProcessLookupError:
            pass
        process.wait(timeout=30)
        wait_for(lambda: not _group_alive(process.pid), 30, f"{service}'s processes to end")
        with self.log_path(service).open("a") as log:
            log.write(f"\n===== restarted after signal {sig} =====\n")
            log.flush()
            self.processes[service] = subprocess.Popen(
                self.commands()[service], env=self.env, cwd=PROJECT_ROOT, stdout=log,
                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
            )  # fmt: skip

    def check_alive(self) -> None:
        """Raise (with the log's tail) if a service has exited."""
        for service, process in self.processes.items():
            if process.poll() is not None:
                raise ProcessDied(
                    f"airflow {service} exited with {process.returncode}:\n{self.log_tail(service)}"
                )

    def log_tail(self, service: str, lines: int = 60) -> str:
        path = self.log_path(service)
        if not path.exists():
            return "(no log)"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def log_tails(self, lines: int = 40) -> str:
        return "\n\n".join(
            f"===== {service} ({self.log_path(service)}) =====\n{self.log_tail(service, lines)}"
            for service in self.processes
        )

    def stop(self, timeout: float = 30) -> list[str]:
        """End every service and its children (their process groups); return what needed a kill."""
        groups = {}
        for service, process in self.processes.items():
            try:
                groups[service] = os.getpgid(process.pid)
                os.killpg(groups[service], signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + timeout
        killed = []
        for service, pgid in groups.items():
            while _group_alive(pgid) and time.monotonic() < deadline:
                self.processes[service].poll()  # reap the leader
                time.sleep(0.2)
            if _group_alive(pgid):
                killed.append(service)
                try:
                    os.killpg(pgid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        for process in self.processes.values():
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        self._session.close()
        return killed

    def all_stopped(self) -> bool:
        return all(
            process.poll() is not None and not _group_alive(process.pid)
            for process in self.processes.values()
        )

    # the REST API, as the UI and a user's scripts call it

    @property
    def token(self) -> str:
        """A JWT from the simple auth manager (all users are admins in this stack)."""
        if self._token is None:
            answer = self._session.get(f"{self.url}/auth/token", timeout=30)
            answer.raise_for_status()
            self._token = answer.json()["access_token"]
        return self._token

    def api(self, method: str, path: str, *, ok: tuple[int, ...] = (200,), **kwargs) -> Any:
        answer = self._session.request(
            method, f"{self.url}/api/v2{path}", timeout=30,
            headers={"Authorization": f"Bearer {self.token}"}, **kwargs,
        )  # fmt: skip
        if answer.status_code not in ok:
            raise AssertionError(f"{method} {path} answered {answer.status_code}: {answer.text}")
        return answer.json() if answer.content else None

    def task_states(self, dag_id: str, run_id: str) -> dict[str, str | None]:
        tis = self.api("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances")["task_instances"]
        return {ti["task_id"]: ti["state"] for ti in tis}

    def wait_for_run(self, dag_id: str, run_id: str, timeout: float = 600) -> dict:
        """Wait until the run has finished; return it (its ``state`` says how)."""

        def finished():
            run = self.api("GET", f"/dags/{dag_id}/dagRuns/{run_id}")
            return run if run["state"] in ("success", "failed") else None

        return wait_for(finished, timeout, f"run {run_id}", interval=2, alive=self.check_alive)

    def wait_for_dag(self, dag_id: str, timeout: float = 300) -> dict:
        """Wait until the dag-processor has parsed the DAG and the API serves it."""

        def parsed():
            answer = self._session.get(
                f"{self.url}/api/v2/dags/{dag_id}",
                headers={"Authorization": f"Bearer {self.token}"},
                timeout=30,
            )
            return answer.json() if answer.status_code == 200 else None

        return wait_for(parsed, timeout, f"DAG {dag_id} parsed", interval=2, alive=self.check_alive)

    def trigger_holder(self, trigger_id: int) -> dict | None:
        """The job that runs a trigger (the metadata database's ``trigger.triggerer_id``)."""
        conn = _pg_connect(self.database)
        try:
            with conn.cursor() as cursor:
                cursor.execute(
                    "SELECT job.id, job.job_type, job.state, job.hostname FROM trigger "
                    "JOIN job ON job.id = trigger.triggerer_id WHERE trigger.id = %s",
                    (trigger_id,),
                )
                row = cursor.fetchone()
        finally:
            conn.close()
        return dict(zip(("id", "job_type", "state", "hostname"), row, strict=True)) if row else None

    # the Celery side, asked over the broker as `celery inspect` does

    def celery_active(self, timeout: float = 2.0) -> dict[str, list[dict]]:
        """The tasks each Celery worker is executing right now ({worker: [task, ...]})."""
        from celery import Celery

        app = Celery(broker=self.broker_url)
        try:
            answer = app.control.inspect(timeout=timeout, destination=[self.worker_name]).active()
        finally:
            app.close()
        if not answer or self.worker_name not in answer:
            raise AssertionError(f"the Celery worker {self.worker_name} did not answer: {answer}")
        return answer


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # Zombies of a reaped group still count as alive for killpg; look for live members.
    try:
        out = subprocess.run(
            ["ps", "-e", "-o", "pgid=,stat="], capture_output=True, text=True, timeout=10
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return True
    members = [line.split() for line in out.splitlines()]
    return any(m[0] == str(pgid) and not m[1].startswith("Z") for m in members if len(m) == 2)
