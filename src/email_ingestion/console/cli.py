"""`email-ingest console`: serve the web console; `email-ingest console users ...`: manage its users.

    email-ingest console [--host H] [--port P] [--users-file F] [--env-file F]
    email-ingest console users add NAME --role admin|viewer     (asks for the password twice)
    email-ingest console users set NAME [--role R] [--password]
    email-ingest console users remove NAME
    email-ingest console users list

The password is read from the terminal, or from stdin with --password-stdin (for scripts);
never from the command line, where `ps` and shell history would keep it. Changing or removing
a user ends that user's sessions (when Redis is reachable; otherwise on their next request,
which checks the file). Exit status: 0 done, 1 Redis unreachable, 2 bad settings or arguments.
"""

from __future__ import annotations

import argparse
import functools
import getpass
import logging
import sys
from pathlib import Path

import redis

from email_ingestion.admin.common import EXIT_DEGRADED, EXIT_SETTINGS, parser, target
from email_ingestion.common.errors import SettingsError
from email_ingestion.common.logging import Redactor, setup_logging
from email_ingestion.common.redis_client import describe, make_redis
from email_ingestion.common.settings import Settings, load_settings
from email_ingestion.console.users import (
    ROLES,
    User,
    UserDirectory,
    UsersFileError,
    check_name,
    check_password,
    hash_password,
    load_users,
    save_users,
)

log = logging.getLogger("email_ingestion.console")
_USAGE = """commands:
  add NAME --role admin|viewer [--password-stdin]   add a user (the password is asked for twice)
  set NAME [--role ROLE] [--password | --password-stdin]   change role or password; ends the user's sessions
  remove NAME                                       remove a user; ends the user's sessions
  list                                              names and roles"""


def _serve_parser() -> argparse.ArgumentParser:
    p = parser("email-ingest console", "Serve the web console (see docs/console.md); `console users --help` for users.")
    p.add_argument("--host", help="CONSOLE_HOST (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="CONSOLE_PORT (default 8025)")
    p.add_argument("--users-file", help="CONSOLE_USERS_FILE")
    return p


def _users_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="email-ingest console users", description="Manage the console's users file.",
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=_USAGE)
    p.add_argument("--env-file", default=".env", help="settings file (for CONSOLE_USERS_FILE and Redis)")
    p.add_argument("--users-file", help="CONSOLE_USERS_FILE")
    # The same options after the subcommand too; there they default to SUPPRESS so they never
    # undo one given before it.
    after = argparse.ArgumentParser(add_help=False)
    after.add_argument("--env-file", default=argparse.SUPPRESS, help="settings file")
    after.add_argument("--users-file", default=argparse.SUPPRESS, help="CONSOLE_USERS_FILE")
    sub = p.add_subparsers(dest="action", required=True)
    sub_parser = functools.partial(sub.add_parser, parents=[after])
    add = sub_parser("add", help="add a user (asks for the password)")
    add.add_argument("name")
    add.add_argument("--role", choices=ROLES, required=True)
    change = sub_parser("set", help="change a user's role or password; ends the user's sessions")
    change.add_argument("name")
    change.add_argument("--role", choices=ROLES)
    change.add_argument("--password", action="store_true", help="set a new password (asked for)")
    remove = sub_parser("remove", help="remove a user; ends the user's sessions")
    remove.add_argument("name")
    sub_parser("list", help="names and roles")
    for command in (add, change):
        command.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    return p


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    # `email-ingest` puts `--env-file F` first, before our own subcommand.
    lead: list[str] = []
    while args[:1] == ["--env-file"] and len(args) > 1:
        lead, args = lead + args[:2], args[2:]
    if args[:1] == ["users"]:
        return users_main(lead + args[1:])
    return serve_main(lead + args)


def serve_main(argv: list[str]) -> int:
    args = _serve_parser().parse_args(argv)
    overrides = {"redis": {"url": args.redis_url, "stream_name": args.stream}, "worker": {"group": args.group},
                 "console": {"host": args.host, "port": args.port, "users_file": args.users_file}}
    try:
        settings = load_settings(overrides, env_file=args.env_file)
        make_redis(settings.redis)
        if not load_users(settings.console.users_file):
            raise UsersFileError(f"{settings.console.users_file} holds no user: add one with "
                                 "`email-ingest console users add NAME --role admin`")
    except (SettingsError, UsersFileError) as exc:
        print(f"console: {exc}", file=sys.stderr)
        return EXIT_SETTINGS
    return _serve(settings)


