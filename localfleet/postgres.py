"""A private PostgreSQL server for a local Airflow: Debian's postgresql binaries, our own data
directory, loopback TCP only, password authentication.

PostgreSQL refuses to run as root, so as root the server runs as the `postgres` user the Debian
package creates, with its data directory in /tmp (root's own folders are closed to it).
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import os
import secrets
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from localfleet import procs

PROC = "postgres"
USER = "airflow"
DATABASE = "airflow"


class PostgresError(RuntimeError):
    """PostgreSQL is missing or would not start; the message says what to do."""


def bin_dir() -> Path:
    """The newest installed server's bin folder (Debian keeps them per major version)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"), key=lambda p: int(Path(p).parts[-3]))
    if not found:
        raise PostgresError("PostgreSQL is not installed: run `make system-packages` (Debian package postgresql)")
    return Path(found[-1]).parent


@dataclass(frozen=True)
class Postgres:
    state: Path  # pids, logs and the password live here
    port: int

    @property
    def data_dir(self) -> Path:
        if os.geteuid() != 0:
            return self.state / "pgdata"
        key = hashlib.sha256(str(self.state.resolve()).encode()).hexdigest()[:12]
        return Path("/tmp") / f"fanout-pgdata-{key}"

    @property
    def password_file(self) -> Path:
        return self.state / "postgres-password"

    def password(self) -> str:
        if not self.password_file.exists():
            self.state.mkdir(parents=True, exist_ok=True)
            self.password_file.touch(mode=0o600)
            self.password_file.write_text(secrets.token_urlsafe(24))
        return self.password_file.read_text().strip()

    def url(self, driver: str = "psycopg2") -> str:
        return f"postgresql+{driver}://{USER}:{self.password()}@127.0.0.1:{self.port}/{DATABASE}"

    @property
    def server_user(self) -> str | None:
        return "postgres" if os.geteuid() == 0 else None

    def _initdb(self) -> None:
        if (self.data_dir / "PG_VERSION").exists():
            return
        shutil.rmtree(self.data_dir, ignore_errors=True)  # a half-made one from an interrupted run
        self.data_dir.mkdir(parents=True, mode=0o700)
        pwfile = self.data_dir.parent / f"{self.data_dir.name}.pw"
        pwfile.write_text(self.password() + "\n")
        if os.geteuid() == 0:
            shutil.chown(self.data_dir, "postgres", "postgres")
            shutil.chown(pwfile, "postgres", "postgres")
        argv = [str(bin_dir() / "initdb"), "-D", str(self.data_dir), "-U", USER, "--auth=scram-sha-256",
                f"--pwfile={pwfile}", "--encoding=UTF8", "--no-instructions"]  # fmt: skip
        try:
            done = subprocess.run(
                argv,
                capture_output=True,
                text=True,
                timeout=120,
                user=self.server_user,
                group=self.server_user,
                cwd="/",
            )
        finally:
            pwfile.unlink(missing_ok=True)
        if done.returncode != 0:
            shutil.rmtree(self.data_dir, ignore_errors=True)
            raise PostgresError(f"initdb failed: {done.stderr.strip() or done.stdout.strip()}")

    def up(self) -> None:
        """Create the cluster and the airflow database once; start the server if it is not running."""
        self._initdb()
        argv = [str(bin_dir() / "postgres"), "-D", str(self.data_dir), "-p", str(self.port),
                "-c", "listen_addresses=127.0.0.1", "-c", "unix_socket_directories=",
                "-c", "max_connections=200", "-c", "fsync=off"]  # fmt: skip
        # fsync off: a throwaway database for a local Airflow; losing it on a power cut costs nothing.
        procs.start(PROC, argv, self.state, ready=self._accepts, timeout=60, user=self.server_user, cwd="/")
        self._create_database()

    def _connect(self, database: str):
        import psycopg2

        return psycopg2.connect(
            host="127.0.0.1", port=self.port, user=USER, password=self.password(), dbname=database, connect_timeout=3
        )

    def _accepts(self) -> bool:
        try:
            self._connect("postgres").close()
            return True
        except Exception:  # psycopg2.OperationalError while it starts up
            return False

    def _create_database(self) -> None:
        conn = self._connect("postgres")
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE,))
                if cur.fetchone() is None:
                    cur.execute(f"CREATE DATABASE {DATABASE}")
        finally:
            conn.close()

    def running(self) -> bool:
        return procs.alive(PROC, self.state)

    def down(self, remove: bool = False) -> None:
        """Stop the server (fast shutdown: SIGTERM alone would wait for every client to leave);
        `remove` also deletes its data."""
        found = procs.pid(PROC, self.state)
        if found is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(found, signal.SIGINT)
        procs.stop(PROC, self.state, timeout=20)
        if remove:
            deadline = time.monotonic() + 5
            while (self.data_dir / "postmaster.pid").exists() and time.monotonic() < deadline:
                time.sleep(0.1)
            shutil.rmtree(self.data_dir, ignore_errors=True)
            self.password_file.unlink(missing_ok=True)
