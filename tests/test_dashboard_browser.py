"""The dashboard in a real browser: Debian's chromium, headless, driven by Playwright, against
a real ``corral up`` (embedded nats-server, controller, three node processes) and a real
guardian process. One browser and one ``corral up`` for the module; a screenshot of every
page goes to the test's tmp dir and to ``test-artifacts/`` at the repository root.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import child_env, corral_argv, free_port, scaled
from corral.config import Config

CHROMIUM = os.environ.get("CORRAL_CHROMIUM", "/usr/bin/chromium")
ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"
EXAMPLES = ROOT / "examples" / "guardian"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not Path(CHROMIUM).exists(),
        reason=f"no chromium at {CHROMIUM}: `apt-get install chromium` (or set CORRAL_CHROMIUM)",
    ),
]
playwright_api = pytest.importorskip("playwright.sync_api")
playwright_api.expect.set_options(timeout=scaled(20) * 1000)


class Cluster:
    """``corral up --nodes 3`` and a guardian, as child processes."""

    def __init__(self, config: Config, logs: Path) -> None:
        self.config = config
        self.logs = logs
        self.url = f"http://127.0.0.1:{config.api_port}"
        self.children: list[subprocess.Popen[bytes]] = []

    def start(self, *args: str, log: str) -> subprocess.Popen[bytes]:
        env = {**child_env(self.config), "CORRAL_API_PORT": str(self.config.api_port)}
        with open(self.logs / f"{log}.log", "ab") as out:
            proc = subprocess.Popen(
                corral_argv(self.config, *args),
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        self.children.append(proc)
        return proc

    def token(self) -> str:
        path = self.config.data_path / "auth" / "api-admin.token"
        return path.read_text().strip()

    def api(self, function: str, **body: Any) -> Any:
        reply = httpx.post(
            f"{self.url}/{function}",
            json=body,
            headers={"Authorization": f"Bearer {self.token()}"},
            timeout=scaled(10),
        )
        reply.raise_for_status()
        return reply.json()

    def stop(self) -> None:
        for proc in reversed(self.children):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(scaled(15))
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


def _until(check: Any, timeout: float, what: str) -> Any:
    """Poll a cheap readiness check of the cluster (not the browser) until it is truthy."""
    deadline = time.monotonic() + scaled(timeout)
    while time.monotonic() < deadline:
        try:
            value = check()
        except (httpx.HTTPError, OSError):
            value = None
        if value:
            return value
        time.sleep(0.2)  # polling a child process's readiness, not synchronising test steps
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def cluster(template: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    tmp = tmp_path_factory.mktemp("dashboard")
    shutil.copytree(template, tmp / "data")
    config = Config(
        data_dir=str(tmp / "data"),
        nats_port=free_port(),
        api_port=free_port(),
        heartbeat_interval=0.2,
        down_after=1.0,
        announce_interval=0.2,
    )
    (tmp / "logs").mkdir()
    c = Cluster(config, tmp / "logs")
    try:
        c.start("up", "--nodes", "3", "--allow-shell", "--tasks", "taskmods.basic", log="up")
        _until(lambda: (config.data_path / "auth" / "api-admin.token").exists(), 60, "the token")

        def three_up() -> bool:
            nodes = c.api("node_status")
            return sum(1 for n in nodes if n["status"] == "UP" and n["keys"]) == 3

        _until(three_up, 90, "three nodes with task workers")
        shutil.copy(EXAMPLES / "suspension.py", tmp / "suspension.py")
        c.start("guardian", "run", str(tmp / "suspension.py"), "--name", "SUS1", log="SUS1")
        yield c
    finally:
        c.stop()


@pytest.fixture(scope="module")
def browser(cluster: Cluster) -> Iterator[Any]:
    with playwright_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def page(browser: Any, cluster: Cluster, tmp_path: Path) -> Iterator[Any]:
    context = browser.new_context(base_url=cluster.url, viewport={"width": 1280, "height": 900})
    context.set_default_timeout(scaled(20) * 1000)
    pg = context.new_page()
    try:
        yield pg
    finally:
        context.close()


def shot(page: Any, tmp_path: Path, name: str) -> None:
    """Save a screenshot in the test's tmp dir and in test-artifacts/."""
    path = tmp_path / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    ARTIFACTS.mkdir(exist_ok=True)
    shutil.copy(path, ARTIFACTS / f"{name}.png")


