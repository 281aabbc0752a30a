"""A private PostgreSQL server for a local Airflow: Debian's postgresql binaries, our own data
directory, loopback TCP only, password authentication.

PostgreSQL refuses to run as root, so as root the server runs as the `postgres` user the Debian
package creates, with its data directory in a private folder from mkdtemp in /tmp (root's own
folders are closed to it). Secret files are created exclusively, 0600, never through a link.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import secrets
import shutil
import signal
import stat
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from localfleet import procs

PROC = "postgres"
USER = "airflow"
DATABASE = "airflow"


class PostgresError(RuntimeError):
    """PostgreSQL is missing or would not start; the message says what to do."""


def _write_private(path: Path, text: str, owner: str | None = None) -> None:
    """A new 0600 file: refused if anything (a planted link included) is already at `path`."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as f:
        if owner:
            os.fchown(f.fileno(), pwd.getpwnam(owner).pw_uid, pwd.getpwnam(owner).pw_gid)
        f.write(text)


def _read_private(path: Path) -> str:
    with os.fdopen(os.open(path, os.O_RDONLY | os.O_NOFOLLOW)) as f:
        return f.read()


def _chown_to(path: Path, user: str | None) -> None:
    if user:
        os.chown(path, pwd.getpwnam(user).pw_uid, pwd.getpwnam(user).pw_gid, follow_symlinks=False)


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
        """Under `state`, or as root a private folder from mkdtemp in /tmp (root's own folders are
        closed to the postgres user), remembered in `state` so the next start finds it."""
        if os.geteuid() != 0:
            return self.state / "pgdata"
        return self._recorded_data_dir() or self._new_data_dir()

    @property
    def _data_dir_record(self) -> Path:
        return self.state / "pgdata-dir"

    def _recorded_data_dir(self) -> Path | None:
        if not self._data_dir_record.exists():
            return None
        path = Path(_read_private(self._data_dir_record))
        try:
            info = os.lstat(path)
        except FileNotFoundError:
            return None  # /tmp was cleaned: start afresh
        owner = pwd.getpwnam(self.server_user or "root").pw_uid
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != owner or info.st_mode & 0o077:
            raise PostgresError(f"{path} is not a private folder of {self.server_user}; remove it and start again")
        return path

    def _new_data_dir(self) -> Path:
        path = Path(tempfile.mkdtemp(prefix="fanout-pgdata-"))  # 0700, a name nobody could plant beforehand
        _chown_to(path, self.server_user)
        self.state.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._data_dir_record.unlink(missing_ok=True)
        _write_private(self._data_dir_record, str(path))
        return path

    @property
    def password_file(self) -> Path:
        return self.state / "postgres-password"

    def password(self) -> str:
        if not self.password_file.exists():
            self.state.mkdir(parents=True, exist_ok=True, mode=0o700)
            _write_private(self.password_file, secrets.token_urlsafe(24))
        return _read_private(self.password_file).strip()

    def url(self, driver: str = "psycopg2") -> str:
        return f"postgresql+{driver}://{USER}:{self.password()}@127.0.0.1:{self.port}/{DATABASE}"

    @property
    def server_user(self) -> str | None:
        return "postgres" if os.geteuid() == 0 else None

    def _initdb(self) -> None:
        data_dir = self.data_dir
        if (data_dir / "PG_VERSION").exists():
            return
        if data_dir.exists() and any(data_dir.iterdir()):  # a half-made one from an interrupted run
            shutil.rmtree(data_dir)
            data_dir = self.data_dir
        data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        # initdb reads the password from a file: one in a private folder, created exclusively, never
        # through a link, handed to the server user by descriptor.
        pwdir = Path(tempfile.mkdtemp(prefix="fanout-pgpw-"))
        pwfile = pwdir / "pw"
        _chown_to(pwdir, self.server_user)
        _write_private(pwfile, self.password() + "\n", self.server_user)
        argv = [str(bin_dir() / "initdb"), "-D", str(data_dir), "-U", USER, "--auth=scram-sha-256",
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
            shutil.rmtree(pwdir, ignore_errors=True)
        if done.returncode != 0:
            shutil.rmtree(data_dir, ignore_errors=True)
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
            data_dir = self.state / "pgdata" if os.geteuid() != 0 else self._recorded_data_dir()
            deadline = time.monotonic() + 5
            while data_dir and (data_dir / "postmaster.pid").exists() and time.monotonic() < deadline:
                time.sleep(0.1)
            if data_dir:
                shutil.rmtree(data_dir, ignore_errors=True)
            self.password_file.unlink(missing_ok=True)
            self._data_dir_record.unlink(missing_ok=True)
