"""Handlers of every kind a user writes, in real worker processes against a real redis-server
(issue 19 items 2 and 9): coroutine handlers run to their end, a handler that cannot take
(payload, ctx) or cannot be loaded stops the worker at start with exit 2 and one line.

Counted from outside: the handler's own record (what ran), the PEL, the retry set, the DLQ.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from email_ingestion.common.keys import StreamKeys
from email_ingestion.sandbox.sample_payloads import add_payloads
from tests.conftest import ROOT

STREAM, GROUP = "email_ingestion_stream", "email_processor_group"
KEYS = StreamKeys.of(STREAM, GROUP, "email_ingestion_dlq")
COUNT = 5


def run_worker(redis_url: str, tmp: Path, handler: str, *extra: str, command: list[str] | None = None,
               **env: str) -> subprocess.CompletedProcess[str]:
    records = tmp / "records"
    records.mkdir(exist_ok=True)
    full_env = {"PATH": os.environ["PATH"], "REDIS_URL": redis_url, "WORKER_BLOCK_TIMEOUT_MS": "100",
                "TEST_RECORD_DIR": str(records), "PYTHONPATH": str(ROOT), "RETRY_BASE_SECONDS": "0.05",
                "RETRY_CAP_SECONDS": "0.1", **env}
    cmd = command or [sys.executable, str(ROOT / "worker.py")]
    return subprocess.run([*cmd, "--consumer", "kinds", "--handler", handler, "--burst", "--env-file", os.devnull,
                           *extra], env=full_env, cwd=tmp, capture_output=True, text=True, timeout=120)


def ran(tmp: Path) -> Counter[str]:
    return Counter(key for f in (tmp / "records").glob("*.txt") for key in f.read_text().split())


@pytest.mark.parametrize("handler", ["coroutine", "async_object()", "returns_awaitable", "returns_future", "flexible"])
def test_coroutine_handlers_run_to_their_end(handler, redis_server, redis_client, tmp_path):
    """async def, an object with async __call__, a function returning a coroutine or a Future:
    each message's body runs exactly once before it is acknowledged."""
    add_payloads(redis_client, COUNT)
    done = run_worker(redis_server.url, tmp_path, f"tests.support.odd_handlers:{handler}")
    assert done.returncode == 0, done.stderr[-2000:]
    counts = ran(tmp_path)
    assert (len(counts), set(counts.values())) == (COUNT, {1})  # none lost (acked unrun), none repeated
    assert redis_client.xpending(STREAM, GROUP)["pending"] == 0
    assert not redis_client.exists(KEYS.dlq, KEYS.retries)


def test_an_exception_after_an_await_is_a_failure(redis_server, redis_client, tmp_path):
    """A coroutine that raises after awaiting fails its message: every one reaches the DLQ
    (MAX_RETRIES=0) with the error, none counted as handled."""
    add_payloads(redis_client, COUNT)
    done = run_worker(redis_server.url, tmp_path, "tests.support.odd_handlers:coroutine_fails", MAX_RETRIES="0")
    assert done.returncode == 0, done.stderr[-2000:]
    letters = redis_client.xrange(KEYS.dlq)
    assert len(letters) == COUNT and {f[b"error_type"] for _, f in letters} == {b"RuntimeError"}
    assert redis_client.xpending(STREAM, GROUP)["pending"] == 0


def test_a_hung_await_times_out_like_a_hung_call(redis_server, redis_client, tmp_path):
    """An await that never returns is bounded by HANDLER_TIMEOUT_SECONDS: the worker exits 1
    and the message is not acknowledged as handled (it waits for a retry)."""
    add_payloads(redis_client, 1)
    done = run_worker(redis_server.url, tmp_path, "tests.support.odd_handlers:coroutine_hangs",
                      HANDLER_TIMEOUT_SECONDS="1", HEALTH_STALL_SECONDS="5")
    assert done.returncode == 1, done.stderr[-2000:]
    assert "timed out" in done.stderr
    assert redis_client.zcard(KEYS.retries) + redis_client.xpending(STREAM, GROUP)["pending"] == 1


def one_line_exit_2(done: subprocess.CompletedProcess[str], *words: str) -> str:
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2, done.stderr[-3000:]
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr[-3000:]
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize("handler", ["no_arguments", "one_argument", "three_required", "keyword_only", "NOT_CALLABLE",
                                     "AsyncCallable", "factory_needs_argument()", "make_generator"])