def sign_in(page: Any, cluster: Cluster) -> None:
    page.goto("/ui/fleet")
    assert "/ui/login" in page.url  # not signed in: sent to sign in first
    page.fill("#token-form input[name=token]", cluster.token())
    page.click("#token-form button")
    page.wait_for_url("**/ui/fleet")


def test_sign_in_and_see_three_nodes_up_then_one_goes_down_live(
    page: Any, cluster: Cluster, tmp_path: Path
) -> None:
    expect = playwright_api.expect
    login = page.goto("/ui/login")
    assert login is not None and login.status == 200
    shot(page, tmp_path, "login")
    sign_in(page, cluster)
    rows = page.locator("#nodes tbody tr")
    expect(rows).to_have_count(3)
    for name in ("node-1", "node-2", "node-3"):
        expect(page.locator(f'#nodes tr[data-node="{name}"] .status')).to_have_text("UP")
    shot(page, tmp_path, "fleet")
    # Kill node-3's process: the page turns it DOWN by itself, without a reload.
    updates = page.evaluate("document.body.dataset.updates || '0'")
    (n3,) = [n for n in cluster.api("node_list")["items"] if n["name"] == "node-3"]
    os.kill(n3["pid"], signal.SIGKILL)
    expect(page.locator('#nodes tr[data-node="node-3"] .status')).to_have_text(
        "DOWN", timeout=scaled(30) * 1000
    )
    assert int(page.evaluate("document.body.dataset.updates")) > int(updates)
    expect(page.locator('#nodes tr[data-node="node-1"] .status')).to_have_text("UP")
    shot(page, tmp_path, "fleet-node-down")
    page.click('#nodes tr[data-node="node-1"] a')
    expect(page.locator("#node-status")).to_have_text("UP")
    shot(page, tmp_path, "node")


def test_send_a_shell_command_to_a_glob_and_see_each_nodes_result(
    page: Any, cluster: Cluster, tmp_path: Path
) -> None:
    expect = playwright_api.expect
    sign_in(page, cluster)
    page.goto("/ui/commands")
    assert page.locator("#target-hints option").first.get_attribute("value") == "*"
    page.fill("#command-form input[name=targets]", "node-[12]")
    page.select_option("#kind", "shell")
    page.fill("#command-form input[name=cmd]", "echo hello-from-shell")
    page.click("#command-form button")
    page.wait_for_url("**/ui/commands/*")
    # Right after sending, before any reload: the command's head is filled in.
    expect(page.locator("#cmd-kind")).to_have_text("shell")
    expect(page.locator("#cmd-targets")).to_have_text("node-[12]")
    expect(page.locator("#cmd-actor")).to_contain_text("token:")
    for name in ("node-1", "node-2"):
        row = page.locator(f'#outcomes tr[data-node="{name}"]')
        expect(row.locator(".state")).to_have_text("done", timeout=scaled(30) * 1000)
        expect(row).to_contain_text("hello-from-shell")
    expect(page.locator("#outcomes tbody tr")).to_have_count(2)
    shot(page, tmp_path, "command")
    page.goto("/ui/commands")
    expect(page.locator("#history tbody tr").first).to_contain_text("done 2")
    shot(page, tmp_path, "commands")


