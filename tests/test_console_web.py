"""``durable console --web`` in a real browser: headless Chromium driven by Playwright opens the console
served by textual-serve, goes from the queues screen to a queue's instances and into one instance, and
reads its history. The browser draws the terminal on a canvas, so the test reads the screen the way the
browser does: the app's output stream (the websocket's frames) fed to a terminal emulator (pyte). A
screenshot is kept as an artifact (``$DURABLE_TEST_ARTIFACTS``, default ``test-artifacts/``).

Playwright's own browser download is not reachable everywhere: the test launches Debian's ``chromium``
(``.ci/run`` installs it) and skips, naming what is missing, only when no Chromium exists at all.

Access rules (``durable serve``'s): loopback without a token; a token once in the URL, then a cookie; a
cross-site websocket refused.
"""

from __future__ import annotations

import http.client
import json
import os
import queue
import shutil
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import durable
from durable.migrate import drop_schema
from durable.sql import Query

from .test_cli_ops import DURABLE, ROOT, in_process

ARTIFACTS = Path(os.environ.get("DURABLE_TEST_ARTIFACTS", ROOT / "test-artifacts"))
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
WAIT = 60.0  # seconds a screen may take to appear (only guards against a hang)


def chromium() -> str | None:
    """Debian's chromium, else another system Chromium, else Playwright's own download if present."""
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    try:
        from playwright.sync_api import sync_playwright

        from .helpers import native_asyncio

        native_asyncio()
        with sync_playwright() as p:
            bundled = p.chromium.executable_path
        return bundled if bundled and Path(bundled).exists() else None
    except Exception:
        return None