def _serve(settings: Settings) -> int:
    import waitress

    from email_ingestion.console.app import create_app
    from email_ingestion.console.guard import Console
    from email_ingestion.console.login_limit import LoginLimit
    from email_ingestion.console.sessions import SessionStore

    setup_logging(settings.log.level, settings.log.format, "console", Redactor(settings.secrets()))
    where = target(settings)
    try:
        where.client.ping()
    except redis.RedisError as exc:
        print(f"console: Redis unreachable at {describe(settings.redis)}: {type(exc).__name__}", file=sys.stderr)
        return EXIT_DEGRADED
    c = settings.console
    console = Console(target=where, settings=c, max_unacked=settings.redis.max_stream_length,
                      users=UserDirectory(c.users_file),
                      sessions=SessionStore(where.client, idle_s=c.session_idle_seconds, max_s=c.session_max_seconds),
                      login_limit=LoginLimit(where.client, max_failures=c.login_max_failures,
                                             window_s=c.login_window_seconds),
                      streams=settings.worker_streams())
    app = create_app(console)
    # One line on stdout that tools (and tests) wait for; waitress binds before serving.
    # Proxy headers are read by the app (CONSOLE_TRUSTED_PROXIES, werkzeug's ProxyFix), not by waitress.
    server = waitress.create_server(app, host=c.host, port=c.port, threads=c.threads, ident="email-ingest-console",
                                    max_request_body_size=1024 * 1024)
    print(f"console: listening on http://{_display(c.host)}:{server.effective_port}/", flush=True)
    log.info("console listening", extra={"host": c.host, "port": server.effective_port})
    server.run()
    return 0


def _display(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def users_main(argv: list[str]) -> int:
    args = _users_parser().parse_args(argv)
    try:
        settings = load_settings({"console": {"users_file": args.users_file}}, env_file=args.env_file)
        path = settings.console.users_file
        users = _current(path, args.action)
        changed = _apply(users, args)
    except (SettingsError, UsersFileError) as exc:
        print(f"console users: {exc}", file=sys.stderr)
        return EXIT_SETTINGS
    if args.action == "list":
        for user in sorted(users.values(), key=lambda u: u.name):
            print(f"{user.name}\t{user.role}")
        return 0
    save_users(path, users)
    print(f"console users: {args.action} {args.name}: done ({path})")
    if changed:
        _end_sessions(settings, args.name)
    return 0


def _current(path: Path, action: str) -> dict[str, User]:
    if action == "add" and not path.exists():
        return {}
    return load_users(path)


def _apply(users: dict[str, User], args: argparse.Namespace) -> bool:
    """Change `users` as asked; True when the user's existing sessions must end."""
    if args.action == "list":
        return False
    name = check_name(args.name)
    if args.action == "add":
        if name in users:
            raise UsersFileError(f"user {name} exists: use `console users set`")
        users[name] = User(name, args.role, hash_password(_password(args.password_stdin)))
        return False
    if name not in users:
        raise UsersFileError(f"no user {name}")
    if args.action == "remove":
        del users[name]
        return True
    old = users[name]
    new_hash = hash_password(_password(args.password_stdin)) if args.password or args.password_stdin else old.password_hash
    users[name] = User(name, args.role or old.role, new_hash)
    return True


def _password(from_stdin: bool) -> str:
    if from_stdin:
        return check_password(sys.stdin.readline().rstrip("\n"))
    first = getpass.getpass("password: ")
    if first != getpass.getpass("again: "):
        raise UsersFileError("the two passwords differ")
    return check_password(first)


def _end_sessions(settings: Settings, name: str) -> None:
    from email_ingestion.console.sessions import SessionStore
    c = settings.console
    try:
        ended = SessionStore(make_redis(settings.redis), idle_s=c.session_idle_seconds,
                             max_s=c.session_max_seconds).end_all(name)
    except redis.RedisError as exc:
        print(f"console users: sessions of {name} not ended now (Redis: {type(exc).__name__}); "
              "they are refused on their next request", file=sys.stderr)
        return
    print(f"console users: ended {ended} session(s) of {name}")


if __name__ == "__main__":
    sys.exit(main())