def test_queue_a_task_watch_its_progress_and_cancel_it(
    page: Any, cluster: Cluster, tmp_path: Path
) -> None:
    expect = playwright_api.expect
    sign_in(page, cluster)
    page.goto("/ui/tasks")
    never = tmp_path / "never-created"
    page.fill("#queue-form input[name=task_key]", "wait_for_file")
    page.fill("#queue-form textarea[name=args]", f'{{"path": "{never}"}}')
    page.click("#queue-form button")
    expect(page.locator("#flash")).to_contain_text("queued wait_for_file")
    row = page.locator("#running tbody tr").first
    expect(row).to_contain_text("wait_for_file")
    expect(row).to_contain_text("waiting")  # its progress message, arrived live
    bar = row.locator("progress")
    expect(bar).to_have_attribute("value", "50")
    shot(page, tmp_path, "tasks")
    ident = row.get_attribute("data-task")
    row.locator("button.cancel").click()
    expect(page.locator("#flash")).to_contain_text(f"asked instance {ident} to stop")
    expect(page.locator(f'#running tr[data-task="{ident}"]')).to_have_count(0)
    page.goto(f"/ui/tasks/{ident}")
    expect(page.locator("#task-status")).to_have_text("cancelled")
    shot(page, tmp_path, "task")
    page.goto("/ui/history/wait_for_file")
    expect(page.locator("#history tbody tr")).to_have_count(1)


def test_request_a_guardian_state_and_see_it_arrive(
    page: Any, cluster: Cluster, tmp_path: Path
) -> None:
    expect = playwright_api.expect
    sign_in(page, cluster)
    page.goto("/ui/guardians")
    expect(page.locator('#guardians tr[data-guardian="SUS1"]')).to_have_count(
        1, timeout=scaled(60) * 1000
    )
    shot(page, tmp_path, "guardians")
    page.click('#guardians tr[data-guardian="SUS1"] a')
    page.wait_for_url("**/ui/guardians/SUS1")
    page.select_option("#mode-form select[name=mode]", "MANUAL")
    page.click("#mode-form button")
    expect(page.locator("#g-mode")).to_have_text("MANUAL")
    page.select_option("#request-form select[name=state]", "ALIGNED")
    page.click("#request-form button")
    expect(page.locator("#g-request")).to_have_text("ALIGNED")
    expect(page.locator("#g-state")).to_have_text("ALIGNED", timeout=scaled(30) * 1000)
    # The Guardian seed's NOMINAL and OK: MANUAL is never OK; back in AUTO at nominal, it is.
    expect(page.locator("#g-nominal")).to_have_text("ALIGNED")
    expect(page.locator("#g-ok")).to_have_text("not OK")
    page.select_option("#mode-form select[name=mode]", "AUTO")
    page.click("#mode-form button")
    expect(page.locator("#g-ok")).to_have_text("OK", timeout=scaled(30) * 1000)
    # The state graph, laid out in the browser (no Graphviz): every state drawn, the current
    # one highlighted, and the highlight moving live with the next request.
    problems = watch_errors(page)
    page.reload()
    graph = page.locator("#graph svg.state-graph")
    expect(graph).to_be_visible()
    expect(graph.locator("g.gnode")).to_have_count(
        len(page.request.get("/ui/guardians/SUS1/graph.json").json()["states"])
    )
    expect(graph.locator("g.gnode.current")).to_have_attribute("data-state", "ALIGNED")
    expect(graph.locator("g.gnode.requested")).to_have_attribute("data-state", "ALIGNED")
    assert graph.locator("path.gedge").count() >= 4
    shot(page, tmp_path, "guardian")
    assert problems == []
    page.select_option("#mode-form select[name=mode]", "MANUAL")
    page.click("#mode-form button")
    page.select_option("#request-form select[name=state]", "DOWN")
    page.click("#request-form button")
    expect(graph.locator("g.gnode.requested")).to_have_attribute("data-state", "DOWN")
    expect(graph.locator("g.gnode.current")).to_have_attribute(
        "data-state", "DOWN", timeout=scaled(30) * 1000
    )


def test_groups_and_agents_page_renders_live(page: Any, cluster: Cluster, tmp_path: Path) -> None:
    expect = playwright_api.expect
    sign_in(page, cluster)
    page.goto("/ui/groups")
    expect(page.locator("#agents tbody")).not_to_contain_text("gathering")
    shot(page, tmp_path, "groups")