@pytest.fixture(scope="module")
def demo_schema(pg_dsn: str) -> Iterator[str]:
    """A schema written by the real runtime: ``durable demo`` (checkouts, payments, shipment children)."""
    schema = f"t_web_{uuid.uuid4().hex[:8]}"
    env = {**os.environ, "DURABLE_DSN": pg_dsn, "DURABLE_SCHEMA": schema}
    proc = subprocess.run([DURABLE, "demo", "-n", "8"], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    yield schema
    in_process(pg_dsn, schema, lambda db: drop_schema(db.pool, schema))


class WebConsole:
    """``durable console --web --port 0`` in a subprocess; ``url`` is what it printed."""

    def __init__(self, dsn: str, schema: str, *extra: str) -> None:
        env = {**os.environ, "DURABLE_DSN": dsn, "DURABLE_SCHEMA": schema}
        self.proc = subprocess.Popen(
            [DURABLE, "console", "--web", "--port", "0", *extra],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=ROOT,
        )
        lines: queue.Queue[str] = queue.Queue()
        assert self.proc.stderr is not None
        threading.Thread(target=lambda: [lines.put(x) for x in self.proc.stderr], daemon=True).start()  # type: ignore[union-attr]
        try:
            first = lines.get(timeout=WAIT)
        except queue.Empty:
            raise AssertionError("durable console --web printed nothing") from None
        assert first.startswith("durable console: serving on http://127.0.0.1:"), first
        self.url = first.split("serving on ")[1].split()[0].rstrip("/")
        self.host = self.url.removeprefix("http://")

    def request(self, path: str, headers: dict[str, str] | None = None) -> http.client.HTTPResponse:
        conn = http.client.HTTPConnection(self.host, timeout=WAIT)
        conn.request("GET", path, headers=headers or {})
        return conn.getresponse()

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def web(pg_dsn: str, demo_schema: str) -> Iterator[WebConsole]:
    server = WebConsole(pg_dsn, demo_schema)
    try:
        yield server
    finally:
        server.close()


class Screen:
    """The terminal the browser shows, rebuilt from the app's output frames."""

    def __init__(self) -> None:
        import pyte

        self.screen = pyte.Screen(80, 24)
        self.stream = pyte.ByteStream(self.screen)
        self.lock = threading.Lock()

    def size(self, cols: int, rows: int) -> None:
        with self.lock:
            self.screen.resize(rows, cols)

    def feed(self, payload: str | bytes) -> None:
        if isinstance(payload, bytes):
            with self.lock:
                self.stream.feed(payload)

    def sent(self, payload: str | bytes) -> None:
        if isinstance(payload, str) and payload.startswith('["resize"'):
            size = json.loads(payload)[1]
            self.size(int(size["width"]), int(size["height"]))

    def text(self) -> str:
        with self.lock:
            return "\n".join(line.rstrip() for line in self.screen.display)


def wait_for(page: Any, screen: Screen, condition: Callable[[str], bool], what: str) -> str:
    deadline = time.monotonic() + WAIT
    while True:
        text = screen.text()
        if condition(text):
            return text
        if time.monotonic() > deadline:
            raise AssertionError(f"the browser never showed {what}; its terminal was:\n{text}")
        page.wait_for_timeout(100)  # lets Playwright deliver the next frames


async def histories(db: durable.Database) -> dict[int, list[str]]:
    """Every instance's history events, by id (the demo has ended: they do not change)."""
    rows = await db.pool.fetch(Query("t_web_ids", "select id from instances", ""))
    return {r["id"]: [e.event for e in await db.history(r["id"])] for r in rows}


def row(text: str, first: str) -> list[str]:
    for line in text.splitlines():
        parts = line.split()
        if parts and parts[0] == first:
            return parts
    raise AssertionError(f"no row starting with {first!r} in:\n{text}")


def test_the_console_in_a_browser_reads_an_instance_history(web: WebConsole, pg_dsn: str, demo_schema: str) -> None:
    executable = chromium()
    if executable is None:
        pytest.skip("no Chromium: apt-get install -y chromium (Playwright's own browser download is not reachable)")
    from playwright.sync_api import sync_playwright

    from .helpers import native_asyncio

    native_asyncio()  # Playwright's sync API runs a plain asyncio loop (trio-asyncio's policy is global)
    screen = Screen()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    events = in_process(pg_dsn, demo_schema, histories)  # read first: trio cannot run inside Playwright's loop
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})

            def on_websocket(ws: Any) -> None:
                from urllib.parse import parse_qs, urlsplit

                query = parse_qs(urlsplit(ws.url).query)
                screen.size(int(query["width"][0]), int(query["height"][0]))
                ws.on("framereceived", screen.feed)
                ws.on("framesent", screen.sent)

            page.on("websocket", on_websocket)
            page.goto(web.url + "/", wait_until="domcontentloaded")

            # the queues screen: the demo's two queues with their finished counts (waited for in full: a frame
            # arrives in pieces, and a tmux capture once caught a row half drawn)
            def queues_shown(t: str) -> bool:
                if not ("checkout" in t and "shipping" in t and "Workers" in t):
                    return False
                cells = next((line.split() for line in t.splitlines() if line.split()[:1] == ["checkout"]), [])
                return len(cells) > 7 and cells[6].isdigit() and cells[7].isdigit()

            text = wait_for(page, screen, queues_shown, "the queues screen")
            assert f"schema {demo_schema}" in text
            checkout = row(text, "checkout")
            done, failed = int(checkout[6]), int(checkout[7])
            assert done + failed == 8, checkout

            # enter: the checkout queue's instances
            page.locator(".xterm-helper-textarea").focus()
            page.keyboard.press("Enter")
            text = wait_for(
                page, screen, lambda t: "queue:checkout" in t and "Checkout" in t, "the checkout queue's instances"
            )
            first_id = next(
                line.split()[0] for line in text.splitlines() if "Checkout" in line and line.split()[0].isdigit()
            )

            # enter: that instance, with its history timeline: every event the database holds for it
            expected = events[int(first_id)]
            page.keyboard.press("Enter")
            text = wait_for(
                page,
                screen,
                lambda t: "History" in t and all(e in t[t.index("History") :] for e in expected),
                "the instance's history",
            )
            assert f"#{first_id}" in text or f" {first_id} " in text, text
            history = text[text.index("History") :]
            for event in ("inserted", "next", "spawn", "joined"):
                if event in ("spawn", "joined") and "stop" in history:
                    continue  # a declined payment stops before spawning
                assert event in history, (event, history)
            page.screenshot(path=str(ARTIFACTS / "console-web-instance.png"))
            (ARTIFACTS / "console-web-instance.txt").write_text(text + "\n")
        finally:
            browser.close()
    # every event the database holds for that instance is on the browser's screen
    assert [e for e in expected if e in history] == expected, (expected, history)
    assert "inserted" in expected and ("done" in expected or "stop" in expected), expected
    assert (ARTIFACTS / "console-web-instance.png").stat().st_size > 10_000


def test_loopback_without_a_token_and_cross_site_websockets_refused(web: WebConsole) -> None:
    assert web.request("/").status == 200
    upgrade = {
        "Connection": "Upgrade",
        "Upgrade": "websocket",
        "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
    }
    assert web.request("/ws", {**upgrade, "Origin": "http://evil.example"}).status == 403
    assert web.request("/ws", {**upgrade, "Origin": web.url}).status == 101


def test_a_token_is_needed_once_then_a_cookie_carries_it(pg_dsn: str, demo_schema: str) -> None:
    server = WebConsole(pg_dsn, demo_schema, "--token", "s3cret")
    try:
        assert server.request("/").status == 401
        assert server.request("/?token=wrong").status == 401
        first = server.request("/?token=s3cret")
        assert first.status == 302 and first.getheader("Location") == "/"
        cookie = first.getheader("Set-Cookie") or ""
        assert cookie.startswith("durable_console_token=s3cret") and "HttpOnly" in cookie
        assert server.request("/", {"Cookie": cookie.split(";")[0]}).status == 200
        assert server.request("/", {"Authorization": "Bearer s3cret"}).status == 200
    finally:
        server.close()
