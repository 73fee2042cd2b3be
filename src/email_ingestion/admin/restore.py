"""Restore a Redis backup made by `email-ingest backup`.

    email-ingest restore FILE [--dry-run]          # validate, print the manual steps
    email-ingest restore FILE --force [--flush]    # restore into the running server
    email-ingest restore --file FILE ...           # the same; FILE may be .rdb or .rdb.gz

Redis is found exactly as the services find it (environment, `.env`, `--env-file`, then
`--redis-url`).

The file is validated first: RDB magic bytes, the SHA-256 written beside it, and
`redis-check-rdb` when installed. By default nothing is changed: the manual procedure for
this server is printed. `--force` loads the backup into a temporary redis-server on a free
loopback port and MIGRATEs every key into the running server (COPY REPLACE: streams keep
their consumer groups and pending lists, keys keep their TTLs), so Redis need not restart
and its AOF records the restore. `--flush` empties the target first (disaster recovery);
without it, keys not in the backup are left alone. Needs redis-server on this host.
"""

from __future__ import annotations

import argparse
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import redis

from email_ingestion.admin.backup import BackupError, check_rdb, plain_rdb, redis_settings, sha256_of
from email_ingestion.common.errors import SettingsError
from email_ingestion.common.redis_client import make_redis
from email_ingestion.common.settings import RedisSettings


class RestoreError(Exception):
    """The file is not a valid backup, or the server could not be restored."""


def validate(path: Path) -> list[str]:
    """Checks that passed, or RestoreError for the first that failed."""
    passed = []
    checksum_file = path.with_name(path.name + ".sha256")
    if checksum_file.exists():
        expected = checksum_file.read_text().split()[0]
        if sha256_of(path) != expected:
            raise RestoreError(f"{path} does not match {checksum_file.name}: corrupted or altered")
        passed.append("SHA-256 matches")
    try:
        with plain_rdb(path) as plain:
            passed += check_rdb(plain)
    except (BackupError, OSError, EOFError) as exc:  # gzip errors are OSErrors
        raise RestoreError(str(exc)) from None
    return passed[::-1]


def server_paths(client: redis.Redis) -> dict[str, str]:
    config: dict[str, str] = {}
    for key in ("dir", "dbfilename", "appendonly", "appenddirname"):
        config.update({str(k): str(v) for k, v in client.config_get(key).items()})
    return config


def manual_steps(path: Path, config: dict[str, str]) -> str:
    target = Path(config["dir"]) / config["dbfilename"]
    aof = Path(config["dir"]) / config.get("appenddirname", "appendonlydir")
    copy = f"gunzip -c {path} > {target}" if path.name.endswith(".gz") else f"cp {path} {target}"
    return "\n".join([
        "Manual restore (nothing was changed). Simplest: run again with --force (online, no restart). By hand:",
        "  1. Stop the producer and the workers (scripts/stop.sh), then Redis: systemctl stop redis-server",
        f"  2. Move the AOF aside, or Redis loads it instead of the RDB: mv {aof} {aof}.pre-restore",
        f"  3. Copy the backup into place: {copy} && chown redis:redis {target}",
        "  4. Start Redis with AOF off so it loads the RDB (Redis 7 with appendonly yes and no AOF starts EMPTY):",
        "     set appendonly no in redis.conf, systemctl start redis-server",
        "  5. redis-cli CONFIG SET appendonly yes (rewrites the AOF from memory), set appendonly yes in redis.conf again",
        "  6. Check: redis-cli XLEN email_ingestion_stream; python -m email_ingestion.worker.dlq_admin stats; start the services",
    ])


def force_restore(settings: RedisSettings, path: Path, flush: bool, timeout_s: float) -> int:
    """Load `path` into a temporary server and MIGRATE every key into the configured server."""
    target = make_redis(settings)
    options = target.connection_pool.connection_kwargs
    with tempfile.TemporaryDirectory(prefix="redis-restore-") as work, plain_rdb(path) as plain:
        shutil.copy2(plain, Path(work) / "restore.rdb")
        port = _free_port()
        temp = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", work,
                                 "--dbfilename", "restore.rdb", "--appendonly", "no", "--save", ""],
                                stdout=subprocess.DEVNULL)
        try:
            source = redis.Redis(port=port)
            _wait_loaded(source, temp, timeout_s)
            if flush:
                target.flushall()
            return _migrate_all(source, options, timeout_s)
        finally:
            temp.terminate()
            temp.wait(10)


def _migrate_all(source: redis.Redis, options: dict[str, Any], timeout_s: float) -> int:
    auth = ["AUTH2", options["username"], options["password"]] if options.get("username") else \
        (["AUTH", options["password"]] if options.get("password") else [])
    moved = 0
    batch: list[bytes] = []
    for key in [*source.scan_iter(count=1000), None]:
        if key is not None:
            batch.append(key)
        if batch and (key is None or len(batch) >= 100):
            source.execute_command(  # type: ignore[no-untyped-call]
                "MIGRATE", options.get("host", "127.0.0.1"), options.get("port", 6379), "", options.get("db", 0),
                int(timeout_s * 1000), "COPY", "REPLACE", *auth, "KEYS", *batch)
            moved += len(batch)
            batch = []
    return moved


def _wait_loaded(source: redis.Redis, proc: subprocess.Popen[bytes], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RestoreError("the temporary redis-server could not load the backup")
        try:
            if source.ping() and not source.info("persistence").get("loading"):
                return
        except (redis.ConnectionError, redis.BusyLoadingError):
            pass
        time.sleep(0.05)
    raise RestoreError(f"the backup did not load within {timeout_s}s")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="email-ingest restore", description=__doc__.split("\n\n")[0])
    parser.add_argument("file", type=Path, nargs="?", help="the backup (.rdb or .rdb.gz)")
    parser.add_argument("--file", type=Path, dest="file_option", metavar="FILE", help="the backup, as an option")
    parser.add_argument("--env-file", default=".env", help="settings file, as the services read it (default: .env, searched)")
    parser.add_argument("--redis-url", help="REDIS_URL (default: from the settings)")
    parser.add_argument("--dry-run", action="store_true", help="validate only")
    parser.add_argument("--force", action="store_true", help="restore into the running server now")
    parser.add_argument("--flush", action="store_true", help="with --force: empty the target first")
    parser.add_argument("--timeout", type=float, default=120)
    args = parser.parse_args(argv)
    if (args.file is None) == (args.file_option is None):
        parser.error("name the backup once: FILE or --file FILE")
    args.file = args.file or args.file_option
    try:
        settings = redis_settings(args.env_file, args.redis_url)
    except SettingsError as exc:
        print(f"restore: {exc}", file=sys.stderr)
        return 2
    try:
        for check in validate(args.file):
            print(f"ok: {check}")
        if args.dry_run:
            return 0
        if not args.force:
            print(manual_steps(args.file, server_paths(make_redis(settings))))
            return 0
        moved = force_restore(settings, args.file, args.flush, args.timeout)
    except (RestoreError, redis.RedisError, OSError, subprocess.CalledProcessError) as exc:
        print(f"restore: {exc}", file=sys.stderr)
        return 1
    print(f"restored {moved} keys from {args.file}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
