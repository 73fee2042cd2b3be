#!/usr/bin/env python3
"""Back up Redis: BGSAVE, wait for it, copy the RDB with a SHA-256 and a metadata file.

    python scripts/backup.py [--redis-url URL] [--output-dir DIR] [--retention-days N]
    python scripts/backup.py --list [--output-dir DIR]

Run it on the Redis host, as a user that can read Redis's data directory, with an admin
REDIS_URL (CONFIG GET and BGSAVE are admin commands). When the RDB file cannot be reached
(remote Redis, CONFIG disabled, no permission) it says so and prints the fallback:
`redis-cli --rdb FILE`, which streams a snapshot over the network.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import redis
import redis.cluster

from email_ingestion.common.errors import SettingsError
from email_ingestion.common.redis_client import describe, make_redis
from email_ingestion.common.settings import load_settings

PREFIX = "redis-backup-"


class BackupError(Exception):
    """A backup could not be made; the message says why and what to do instead."""


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def bgsave_and_wait(client: redis.Redis, timeout_s: float) -> None:
    # Count saves (INFO rdb_saves, Redis 7) rather than compare LASTSAVE: it has one-second
    # resolution, so a save finishing in the same second as the last one would look unfinished.
    before = int(client.info("persistence").get("rdb_saves", 0))
    try:
        client.bgsave()
    except redis.ResponseError as exc:
        if "already in progress" not in str(exc):
            raise
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        info = client.info("persistence")
        if not info["rdb_bgsave_in_progress"] and int(info.get("rdb_saves", 0)) > before:
            if info["rdb_last_bgsave_status"] != "ok":
                raise BackupError("BGSAVE failed: see the Redis log (disk full? permissions?)")
            return
        time.sleep(0.1)
    raise BackupError(f"BGSAVE did not finish within {timeout_s}s")


def rdb_path(client: redis.Redis, url: str) -> Path:
    try:
        config = client.config_get("dir")
        config.update(client.config_get("dbfilename"))
    except redis.ResponseError as exc:
        raise BackupError(f"cannot ask Redis where its RDB file is ({exc}): CONFIG is disabled or not "
                          f"allowed for this user. Fallback: redis-cli -u '{url}' --rdb backup.rdb") from None
    path = Path(config["dir"]) / config["dbfilename"]
    if not os.access(path, os.R_OK):
        raise BackupError(f"cannot read {path}: Redis runs on another host, or this user may not read its "
                          f"data directory. Fallback: redis-cli -u '{url}' --rdb backup.rdb")
    return path


def backup(client: redis.Redis, url: str, output_dir: Path, timeout_s: float = 300) -> Path:
    bgsave_and_wait(client, timeout_s)
    source = rdb_path(client, url)
    output_dir.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    target = output_dir / f"{PREFIX}{stamp}.rdb"
    shutil.copy2(source, target)
    checksum = sha256_of(target)
    (target.with_suffix(".rdb.sha256")).write_text(f"{checksum}  {target.name}\n")
    server = client.info("server")
    meta = {"file": target.name, "sha256": checksum, "bytes": target.stat().st_size, "created_at": stamp,
            "source": str(source), "redis_version": server.get("redis_version"), "keys": client.dbsize()}
    (target.with_suffix(".json")).write_text(json.dumps(meta, indent=2) + "\n")
    return target


def prune(output_dir: Path, retention_days: float, now: float | None = None) -> list[Path]:
    cutoff = (now or time.time()) - retention_days * 86400
    removed = []
    for rdb in sorted(output_dir.glob(f"{PREFIX}*.rdb")):
        if rdb.stat().st_mtime < cutoff:
            for companion in (rdb, rdb.with_suffix(".rdb.sha256"), rdb.with_suffix(".json")):
                companion.unlink(missing_ok=True)
            removed.append(rdb)
    return removed


def list_backups(output_dir: Path) -> list[dict[str, object]]:
    rows = []
    for rdb in sorted(output_dir.glob(f"{PREFIX}*.rdb")):
        meta_path = rdb.with_suffix(".json")
        meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
        rows.append({"file": str(rdb), "bytes": rdb.stat().st_size, "created_at": meta.get("created_at"),
                     "checksum_ok": meta.get("sha256") == sha256_of(rdb), "keys": meta.get("keys")})
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--redis-url", help="REDIS_URL; without it the REDIS_* settings (Sentinel, Cluster too)")
    parser.add_argument("--env-file", default=".env")
    parser.add_argument("--output-dir", type=Path, default=Path("backups"))
    parser.add_argument("--retention-days", type=float, default=14)
    parser.add_argument("--timeout", type=float, default=300, help="seconds to wait for BGSAVE")
    parser.add_argument("--list", action="store_true", help="list backups and verify their checksums")
    args = parser.parse_args()
    if args.list:
        for row in list_backups(args.output_dir):
            print(json.dumps(row))
        return 0
    try:
        settings = load_settings({"redis": {"url": args.redis_url}}, env_file=args.env_file).redis
    except SettingsError as exc:
        print(f"backup: {exc}", file=sys.stderr)
        return 2
    try:
        for client, url, output_dir in _servers(make_redis(settings), args.redis_url or describe(settings),
                                                args.output_dir):
            target = backup(client, url, output_dir, args.timeout)
            removed = prune(output_dir, args.retention_days)
            print(f"backup written: {target} (sha256 in {target.name}.sha256); pruned {len(removed)} older than "
                  f"{args.retention_days:g} days")
    except (BackupError, redis.RedisError) as exc:
        print(f"backup: {exc}", file=sys.stderr)
        return 1
    return 0


def _servers(client: Any, url: str, output_dir: Path) -> list[tuple[redis.Redis, str, Path]]:
    """The server to back up; on a cluster, each primary, into a folder of its own."""
    if not isinstance(client, redis.cluster.RedisCluster):
        return [(client, url, output_dir)]
    return [(client.get_redis_connection(node), f"redis://{node.host}:{node.port}",
             output_dir / f"{node.host}-{node.port}") for node in client.get_primaries()]


if __name__ == "__main__":
    sys.exit(main())