def report(cluster: Cluster, node: str, topic: str, value: float, at: float) -> None:
    """Publish a data report as ``node`` would (with its own credential)."""
    from corral import bus, subjects, wire

    async def publish() -> None:
        nc = await bus.connect(cluster.config, f"node-{node}")
        try:
            msg = wire.Report(topic=topic, value=value, at=at)
            await nc.publish(
                subjects.node_in(node, "report"), wire.encode(msg), headers=wire.HEADERS
            )
            await nc.flush()
        finally:
            await nc.close()

    # Playwright's sync API runs an event loop in this thread: publish from another one.
    with ThreadPoolExecutor(1) as pool:
        pool.submit(lambda: asyncio.run(publish())).result(scaled(20))


def test_reports_draw_a_sparkline_of_numeric_values(
    page: Any, cluster: Cluster, tmp_path: Path
) -> None:
    expect = playwright_api.expect
    sign_in(page, cluster)
    page.goto("/ui/reports")
    expect(page.locator("#live-state")).to_have_class("live-state live-on")
    row = page.locator("#reports tbody tr").filter(has_text="node-2")
    start = time.time()
    for i, value in enumerate((1.5, 4.25, 2.75)):
        report(cluster, "node-2", "temperature", value, start + i)
        expect(row).to_contain_text(str(value))
    path = row.locator("svg.spark path")
    expect(path).to_have_count(1)
    assert (path.get_attribute("d") or "").count("L") == 2  # three points, two segments
    shot(page, tmp_path, "reports")
    page.goto("/ui/nodes/node-2")
    expect(page.locator("#node-reports")).to_contain_text("temperature")


def test_csrf_and_unauthenticated_requests_are_refused(cluster: Cluster) -> None:
    with httpx.Client(base_url=cluster.url, timeout=scaled(10)) as web:
        page = web.get("/ui/fleet")
        assert page.status_code == 303 and page.headers["location"].startswith("/ui/login")
        assert web.get("/ui/events/fleet").status_code == 401
        login = web.get("/ui/login").text
        nonce = login.split('name="nonce" value="')[1].split('"')[0]
        web.post("/ui/login", data={"nonce": nonce, "token": cluster.token()})
        before = cluster.api("list_queue")["total"]
        form = {"task_key": "noop", "args": "{}"}
        assert web.post("/ui/tasks", data=form).status_code == 403
        assert web.post("/ui/tasks", data={**form, "csrf": "wrong"}).status_code == 403
        assert cluster.api("list_queue")["total"] == before
        history = cluster.api("task_history", key="noop")
        assert history["total"] == 0


def watch_errors(page: Any) -> list[str]:
    """Collect the page's script errors and console errors (CSP refusals among them)."""
    problems: list[str] = []
    page.on("pageerror", lambda exc: problems.append(str(exc)))
    page.on("console", lambda msg: problems.append(msg.text) if msg.type == "error" else None)
    return problems


def chart_number(page: Any, chart: str, field: str) -> float:
    """A chart's ``data-<field>`` (charts.js: ``points`` drawn, ``total`` of every value)."""
    return float(page.locator(f"#{chart}").get_attribute(f"data-{field}") or 0)


def test_charts_draw_and_move_with_the_fleet(page: Any, cluster: Cluster, tmp_path: Path) -> None:
    expect = playwright_api.expect
    sign_in(page, cluster)
    problems = watch_errors(page)
    page.goto("/ui/charts")
    expect(page.locator("#live-state")).to_have_class("live-state live-on")
    for chart in (
        "chart-nodes",
        "chart-queue",
        "chart-throughput",
        "chart-latency",
        "chart-commands",
    ):
        expect(page.locator(f"#{chart} canvas").first).to_be_visible()
        expect(page.locator(f"#{chart}")).not_to_have_attribute("data-points", "0")
    # No node sends CPU or memory stats yet (or some do): either way the chart says so.
    for chart in ("chart-cpu", "chart-mem"):
        expect(page.locator(f"#{chart} canvas, #{chart} .nodata").first).to_be_visible()
    assert chart_number(page, "chart-nodes", "total") > 0  # nodes were UP
    points = chart_number(page, "chart-nodes", "points")
    ended = chart_number(page, "chart-throughput", "total")
    outcomes = chart_number(page, "chart-commands", "total")
    # Three tasks and a command: the throughput and command charts gain new points.
    for _ in range(3):
        cluster.api("queue_task", task_key="noop")
    sent = cluster.api("send_command", targets=["node-1"], kind="get", name="version")
    assert sent
    timeout = scaled(30) * 1000
    page.wait_for_function(
        "([p]) => +document.getElementById('chart-nodes').dataset.points > p",
        arg=[points],
        timeout=timeout,
    )
    page.wait_for_function(
        "([n]) => +document.getElementById('chart-throughput').dataset.total >= n + 3",
        arg=[ended],
        timeout=timeout,
    )
    page.wait_for_function(
        "([n]) => +document.getElementById('chart-commands').dataset.total >= n + 1",
        arg=[outcomes],
        timeout=timeout,
    )
    shot(page, tmp_path, "charts")
    assert problems == []  # no script error, nothing the Content-Security-Policy refused


