"""`p2pswarm dashboard` in a real browser (headless Chromium through selenium): a 3-node cluster with a
published service; the page shows the nodes by zone, the service and its mesh routes, the events and the
last chaos run's charts, updates itself when the service is scaled (no reload), escapes a hostile label,
and its screenshot is a real picture.  ``P2PSWARM_UPDATE_DOCS=1`` also writes it to docs/dashboard.png."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import time

import pytest

from p2pswarm.api.client import ApiError
from p2pswarm.testing.localcluster import REPO, cli_env, free_port, wait_until

from .cli_results import ok

APP = str(REPO / "tests" / "apps" / "http_server.py")
CHAOS_REPORT = REPO / "simulations" / "results" / "chaos-mixed.json"
HOSTILE = "<img src=x onerror=window.pwned=1><b>bold</b>"
WIDTH, HEIGHT = 1400, 1500


def browser():
    """Headless Chromium, or a skip that says why it cannot run here."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (the test extra)")
    from selenium.common.exceptions import WebDriverException
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if binary is None or driver is None:
        pytest.skip("Chromium and chromedriver are not installed (apt-get install chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars",
                f"--window-size={WIDTH},{HEIGHT}", "--force-device-scale-factor=1"):
        options.add_argument(arg)
    try:
        return webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=driver))
    except WebDriverException as exc:
        pytest.skip(f"Chromium cannot run here: {str(exc.msg or exc).splitlines()[0]}")


def text_of(driver, css: str) -> str:
    """The visible text of every element ``css`` matches, read in one go (the page redraws them every poll)."""
    return driver.execute_script("return [...document.querySelectorAll(arguments[0])].map(e => e.innerText)"
                                 ".join(' ')", css)


def test_dashboard_shows_the_cluster_and_updates_live(cluster, tmp_path):
    driver = browser()
    dashboard = None
    try:
        nodes = cluster.start_joined(3)
        wait_until(lambda: _leader_and_members(nodes[0], 3), 60, "a leader and 3 alive, registered members")
        dd = ("--data-dir", str(nodes[0].data_dir))
        label(nodes[0], nodes[0].name, {"zone": "east", "note": HOSTILE})
        label(nodes[0], nodes[1].name, {"zone": "west"})
        port = cluster.published_port()
        ok(cluster.cli("service", "create", "web", "--replicas", "1", "--publish", f"{port}:dynamic", "-d", *dd,
                       "--", sys.executable, APP, timeout=60))
        listen = f"127.0.0.1:{free_port('127.0.0.1')}"
        dashboard = subprocess.Popen(cluster.command("dashboard", "--listen", listen, "--chaos-report",
                                                     str(CHAOS_REPORT), *dd),
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, cwd=REPO, env=cli_env())
        cluster.pids.add(dashboard.pid)
        if not _serving(listen):
            pytest.fail(_stderr(dashboard))
        driver.get(f"http://{listen}/")

        # nodes by zone, with state and Raft role; the service; its mesh route; the events; the chaos charts
        wait_until(lambda: "1/1" in text_of(driver, '#services tr[data-service="web"] td.replicas'), 30,
                   "the service shown with 1/1 replicas")
        zones = driver.execute_script("return [...document.querySelectorAll('#zones h3')].map(h => h.textContent)")
        assert zones == ["zone east", "zone west", "no zone label"], zones  # zones by name, unlabelled last
        page = text_of(driver, "#zones")
        assert all(n.name in page for n in nodes) and "alive" in page and "leader" in page, page
        assert HOSTILE in page  # shown as text...
        assert driver.execute_script("return window.pwned === undefined && "
                                     "document.querySelector('#zones img, #zones b') === null")  # ...never markup
        wait_until(lambda: f"port {port}/tcp" in text_of(driver, "#routes h3"), 30, "the mesh route of the port")
        wait_until(lambda: "service create web" in text_of(driver, "#events"), 30, "the create event")
        wait_until(lambda: driver.execute_script("return document.querySelectorAll('#chaos-panel canvas').length")
                   >= 2, 30, "the chaos charts drawn")
        assert "kill node-2" in text_of(driver, "#chaos-summary")

        # scaling shows up without a reload (a reload would drop the marker set on the window)
        driver.execute_script("window.sameDocument = true")
        ok(cluster.cli("service", "scale", "web=2", "-d", *dd, timeout=60))
        wait_until(lambda: "2/2" in text_of(driver, '#services tr[data-service="web"] td.replicas'), 30,
                   "the page showing 2/2 replicas")
        assert driver.execute_script("return window.sameDocument === true")
        wait_until(lambda: "service scale web" in text_of(driver, "#events"), 30, "the scale event")
        nodes[0].api.post(f"/v1/nodes/{nodes[0].name}/update", {"label_add": {}, "label_rm": ["note"]})  # for docs/
        wait_until(lambda: HOSTILE not in text_of(driver, "#zones"), 30, "the label removed from the page")

        png = driver.get_screenshot_as_png()
        (tmp_path / "dashboard.png").write_bytes(png)
        if os.environ.get("P2PSWARM_UPDATE_DOCS") == "1":
            (REPO / "docs" / "dashboard.png").write_bytes(png)
        assert_real_picture(png)
    finally:
        driver.quit()
        if dashboard is not None:
            dashboard.kill()
            dashboard.wait(timeout=10)


def _leader_and_members(node, n: int) -> bool:
    try:
        top = node.api.get("/v1/top")
    except ApiError:
        return False
    registered = [m for m in top["nodes"] if m["status"] == "alive" and m["availability"] is not None]
    return bool((top.get("cluster") or {}).get("leader")) and len(registered) == n  # in SWIM and in the cluster state


def label(node, name: str, labels: dict[str, str]) -> None:
    """What `node update NAME --label-add k=v` sends (through the API: a CLI process costs seconds here)."""
    node.api.post(f"/v1/nodes/{name}/update", {"label_add": labels, "label_rm": []})


def _serving(listen: str) -> bool:
    import urllib.request
    deadline = time.time() + 15
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"http://{listen}/", timeout=1) as response:
                return response.status == 200
        except OSError:
            time.sleep(0.1)
    return False


def _stderr(proc: subprocess.Popen) -> str:
    proc.kill()
    return f"the dashboard did not start: {proc.communicate(timeout=10)[1].decode(errors='replace')}"


def assert_real_picture(png: bytes) -> None:
    """The screenshot has the window's size and what the page draws: the dark header, green and red."""
    image = pytest.importorskip("PIL.Image", reason="Pillow (with the plot extra) reads the screenshot")
    picture = image.open(io.BytesIO(png)).convert("RGB")
    assert picture.size[0] == WIDTH and picture.size[1] > HEIGHT // 2, picture.size
    colours = picture.getcolors(maxcolors=1 << 20) or []
    assert len(colours) > 50, len(colours)  # text, charts and panels: not a blank page
    present = {rgb for _, rgb in colours}
    for name, rgb in (("header", (0x1D, 0x24, 0x30)), ("ok green", (0x2F, 0x8F, 0x46)),
                      ("kill red", (0xC8, 0x37, 0x2D))):
        assert rgb in present, f"no {name} pixel in the screenshot"
