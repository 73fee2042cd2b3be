"""A throwaway Sentinel topology on loopback: one master, one replica, three Sentinels.

Sentinels run as `redis-server CONF --sentinel` (what Debian's redis-sentinel package
runs too), with short timings so a failover takes seconds: the master is declared down
after `down_after_ms` and two of the three must agree (quorum 2).
"""

from __future__ import annotations

import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis

from email_ingestion.sandbox.dovecot import free_port
from email_ingestion.sandbox.redis_server import RedisServer
from email_ingestion.sandbox.tcp_proxy import TcpProxy
from email_ingestion.sandbox.tls_ca import TopologyTls

MASTER_NAME = "mymaster"


@dataclass
class SentinelProcess:
    root: Path
    master_port: int
    down_after_ms: int
    failover_timeout_ms: int
    tls: TopologyTls | None = None
    port: int = 0
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> SentinelProcess:
        self.port = self.port or free_port()
        self.root.mkdir(parents=True, exist_ok=True)
        conf = self.root / "sentinel.conf"
        listen = [f"port {self.port}"]
        if self.tls is not None:  # TLS only; Sentinels then reach the servers over TLS too
            options = self.tls.server_args(self.port)
            listen = ["port 0", *(f"{options[i].lstrip('-')} {options[i + 1]}" for i in range(0, len(options), 2))]
        conf.write_text("\n".join([
            *listen, "bind 127.0.0.1", f"dir {self.root}",
            f"sentinel monitor {MASTER_NAME} 127.0.0.1 {self.master_port} 2",
            f"sentinel down-after-milliseconds {MASTER_NAME} {self.down_after_ms}",
            f"sentinel failover-timeout {MASTER_NAME} {self.failover_timeout_ms}",
            f"sentinel parallel-syncs {MASTER_NAME} 1", ""]))
        binary = shutil.which("redis-server")
        if not binary:
            raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
        self.process = subprocess.Popen([binary, str(conf), "--sentinel"], stdout=open(self.root / "sentinel.log", "ab"),
                                        stderr=subprocess.STDOUT)
        return self

    def client(self) -> redis.Redis:
        tls = self.tls.client_kwargs() if self.tls else {}
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=2, **tls)

    def sees_everyone(self, sentinels: int, replicas: int) -> bool:
        try:
            master = self.client().sentinel_master(MASTER_NAME)
        except redis.RedisError:
            return False
        if not isinstance(master, dict):
            return False
        return (int(master.get("num-other-sentinels", 0)) >= sentinels - 1
                and int(master.get("num-slaves", 0)) >= replicas)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)


