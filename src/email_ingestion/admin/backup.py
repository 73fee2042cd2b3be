"""Back up Redis: BGSAVE, wait for it, copy the RDB with a SHA-256 and a metadata file.

    email-ingest backup [--env-file FILE] [--redis-url URL] [--output-dir DIR] [--retention-days N] [--compress]
    email-ingest backup --list [--output-dir DIR]

Redis is found exactly as the services find it (environment, `.env` searched the same way,
`--env-file`, then `--redis-url`). Run it on the Redis host, as a user that can read Redis's
data directory, with an admin user (CONFIG GET and BGSAVE are admin commands). When the RDB
file cannot be reached (remote Redis, CONFIG disabled, no permission) it says so and prints
the fallback: `redis-cli --rdb FILE`, which streams a snapshot over the network.

Backups hold mail: the directory is made mode 0700 and every file 0600; `--compress` gzips
the RDB. Each backup is verified after it is written (checksum of the copy read back,
RDB magic bytes, `redis-check-rdb` when installed) and removed if it fails.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gzip
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import redis
import redis.cluster

from email_ingestion.common.errors import SettingsError
from email_ingestion.common.redis_client import describe, make_redis
from email_ingestion.common.settings import RedisSettings, load_settings

PREFIX = "redis-backup-"
SUFFIXES = (".rdb", ".rdb.gz")


class BackupError(Exception):
    """A backup could not be made; the message says why and what to do instead."""


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def redis_settings(env_file: str, url: str | None) -> RedisSettings:
    """The services' Redis settings (SettingsError when invalid)."""
    return load_settings({"redis": {"url": url}}, env_file=env_file).redis


@contextmanager
def plain_rdb(path: Path) -> Iterator[Path]:
    """The backup as a plain RDB file: itself, or gunzipped into a private temporary file."""
    if not path.name.endswith(".gz"):
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="redis-backup-") as work:
        plain = Path(work) / path.name.removesuffix(".gz")
        with gzip.open(path, "rb") as source, open(plain, "wb") as target:
            shutil.copyfileobj(source, target)
        yield plain


def check_rdb(path: Path) -> list[str]:
    """Checks that passed on a plain RDB file, or BackupError for the first that failed."""
    with open(path, "rb") as handle:
        magic = handle.read(9)
    if not (magic[:5] == b"REDIS" and magic[5:].isdigit()):
        raise BackupError(f"{path} is not an RDB file (magic bytes {magic[:9]!r})")
    passed = [f"RDB magic, format version {int(magic[5:])}"]
    if shutil.which("redis-check-rdb"):
        done = subprocess.run(["redis-check-rdb", str(path)], capture_output=True, text=True)
        if done.returncode != 0:
            raise BackupError(f"redis-check-rdb rejected {path}: {done.stdout[-500:]}")
        passed.append("redis-check-rdb OK")
    return passed


def private_dir(path: Path) -> Path:
    """Create the directory 0700; an existing one is left as it is (it may be /var/backups),
    with a warning when others can list it: the files themselves are 0600 either way."""
    if not path.exists():
        path.mkdir(parents=True, mode=0o700)
        path.chmod(0o700)  # mkdir's mode is filtered by the umask
    elif path.stat().st_mode & 0o077:
        print(f"backup: warning: {path} is accessible to other users (mode {path.stat().st_mode & 0o777:o}); "
              "backup files are 0600, but consider chmod 700", file=sys.stderr)
    return path


def private_copy(source: Path, target: Path, compress: bool) -> None:
    """Copy (or gzip) `source` to `target`, created 0600 before any byte is written."""
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with open(fd, "wb") as out, open(source, "rb") as src:
        if compress:
            with gzip.GzipFile(fileobj=out, mode="wb") as zipped:
                shutil.copyfileobj(src, zipped)
        else:
            shutil.copyfileobj(src, out)
        out.flush()
        os.fsync(out.fileno())


def write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with open(fd, "w") as handle:
        handle.write(text)


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
        config: dict[Any, Any] = dict(client.config_get("dir"))
        config.update(client.config_get("dbfilename"))
    except redis.ResponseError as exc:
        raise BackupError(f"cannot ask Redis where its RDB file is ({exc}): CONFIG is disabled or not "
                          f"allowed for this user. Fallback: redis-cli -u '{url}' --rdb backup.rdb") from None
    path = Path(str(config["dir"])) / str(config["dbfilename"])
    if not os.access(path, os.R_OK):
        raise BackupError(f"cannot read {path}: Redis runs on another host, or this user may not read its "
                          f"data directory. Fallback: redis-cli -u '{url}' --rdb backup.rdb")
    return path


