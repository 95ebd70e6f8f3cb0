"""A throwaway PostgreSQL server for tests: Debian's ``postgresql`` binaries, ``initdb`` in a
temporary folder, started with ``pg_ctl`` on a free 127.0.0.1 port, trust authentication on
loopback only (no password is written anywhere), stopped and deleted afterwards.

``initdb`` refuses to run as root, so as root the server runs as the ``postgres`` system user
(the Debian package creates it) in a folder handed to that user.

    pg = PostgresServer.start()
    url = pg.create_database("e2e")   # postgresql+psycopg2://trd@127.0.0.1:<port>/e2e_<id>
    pg.stop()
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from pathlib import Path

SUPERUSER = "trd"


def _bindir() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"),
                   key=lambda p: int(p.split("/")[4]) if p.split("/")[4].isdigit() else 0)
    if found:
        return Path(found[-1]).parent
    which = shutil.which("pg_ctl")
    if which:
        return Path(which).parent
    raise RuntimeError(
        "expected PostgreSQL server binaries (pg_ctl, initdb) from Debian's 'postgresql' "
        "package, found none; run `make install` as root (it apt-get installs postgresql) or "
        "`apt-get install postgresql`"
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresServer:
    def __init__(self, root: Path, port: int, bindir: Path, user: str | None) -> None:
        self.root, self.port, self.bindir, self.user = root, port, bindir, user
        self.data = root / "data"
        self.log = root / "postgres.log"

    @classmethod
    def start(cls) -> PostgresServer:
        bindir = _bindir()
        user = None
        root = Path(tempfile.mkdtemp(prefix="trd-pg-"))  # not under pytest's 0700 tmp tree
        if os.geteuid() == 0:
            user = "postgres"
            try:
                owner = pwd.getpwnam(user)
            except KeyError as exc:
                raise RuntimeError(
                    "running as root, expected the 'postgres' system user (Debian's postgresql "
                    "package creates it) to run initdb as; install postgresql"
                ) from exc
            os.chown(root, owner.pw_uid, owner.pw_gid)
        server = cls(root, _free_port(), bindir, user)
        server._run("initdb", "-D", str(server.data), "-U", SUPERUSER, "--auth=trust",
                    "-E", "UTF8", "--no-sync", "--no-instructions")
        options = (f"-p {server.port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off "
                   "-c synchronous_commit=off -c full_page_writes=off")
        server._run("pg_ctl", "-D", str(server.data), "-l", str(server.log), "-w", "-t", "60",
                    "-o", options, "start")
        return server

    def _run(self, tool: str, *args: str) -> subprocess.CompletedProcess:
        env = {"PATH": os.environ.get("PATH", ""), "LC_ALL": "C.UTF-8", "LANG": "C.UTF-8"}
        proc = subprocess.run([str(self.bindir / tool), *args], capture_output=True, text=True,
                              user=self.user, env=env, cwd=self.root, timeout=120,
                              stdin=subprocess.DEVNULL)
        if proc.returncode != 0:
            log = self.log.read_text()[-2000:] if self.log.exists() else ""
            raise RuntimeError(f"{tool} {' '.join(args)} failed ({proc.returncode}):\n"
                               f"{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}\n{log}")
        return proc

    def url(self, database: str) -> str:
        # psycopg2 (what dagster-postgres installs); SQLAlchemy 2.1 defaults to psycopg 3.
        return f"postgresql+psycopg2://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def create_database(self, prefix: str = "test") -> str:
        name = f"{prefix}_{uuid.uuid4().hex[:8]}"
        self._run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", SUPERUSER, name)
        return self.url(name)

    def stop(self) -> None:
        try:
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