@dataclass
class SentinelTopology:
    """Master + replica + three Sentinels under `root`; `start()` returns once every
    Sentinel knows the others and the replica, and the replica is in sync."""

    root: Path
    down_after_ms: int = 1000
    replica_via_proxy: bool = False  # replicate through a TcpProxy that can freeze the link
    tls: TopologyTls | None = None  # servers keep their plain port for set-up; the rest is TLS
    tls_ports: dict[str, int] = field(default_factory=dict)
    proxy: TcpProxy | None = None
    master: RedisServer = field(init=False)
    replica: RedisServer = field(init=False)
    sentinels: list[SentinelProcess] = field(default_factory=list)

    def start(self, timeout_s: float = 60) -> SentinelTopology:
        try:
            return self._start(timeout_s)
        except BaseException:
            self.stop()
            raise

    def _start(self, timeout_s: float) -> SentinelTopology:
        self.root = Path(self.root)
        tls_args: dict[str, tuple[str, ...]] = {"master": (), "replica": ()}
        if self.tls is not None:
            self.tls_ports = {name: free_port() for name in tls_args}
            tls_args = {name: self.tls.server_args(port) for name, port in self.tls_ports.items()}
        # shutdown-timeout 0: on SIGTERM a master waits (10 s) for lagging replicas; not here.
        self.master = RedisServer(self.root / "master",
                                  extra_args=(*tls_args["master"], "--shutdown-timeout", "0")).start()
        upstream = master_address = self.tls_ports.get("master", self.master.port)
        if self.replica_via_proxy:
            self.proxy = TcpProxy(self.master.port).start()
            upstream = self.proxy.port
        self.replica = RedisServer(self.root / "replica", extra_args=(
            "--replicaof", "127.0.0.1", str(upstream), *tls_args["replica"])).start()
        # Sentinels "fix" a replica that replicates from another address than the master's
        # (+fix-slave-config) once failover-timeout has passed: keep the proxied one longer.
        failover_timeout_ms = 120_000 if self.replica_via_proxy else max(3 * self.down_after_ms, 3000)
        self.sentinels = [SentinelProcess(self.root / f"sentinel{i}", master_address, self.down_after_ms,
                                          failover_timeout_ms, self.tls).start() for i in range(3)]
        _until(lambda: self.replica_in_sync() and all(s.sees_everyone(3, 1) for s in self.sentinels), timeout_s,
               "the Sentinels did not all see the master, the replica and each other")
        return self

    @property
    def sentinel_setting(self) -> str:
        """The REDIS_SENTINELS value for this topology."""
        return ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)

    def replica_in_sync(self) -> bool:
        try:
            info = self.replica.client().info("replication")
        except redis.RedisError:
            return False
        return info.get("master_link_status") == "up"

    def freeze_replication(self) -> None:
        """Stop the replication stream silently (the link stays open): from now on the
        master acknowledges writes the replica never gets, as under a replication lag."""
        assert self.proxy is not None, "start with replica_via_proxy=True"
        self.proxy.freeze_existing()

    def kill_master(self) -> None:
        """SIGKILL the master: no shutdown save, no goodbye to the replica."""
        assert self.master.process is not None
        self.master.process.kill()
        self.master.process.wait(10)

    def master_ports(self) -> list[int | None]:
        """Where each Sentinel says the master is now (None: no answer)."""
        ports: list[int | None] = []
        for sentinel in self.sentinels:
            try:
                address = sentinel.client().sentinel_get_master_addr_by_name(MASTER_NAME)
            except redis.RedisError:
                address = None
            ports.append(int(address[1]) if isinstance(address, tuple | list) else None)
        return ports

    def wait_failover(self, timeout_s: float = 60) -> None:
        """Until every Sentinel names the promoted replica. One that still holds the old
        configuration when the old master comes back (empty) can turn the new master into
        its replica and wipe it, which no client setting can prevent."""
        replica_port = self.tls_ports.get("replica", self.replica.port)
        _until(lambda: set(self.master_ports()) == {replica_port} and _is_master(self.replica), timeout_s,
               "the Sentinels did not all promote the replica")

    def restart_old_master(self, timeout_s: float = 60) -> None:
        """Start the killed master again (empty) and wait until the Sentinels have made it
        a replica of the new one, which gives WAIT its replica again."""
        self.master.start()
        _until(lambda: _replica_linked(self.master), timeout_s, "the old master did not rejoin as a replica")

    def stop(self) -> None:
        for sentinel in self.sentinels:
            sentinel.stop()
        for server in (getattr(self, "replica", None), getattr(self, "master", None)):
            if server is not None:
                server.stop()
        if self.proxy is not None:
            self.proxy.stop()
            self.proxy = None


def _replica_linked(server: RedisServer) -> bool:
    try:
        info = server.client().info("replication")
    except redis.RedisError:
        return False
    return info.get("role") == "slave" and info.get("master_link_status") == "up"


def _is_master(server: RedisServer) -> bool:
    try:
        return server.client().info("replication").get("role") == "master"
    except redis.RedisError:
        return False


def _until(predicate: object, timeout_s: float, message: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if callable(predicate) and predicate():
            return
        time.sleep(0.1)
    raise RuntimeError(f"{message} within {timeout_s:g}s")
