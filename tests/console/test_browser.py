"""The console in a real browser (headless Debian Chromium through chromedriver) over a real
redis-server filled by real producer and worker runs.

A screenshot of each page goes to <pytest basetemp>/console-screenshots/ (or
$CONSOLE_SCREENSHOT_DIR), kept as test artifacts.
"""

from __future__ import annotations

import http.server
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from email_ingestion.common.keys import MailboxKeys
from email_ingestion.sandbox.sample_mail import sample_message
from tests.conftest import ROOT, USER, producer_cmd
from tests.console.conftest import ADMIN, ADMIN_PW, DLQ, STREAM, VIEWER, VIEWER_PW, write_users
from tests.support.waits import wait_until

webdriver = pytest.importorskip("selenium.webdriver")
from selenium.common.exceptions import NoAlertPresentException  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
pytestmark = [pytest.mark.browser, pytest.mark.slow,
              pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER), reason="needs Debian chromium and chromium-driver "
                                                                         "(make system-deps installs them)")]
XSS_SUBJECT = "poison <script>alert(1)</script><img src=x onerror=alert(2)>"


@pytest.fixture
def screenshots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = Path(os.environ.get("CONSOLE_SCREENSHOT_DIR") or tmp_path_factory.getbasetemp() / "console-screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1280,1000", f"--user-data-dir={tmp_path / 'chromium'}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=CHROMEDRIVER))
    driver.set_page_load_timeout(120)
    yield driver
    driver.quit()


@pytest.fixture
def live_producer(producer_env: dict[str, str], redis_client: Any) -> Iterator[subprocess.Popen[str]]:
    """A producer following the test's mailbox until the test ends (SIGTERM, exit 0). IDLE
    brings the test's mail; the poll interval is an hour so that no periodic pass runs while
    the overview is read (its state would be "syncing", not "idle": with the default 30 s a
    pass could fall on that read on a slow machine)."""
    env = {**producer_env, "PRODUCER_ID": "p-browser", "POLL_INTERVAL_SECONDS": "3600"}
    proc = subprocess.Popen(producer_cmd(), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    yield proc
    proc.terminate()
    assert proc.wait(60) == 0, proc.stderr.read()[-2000:] if proc.stderr else ""


def run_worker(redis_url: str) -> subprocess.CompletedProcess[str]:
    env = {"PATH": os.environ["PATH"], "REDIS_URL": redis_url, "WORKER_BLOCK_TIMEOUT_MS": "100",
           "WORKER_METRICS_PORT": "0", "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'src'}"}
    done = subprocess.run([sys.executable, str(ROOT / "worker.py"), "--consumer", "w1", "--burst", "--env-file", os.devnull,
                           "--handler", "tests.console.handlers:poison_subjects"], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done


@pytest.fixture
def console_url(redis_server: Any, tmp_path: Path) -> Iterator[str]:
    users = write_users(tmp_path / "users.json", **{ADMIN: ("admin", ADMIN_PW), VIEWER: ("viewer", VIEWER_PW)})
    env = {"PATH": os.environ["PATH"], "REDIS_URL": redis_server.url, "CONSOLE_USERS_FILE": str(users),
           "CONSOLE_PORT": "0", "CONSOLE_THREADS": "2"}
    proc = subprocess.Popen([sys.executable, "-m", "email_ingestion", "console", "--env-file", os.devnull],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert "listening on http://127.0.0.1:" in line, line + (proc.stderr.read() if proc.poll() is not None else "")
    yield line.split("listening on ", 1)[1].strip().rstrip("/")
    proc.terminate()
    proc.wait(timeout=30)


def find(driver: Any, by: str, value: str) -> Any:
    """The element once the page that holds it is there: a click that navigates may return
    before the new page is parsed, so every lookup waits (bounded) instead of racing it."""
    assert wait_until(lambda: driver.find_elements(by, value), timeout_s=60), f"no {value} in {driver.current_url}"
    return driver.find_elements(by, value)[0]


def shoot(driver: Any, folder: Path, name: str) -> None:
    driver.save_screenshot(str(folder / f"{name}.png"))


def no_alert(driver: Any) -> bool:
    try:
        _ = driver.switch_to.alert
    except NoAlertPresentException:
        return True
    return False


def log_in(driver: Any, url: str, name: str, password: str) -> None:
    driver.get(f"{url}/login")
    find(driver, By.ID, "username").send_keys(name)
    find(driver, By.ID, "password").send_keys(password)
    find(driver, By.ID, "login").click()
    assert wait_until(lambda: "/login" not in driver.current_url and driver.find_elements(By.TAG_NAME, "h1"),
                      timeout_s=30), driver.page_source[-2000:]


def log_out(driver: Any) -> None:
    find(driver, By.CSS_SELECTOR, "form.logout button").click()
    assert wait_until(lambda: "/login" in driver.current_url and driver.find_elements(By.ID, "username"), timeout_s=30)


class Attacker(http.server.BaseHTTPRequestHandler):
    """Another site (localhost, not 127.0.0.1): its page posts a purge to the console at once."""

    target = ""

    def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
        body = (f'<form id="f" method="post" action="{self.target}/dlq/act">'
                '<input name="action" value="purge"><input name="scope" value="all"><input name="value" value=""></form>'
                '<script>document.getElementById("f").submit()</script>').encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def attacker_site(console_url: str) -> Iterator[str]:
    handler = type("BoundAttacker", (Attacker,), {"target": console_url})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://localhost:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


def test_console_in_a_browser(browser, console_url, attacker_site, screenshots, mailbox, redis_server, redis_client,
                              live_producer):
    """Log in, read the overview, find a message by Message-ID, replay a DLQ group as admin, be
    refused as viewer, and see a cross-site POST refused; a screenshot of each page."""
    mailbox.append(*[sample_message(i) for i in range(4)], sample_message(4, subject=XSS_SUBJECT),
                   sample_message(5, subject=XSS_SUBJECT))
    assert wait_until(lambda: redis_client.xlen(STREAM) == 6, timeout_s=60)  # the live producer's first sync
    activity = MailboxKeys(STREAM, USER, mailbox.name).activity
    assert wait_until(lambda: redis_client.hget(activity, "state") == b"idle", timeout_s=60)  # the pass has ended
    run_worker(redis_server.url)
    assert redis_client.xlen(DLQ) == 2
    driver, url = browser, console_url

    driver.get(url)  # not logged in: the login form
    assert "/login" in driver.current_url
    shoot(driver, screenshots, "01-login")
    log_in(driver, url, ADMIN, ADMIN_PW)

    mailboxes = find(driver, By.ID, "mailboxes").text
    assert "alice@example.com" in mailboxes and mailbox.name in mailboxes
    assert "p-browser" in mailboxes and "idle" in mailboxes and "6/6 (100%)" in mailboxes
    assert "6" in find(driver, By.ID, "streams").text
    assert "4 messages handled" in driver.page_source
    shoot(driver, screenshots, "02-overview")

    driver.get(f"{url}/search")
    find(driver, By.ID, "q").send_keys("<msg-0-2@example.org>")
    find(driver, By.ID, "search-button").click()
    results = find(driver, By.ID, "search-results").text
    assert "stream" in results and "msg-0-2@example.org" in results
    shoot(driver, screenshots, "03-search")

    driver.get(f"{url}/dlq")
    assert "permanent" in find(driver, By.ID, "dlq-groups").text
    shoot(driver, screenshots, "04-dlq")
    find(driver, By.CSS_SELECTOR, "#dlq-letters a").click()
    assert XSS_SUBJECT in find(driver, By.ID, "letter-payload").text and no_alert(driver)
    shoot(driver, screenshots, "05-letter-admin")

    driver.get(f"{url}/dlq")
    find(driver, By.ID, "replay-reason-1").click()
    assert "2 dead letters" in find(driver, By.ID, "plan-summary").text
    shoot(driver, screenshots, "06-replay-plan")
    find(driver, By.ID, "confirm").click()
    assert "Replayed 2 of 2" in find(driver, By.ID, "done-summary").text
    shoot(driver, screenshots, "07-replayed")
    assert redis_client.xlen(DLQ) == 0
    assert len([f for _, f in redis_client.xrange(STREAM) if b"replayed_from" in f]) == 2
    driver.get(f"{url}/audit")
    assert "dlq.replay" in find(driver, By.ID, "audit").text and ADMIN in find(driver, By.ID, "audit").text
    shoot(driver, screenshots, "08-audit")

    run_worker(redis_server.url)  # the replayed letters fail again: back in the DLQ
    assert redis_client.xlen(DLQ) == 2
    before = [e for e, _ in redis_client.xrange(DLQ)]
    driver.get(attacker_site)  # logged in as admin, another site posts a purge
    assert wait_until(lambda: "/dlq/act" in driver.current_url and driver.find_elements(By.ID, "error-message"),
                      timeout_s=30)
    assert "401" in find(driver, By.TAG_NAME, "h1").text  # the Strict cookie was not sent
    shoot(driver, screenshots, "09-cross-site-post-refused")
    assert [e for e, _ in redis_client.xrange(DLQ)] == before

    driver.get(f"{url}/")
    log_out(driver)
    log_in(driver, url, VIEWER, VIEWER_PW)
    driver.get(f"{url}/dlq")
    assert "Replay" not in find(driver, By.ID, "dlq-groups").text
    find(driver, By.CSS_SELECTOR, "#dlq-letters a").click()
    find(driver, By.ID, "letter-meta")  # the letter's page is there
    assert "admins only" in driver.page_source and "<script>" not in find(driver, By.TAG_NAME, "main").text
    shoot(driver, screenshots, "10-letter-viewer")
    driver.get(f"{url}/dlq/plan?action=purge&scope=all&value=")
    assert "403" in find(driver, By.TAG_NAME, "h1").text
    shoot(driver, screenshots, "11-viewer-refused")
    # The viewer forges the admin's form with its own valid CSRF token: refused by the server.
    token = find(driver, By.CSS_SELECTOR, "form.logout input[name=csrf_token]").get_attribute("value")
    driver.execute_script(
        "const f = document.createElement('form'); f.method = 'post'; f.action = arguments[0];"
        "for (const [k, v] of Object.entries(arguments[1])) { const i = document.createElement('input');"
        " i.name = k; i.value = v; f.appendChild(i); } document.body.appendChild(f); f.submit();",
        f"{url}/dlq/act", {"action": "purge", "scope": "all", "value": "", "csrf_token": token})
    assert wait_until(lambda: "/dlq/act" in driver.current_url and driver.find_elements(By.ID, "error-message"),
                      timeout_s=30)
    assert "403" in find(driver, By.TAG_NAME, "h1").text
    shoot(driver, screenshots, "12-viewer-post-refused")
    assert [e for e, _ in redis_client.xrange(DLQ)] == before
    assert redis_client.xlen("email_ingestion:console:audit") == 1
