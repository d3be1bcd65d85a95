"""A private PostgreSQL server for tests: ``initdb`` + ``pg_ctl`` in a temporary directory.

The server listens on a unix socket in its own directory only (``listen_addresses = ''``): no
TCP port, so no port race with anything else on the machine. DSN: ``host=<dir> port=5432
dbname=... user=postgres`` (trust authentication). Binaries come from PATH or
``/usr/lib/postgresql/*/bin`` (the newest version); ``make test`` installs them
(``scripts/bootstrap.sh --test``). initdb refuses to run as root: as root, the server runs as
the ``postgres`` system user (``runuser``), in a directory owned by it.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import pwd
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

SUPERUSER = "postgres"
PORT = 5432  # the socket file's name (.s.PGSQL.5432); no TCP listener
MISSING = (
    "PostgreSQL server binaries (initdb, pg_ctl) were not found on PATH or in "
    "/usr/lib/postgresql/*/bin: `make test` installs them (scripts/bootstrap.sh --test "
    "installs the `postgresql` package), or install it yourself (apt-get install postgresql)"
)


def find_bindir(
    search_path: str | None = None, roots: tuple[Path, ...] = (Path("/usr/lib/postgresql"),)
) -> Path:
    """The directory holding ``initdb``, ``pg_ctl`` and ``postgres`` (on ``search_path``,
    default PATH, else the newest ``<root>/<version>/bin``); AssertionError naming how to
    install them when there is none."""
    candidates = []
    on_path = shutil.which("initdb", path=search_path)
    if on_path:
        candidates.append(Path(on_path).resolve().parent)
    for root in roots:
        candidates += sorted(
            root.glob("*/bin"),
            key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
            reverse=True,
        )
    for bindir in candidates:
        if all((bindir / tool).is_file() for tool in ("initdb", "pg_ctl", "postgres")):
            return bindir
    raise AssertionError(MISSING)


@dataclass
class PostgresServer:
    """One server; :meth:`start` then :meth:`create_database` per test, :meth:`stop` at the end."""

    bindir: Path
    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="infusiond-pg-")))
    _names: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    @property
    def datadir(self) -> Path:
        return self.root / "data"

    @property
    def socket_dir(self) -> Path:
        return self.root

    def dsn(self, dbname: str = "postgres") -> str:
        return f"host={self.socket_dir} port={PORT} dbname={dbname} user={SUPERUSER}"

    def _as_owner(self, argv: list[str]) -> list[str]:
        if os.geteuid() != 0:
            return argv
        return ["runuser", "-u", SUPERUSER, "--", *argv]

    def _run(self, argv: list[str]) -> None:
        done = subprocess.run(  # noqa: PLW1510 - the return code is checked below
            self._as_owner(argv), capture_output=True, text=True, timeout=120
        )
        if done.returncode != 0:
            raise RuntimeError(f"{argv[0]} failed ({done.returncode}):\n{done.stdout}{done.stderr}")

    def start(self) -> None:
        if os.geteuid() == 0:
            try:
                owner = pwd.getpwnam(SUPERUSER)
            except KeyError:
                raise AssertionError(
                    "running as root, PostgreSQL needs the `postgres` system user to run as "
                    "(the postgresql package creates it)"
                ) from None
            os.chown(self.root, owner.pw_uid, owner.pw_gid)
        self._run(
            [
                str(self.bindir / "initdb"),
                "-D",
                str(self.datadir),
                "-U",
                SUPERUSER,
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",
            ]
        )
        self.start_server()

    def start_server(self) -> None:
        """``pg_ctl start`` on the existing data directory (after :meth:`stop_server`)."""
        options = (
            f"-c listen_addresses='' -c unix_socket_directories='{self.socket_dir}' "
            f"-p {PORT} -c fsync=off -c synchronous_commit=off -c full_page_writes=off "
            "-c max_connections=100"
        )
        self._run(
            [
                str(self.bindir / "pg_ctl"),
                "-D",
                str(self.datadir),
                "-o",
                options,
                "-l",
                str(self.root / "server.log"),
                "-w",
                "-t",
                "60",
                "start",
            ]
        )

    def stop_server(self) -> None:
        """``pg_ctl stop -m fast``: connections are closed, the data stays (an outage)."""
        self._run(
            [str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "-m", "fast", "-w", "stop"]
        )

    def create_database(self) -> str:
        """A new empty database (from ``template0``); returns its DSN."""
        name = f"t{os.getpid()}_{next(self._names)}"
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}" TEMPLATE template0')
        return self.dsn(name)

    def drop_database(self, dsn: str) -> None:
        """Drop a database made by :meth:`create_database` (closing its leftover sessions)."""
        name = psycopg.conninfo.conninfo_to_dict(dsn)["dbname"]
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def log(self) -> str:
        with contextlib.suppress(OSError):
            return (self.root / "server.log").read_text(errors="replace")
        return ""

    def stop(self) -> None:
        if (self.datadir / "postmaster.pid").exists():
            self._run(
                [
                    str(self.bindir / "pg_ctl"),
                    "-D",
                    str(self.datadir),
                    "-m",
                    "immediate",
                    "-w",
                    "stop",
                ]
            )
        shutil.rmtree(self.root, ignore_errors=True)
