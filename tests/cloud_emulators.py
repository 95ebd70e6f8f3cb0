"""Real emulators for the gs:// and abfs:// tests, each a subprocess on a free port.

* ``GcsEmulator``: gcp-storage-emulator (PyPI), in memory. It serves the GCS JSON API that
  pyarrow's GcsFileSystem and google-cloud-storage speak, but it **ignores preconditions**
  (``ifGenerationMatch``): the registry must refuse it.
* ``Azurite``: Microsoft's Azure Storage emulator (npm, installed by the Makefile into
  ``.venv/node``), blob service only, data in a temporary folder. It honours ``If-Match``
  and ``If-None-Match``.

Both reach the library through the same settings a user writes (``GcsSettings`` /
``GcsResource``, ``AzureSettings`` / ``AzureResource``) or through the providers' standard
variables (``env()``).
"""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

#: Azurite's well-known development account (public, documented by Microsoft).
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)
AZURITE_BIN = Path(sys.executable).parent.parent / "node" / "node_modules" / ".bin" / "azurite-blob"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(url: str, proc: subprocess.Popen[bytes], log: Path, what: str) -> None:
    deadline = time.time() + 60
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            urllib.request.urlopen(url, timeout=1)
            return
        except urllib.error.HTTPError:
            return  # it answers: up
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"{what} did not start on {url}: {log.read_text()[-2000:]}")


class _Process:
    proc: subprocess.Popen[bytes]
    _log: Any

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self._log.close()


class GcsEmulator(_Process):
    project = "trainresults-test"

    def __init__(self, root: Path) -> None:
        self.port = _free_port()
        self.endpoint_url = f"http://127.0.0.1:{self.port}"
        log = self._log_path = root / "gcs-emulator.log"
        self._log = open(log, "w")  # noqa: SIM115
        exe = Path(sys.executable).with_name("gcp-storage-emulator")
        self.proc = subprocess.Popen(
            [str(exe), "start", "--host=127.0.0.1", f"--port={self.port}", "--in-memory"],
            stdout=self._log, stderr=subprocess.STDOUT,
        )
        _wait(f"{self.endpoint_url}/storage/v1/b", self.proc, log, "gcp-storage-emulator")

    def request_count(self) -> int:
        """Requests the emulator has served so far (its access log, one line per request)."""
        text = self._log_path.read_text(errors="replace")
        return len(re.findall(r'"(?:GET|POST|PUT|PATCH|DELETE|HEAD) /', text))

    def settings(self) -> Any:
        from trainresults_dagster.storage import GcsSettings

        return GcsSettings(endpoint_url=self.endpoint_url, anonymous=True, project_id=self.project)

    def resource(self) -> Any:
        from trainresults_dagster.dagster.clouds import GcsResource

        return GcsResource(endpoint_url=self.endpoint_url, anonymous=True, project_id=self.project)

    def filesystem(self) -> Any:
        return self.settings().filesystem()

    def client(self) -> Any:
        return self.settings().client()

    def env(self) -> dict[str, str]:
        return {"STORAGE_EMULATOR_HOST": self.endpoint_url, "GOOGLE_CLOUD_PROJECT": self.project}

    def new_bucket(self, prefix: str = "b") -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:10]}".lower()
        self.client().create_bucket(name)
        return name

    def upload_dir(self, local: str, bucket: str, key: str) -> str:
        import trainresults_dagster.storage as storage

        storage.copy_tree(storage.resolve(local)[0], local, self.filesystem(), f"{bucket}/{key}")
        return f"gs://{bucket}/{key}"


class Azurite(_Process):
    account = AZURITE_ACCOUNT
    key = AZURITE_KEY

    def __init__(self, root: Path) -> None:
        if not AZURITE_BIN.exists():
            raise RuntimeError(f"azurite is not installed at {AZURITE_BIN}: run `make install`")
        self.port = _free_port()
        self.endpoint_url = f"http://127.0.0.1:{self.port}/{self.account}"
        data = root / "azurite-data"
        data.mkdir()
        log = root / "azurite.log"
        self._log = open(log, "w")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [str(AZURITE_BIN), "--blobHost", "127.0.0.1", "--blobPort", str(self.port),
             "--location", str(data), "--disableTelemetry", "--skipApiVersionCheck", "--loose"],
            stdout=self._log, stderr=subprocess.STDOUT,
        )
        _wait(f"http://127.0.0.1:{self.port}/", self.proc, log, "azurite")
        self._data = data

    def connection_string(self) -> str:
        return (f"DefaultEndpointsProtocol=http;AccountName={self.account};"
                f"AccountKey={self.key};BlobEndpoint={self.endpoint_url};")

    def settings(self, **overrides: Any) -> Any:
        from trainresults_dagster.storage import AzureSettings

        values = {"account_name": self.account, "account_key": self.key,
                  "endpoint_url": self.endpoint_url, **overrides}
        return AzureSettings(**values)

    def resource(self) -> Any:
        from trainresults_dagster.dagster.clouds import AzureResource

        return AzureResource(account_name=self.account, account_key=self.key,
                             endpoint_url=self.endpoint_url)

    def filesystem(self) -> Any:
        return self.settings().filesystem()

    def client(self) -> Any:
        return self.settings().client()

    def env(self) -> dict[str, str]:
        return {"AZURE_STORAGE_CONNECTION_STRING": self.connection_string()}

    def new_container(self, prefix: str = "c") -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:10]}".lower()
        self.client().create_container(name)
        return name

    def upload_dir(self, local: str, container: str, key: str) -> str:
        import trainresults_dagster.storage as storage

        storage.copy_tree(storage.resolve(local)[0], local, self.filesystem(), f"{container}/{key}")
        return f"abfs://{container}/{key}"

    def stop(self) -> None:
        super().stop()
        shutil.rmtree(self._data, ignore_errors=True)


def cloud_environment(gcs: GcsEmulator, azure: Azurite) -> dict[str, str]:
    """Both emulators through the providers' standard variables (for subprocesses)."""
    return {**gcs.env(), **azure.env()}