def checksum_file(backup: Path) -> Path:
    return backup.with_name(backup.name + ".sha256")


def meta_file(backup: Path) -> Path:
    return backup.with_name(backup.name.split(".rdb")[0] + ".json")


def backup(client: redis.Redis, url: str, output_dir: Path, timeout_s: float = 300, compress: bool = False) -> Path:
    bgsave_and_wait(client, timeout_s)
    source = rdb_path(client, url)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    target = private_dir(output_dir) / f"{PREFIX}{stamp}{'.rdb.gz' if compress else '.rdb'}"
    source_sum = sha256_of(source)
    private_copy(source, target, compress)
    try:
        verify_written(target, source_sum)
    except BackupError:
        target.unlink(missing_ok=True)
        raise
    checksum = sha256_of(target)
    write_private(checksum_file(target), f"{checksum}  {target.name}\n")
    server = client.info("server")
    meta = {"file": target.name, "sha256": checksum, "bytes": target.stat().st_size, "created_at": stamp,
            "compressed": compress, "rdb_sha256": source_sum, "source": str(source),
            "redis_version": server.get("redis_version"), "keys": client.dbsize()}
    write_private(meta_file(target), json.dumps(meta, indent=2) + "\n")
    return target


def verify_written(target: Path, source_sum: str) -> None:
    """Read the backup back: it must be the RDB that was copied, and a valid one."""
    with plain_rdb(target) as plain:
        if sha256_of(plain) != source_sum:
            raise BackupError(f"{target} does not match the RDB it was copied from (disk full? the file changed?)")
        check_rdb(plain)


def prune(output_dir: Path, retention_days: float, now: float | None = None) -> list[Path]:
    cutoff = (now or time.time()) - retention_days * 86400
    removed = []
    for rdb in backups_in(output_dir):
        if rdb.stat().st_mtime < cutoff:
            for companion in (rdb, checksum_file(rdb), meta_file(rdb)):
                companion.unlink(missing_ok=True)
            removed.append(rdb)
    return removed


def backups_in(output_dir: Path) -> list[Path]:
    return sorted(p for p in output_dir.glob(f"{PREFIX}*") if p.name.endswith(SUFFIXES))


def list_backups(output_dir: Path) -> list[dict[str, object]]:
    rows = []
    for rdb in backups_in(output_dir):
        meta_path = meta_file(rdb)
        meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
        rows.append({"file": str(rdb), "bytes": rdb.stat().st_size, "created_at": meta.get("created_at"),
                     "checksum_ok": meta.get("sha256") == sha256_of(rdb), "keys": meta.get("keys")})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="email-ingest backup", description=__doc__.split("\n\n")[0])
    parser.add_argument("--env-file", default=".env", help="settings file, as the services read it (default: .env, searched)")
    parser.add_argument("--redis-url", help="REDIS_URL; without it the REDIS_* settings (Sentinel, Cluster too)")
    parser.add_argument("--output-dir", type=Path, default=Path("backups"), help="made mode 0700")
    parser.add_argument("--retention-days", type=float, default=14)
    parser.add_argument("--compress", action="store_true", help="gzip the RDB (.rdb.gz)")
    parser.add_argument("--timeout", type=float, default=300, help="seconds to wait for BGSAVE")
    parser.add_argument("--list", action="store_true", help="list backups and verify their checksums")
    args = parser.parse_args(argv)
    if args.list:
        for row in list_backups(args.output_dir):
            print(json.dumps(row))
        return 0
    try:
        settings = redis_settings(args.env_file, args.redis_url)
    except SettingsError as exc:
        print(f"backup: {exc}", file=sys.stderr)
        return 2
    try:
        for client, url, output_dir in _servers(make_redis(settings), describe(settings), args.output_dir):
            target = backup(client, url, output_dir, args.timeout, args.compress)
            removed = prune(output_dir, args.retention_days)
            print(f"backup written: {target} (sha256 in {target.name}.sha256); pruned {len(removed)} older than "
                  f"{args.retention_days:g} days")
    except (BackupError, redis.RedisError, OSError) as exc:
        print(f"backup: {exc}", file=sys.stderr)
        return 1
    return 0


def _servers(client: Any, url: str, output_dir: Path) -> list[tuple[redis.Redis, str, Path]]:
    """The server to back up; on a cluster, each primary, into a folder of its own."""
    if not isinstance(client, redis.cluster.RedisCluster):
        return [(client, url, output_dir)]
    return [(client.get_redis_connection(node), f"redis://{node.host}:{node.port}",
             output_dir / f"{node.host}-{node.port}") for node in client.get_primaries()]  # type: ignore[no-untyped-call]


if __name__ == "__main__":
    sys.exit(main())
