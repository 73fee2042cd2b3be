"""A throwaway three-master Redis Cluster on loopback (no replicas), made with
`redis-server --cluster-enabled yes` and `redis-cli --cluster create`."""

from __future__ import annotations

import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis

from email_ingestion.sandbox.dovecot import free_port
from email_ingestion.sandbox.redis_server import RedisServer
from email_ingestion.sandbox.tls_ca import TopologyTls


@dataclass
class RedisClusterSandbox:
    root: Path
    masters: int = 3
    tls: TopologyTls | None = None  # nodes keep their plain port for set-up; clients and the bus use TLS
    nodes: list[RedisServer] = field(default_factory=list)
    tls_ports: list[int] = field(default_factory=list)

    def start(self, timeout_s: float = 60) -> RedisClusterSandbox:
        try:
            return self._start(timeout_s)
        except BaseException:
            self.stop()
            raise

    def _start(self, timeout_s: float) -> RedisClusterSandbox:
        self.root = Path(self.root)
        self.tls_ports = [free_port() for _ in range(self.masters)] if self.tls else []
        self.nodes = [RedisServer(self.root / f"node{i}", extra_args=(
            "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf", "--cluster-node-timeout", "2000",
            # The bus defaults to port + 10000, which free ports above 55535 cannot have.
            "--cluster-port", str(free_port()), *self._tls_args(i),
        )).start() for i in range(self.masters)]
        cli = shutil.which("redis-cli")
        if not cli:
            raise RuntimeError("redis-cli is not installed (apt-get install redis-tools)")
        subprocess.run([cli, "--cluster", "create", *[f"127.0.0.1:{n.port}" for n in self.nodes], "--cluster-yes"],
                       check=True, capture_output=True, timeout=timeout_s)
        deadline = time.monotonic() + timeout_s
        while not all(self._node_ok(n) for n in self.nodes):
            if time.monotonic() > deadline:
                raise RuntimeError(f"the cluster did not reach cluster_state:ok within {timeout_s:g}s")
            time.sleep(0.1)
        return self

    def _tls_args(self, index: int) -> tuple[str, ...]:
        if self.tls is None:
            return ()
        return (*self.tls.server_args(self.tls_ports[index]), "--tls-cluster", "yes")

    @property
    def url(self) -> str:
        """REDIS_URL naming one node (with REDIS_CLUSTER=true the client finds the rest)."""
        if self.tls_ports:
            return f"rediss://127.0.0.1:{self.tls_ports[0]}/0"
        return self.nodes[0].url

    def client(self) -> redis.cluster.RedisCluster:
        return redis.cluster.RedisCluster(host="127.0.0.1", port=self.nodes[0].port)

    @staticmethod
    def _node_ok(node: RedisServer) -> bool:
        try:
            info = node.client().execute_command("CLUSTER INFO")  # type: ignore[no-untyped-call]
        except redis.RedisError:
            return False
        text = info.decode() if isinstance(info, bytes) else str(info)
        return "cluster_state:ok" in text or "'cluster_state': 'ok'" in text

    def flush(self) -> None:
        for node in self.nodes:
            node.client().flushall()

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