def test_a_handler_that_cannot_take_payload_and_ctx_is_a_bad_setting(handler, redis_server, redis_client, tmp_path):
    """Wrong arity, keyword-only ctx, not callable, a class given without (), a factory that
    needs an argument, a generator function: exit 2, one line naming the spec, nothing read."""
    add_payloads(redis_client, COUNT)
    done = run_worker(redis_server.url, tmp_path, f"tests.support.odd_handlers:{handler}")
    one_line_exit_2(done, "WORKER_HANDLER", handler)
    assert redis_client.xlen(STREAM) == COUNT and not redis_client.exists(KEYS.dlq)
    assert not redis_client.xinfo_groups(STREAM)  # not even the group: nothing was read


BROKEN_MODULES = {
    "syntax": ("def handle(payload, ctx)\n    pass\n", "SyntaxError"),
    "keyerror": ("import os\nTOKEN = os.environ['NO_SUCH_SETTING_XYZ']\ndef handle(payload, ctx): pass\n", "KeyError"),
    "exits": ("import sys\nsys.exit('argparse said no')\n", "SystemExit"),
    "imports_missing": ("import no_such_dependency_xyz\ndef handle(payload, ctx): pass\n", "no_such_dependency_xyz"),
    "multiline": ("raise RuntimeError('first line\\nsecond line')\n", "first line second line"),
}


@pytest.mark.parametrize("name", sorted(BROKEN_MODULES))
def test_a_module_that_cannot_be_loaded_is_one_line_and_exit_2(name, redis_server, redis_client, tmp_path):
    """A syntax error, a KeyError or sys.exit at import, a missing dependency: exit 2 (systemd
    does not restart it), one line naming the spec and the error."""
    code, error = BROKEN_MODULES[name]
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / f"broken_{name}.py").write_text(code)
    add_payloads(redis_client, COUNT)
    done = run_worker(redis_server.url, tmp_path, f"broken_{name}:handle", "--handler-path", str(tmp_path / "code"))
    one_line_exit_2(done, f"broken_{name}:handle", error)
    assert redis_client.xlen(STREAM) == COUNT and not redis_client.exists(KEYS.dlq)


def test_a_factory_that_raises_is_one_line_and_exit_2(redis_server, redis_client, tmp_path):
    """A factory (`:make()`) whose body raises: exit 2, one line."""
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "factories.py").write_text("def make():\n    raise ValueError('no database URL')\n")
    done = run_worker(redis_server.url, tmp_path, "factories:make()", WORKER_HANDLER_PATH=str(tmp_path / "code"))
    one_line_exit_2(done, "factories:make()", "ValueError: no database URL")


def test_the_installed_worker_finds_handler_code_in_the_handler_path(redis_server, redis_client, tmp_path):
    """The documented example with the installed `email-worker`: without WORKER_HANDLER_PATH
    it says where it looked (exit 2, one line); with --handler-path or the variable it runs."""
    code = tmp_path / "handlers"
    code.mkdir()
    (code / "myhandlers.py").write_text(
        "import os\n\ndef classify(payload, ctx):\n"
        "    with open(os.path.join(os.environ['TEST_RECORD_DIR'], 'mine.txt'), 'a') as f:\n"
        "        f.write(payload.idempotency_key + '\\n')\n")
    add_payloads(redis_client, COUNT)
    installed = [str(Path(sys.executable).parent / "email-worker")]
    done = run_worker(redis_server.url, tmp_path, "myhandlers:classify", command=installed, PYTHONPATH="")
    one_line_exit_2(done, "myhandlers", "WORKER_HANDLER_PATH")
    done = run_worker(redis_server.url, tmp_path, "myhandlers:classify", "--handler-path", str(code),
                      command=installed, PYTHONPATH="")
    assert done.returncode == 0, done.stderr[-2000:]
    assert sorted(ran(tmp_path).values()) == [1] * COUNT


def test_a_handler_path_that_is_not_a_directory_is_a_bad_setting(redis_server, tmp_path):
    """WORKER_HANDLER_PATH naming a missing directory: exit 2, one line."""
    done = run_worker(redis_server.url, tmp_path, "x:y", WORKER_HANDLER_PATH=str(tmp_path / "missing"))
    one_line_exit_2(done, "WORKER_HANDLER_PATH")