def offline(context: Any, cluster: Cluster) -> list[str]:
    """Refuse every request that leaves the controller; the list of those refused."""
    refused: list[str] = []

    def route(r: Any) -> None:
        if r.request.url.startswith(cluster.url):
            r.continue_()
        else:
            refused.append(r.request.url)
            r.abort()

    context.route("**/*", route)
    return refused


def test_api_docs_work_with_no_network(page: Any, cluster: Cluster, tmp_path: Path) -> None:
    expect = playwright_api.expect
    refused = offline(page.context, cluster)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto("/docs")
    expect(page.locator(".swagger-ui .info .title")).to_contain_text("corral controller API")
    expect(page.locator(".opblock-summary-path").filter(has_text="/node_status")).to_have_count(1)
    assert page.evaluate("typeof window.SwaggerUIBundle") == "function"
    shot(page, tmp_path, "docs")
    page.goto("/redoc")
    expect(page.locator("h1").first).to_contain_text("corral controller API")
    expect(page.get_by_text("node_status").first).to_be_attached()
    shot(page, tmp_path, "redoc")
    # ReDoc's footer asks for Redocly's logo from its CDN; offline the image hides itself.
    assert [u for u in refused if not u.endswith("cdn.redoc.ly/redoc/logo-mini.svg")] == []
    assert errors == []


def test_forget_a_node_that_left(page: Any, cluster: Cluster, tmp_path: Path) -> None:
    expect = playwright_api.expect
    creds = cluster.logs / "leaver.creds"
    enrolled = subprocess.run(
        corral_argv(cluster.config, "enroll", "leaver", "--out", str(creds)),
        env=child_env(cluster.config),
        capture_output=True,
        text=True,
        timeout=scaled(60),
    )
    assert enrolled.returncode == 0, enrolled.stderr
    leaver = cluster.start("node", "--name", "leaver", "--creds", str(creds), log="leaver")

    def status() -> str:
        found = [n for n in cluster.api("node_list")["items"] if n["name"] == "leaver"]
        return found[0]["status"] if found else ""

    _until(lambda: status() == "UP", 60, "node leaver UP")
    sign_in(page, cluster)
    page.goto("/ui/nodes/leaver")
    expect(page.locator("#forget-form")).to_be_hidden()  # UP: nothing to forget yet
    leaver.send_signal(signal.SIGTERM)  # a clean stop: the node leaves
    leaver.wait(scaled(30))
    expect(page.locator("#node-status")).to_have_text("LEFT", timeout=scaled(30) * 1000)
    expect(page.locator("#forget-form")).to_be_visible()
    shot(page, tmp_path, "node-left")
    asked: list[str] = []

    def answer(dialog: Any) -> None:
        asked.append(dialog.message)
        dialog.accept()

    page.on("dialog", answer)
    page.click("#forget")
    page.wait_for_url("**/ui/fleet")
    expect(page.locator("#flash")).to_contain_text("node leaver forgotten")
    expect(page.locator('#nodes tr[data-node="leaver"]')).to_have_count(0)
    assert asked and "leaver" in asked[0]
    assert status() == ""
