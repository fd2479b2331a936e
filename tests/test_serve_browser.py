"""`amnet serve` in a real browser: headless Chromium (Debian's chromium + chromium-driver, which
.ci/browser installs) driven through selenium.

The test starts `amnet serve` itself on a free loopback port, uploads a photo, waits for its
score and checks it equals `amnet predict`'s on the same image (to 1e-6), checks the page (the
demo warning, the model card, the table, the figure, the CSV download) and saves a screenshot to
artifacts/serve-screenshot.png (CI keeps it), then stops the server with Ctrl-C (SIGINT).

Offline, checked both ways: the browser resolves no host but 127.0.0.1 and every request the
page makes must go to the server (or be data:/blob:); the server's outgoing HTTP(S) goes through
a recording proxy that must see nothing (gradio's analytics and version check would show there).
Skips with the reason when selenium, Chromium or chromedriver is missing.
"""
from __future__ import annotations

import csv
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from click.testing import CliRunner

from conftest import DEMO_TRAIN_CONFIG, REPO, save_tiny_head, subprocess_env, write_image

pytestmark = pytest.mark.slow

ARTIFACTS = Path(os.environ.get("AMNET_ARTIFACTS", REPO / "artifacts"))
# a real photo when the shared data is here; otherwise a generated picture does the same job
PHOTO = REPO.parent / "shared" / "data" / "imagenet-samples" / "n01440764_tench.JPEG"
START_TIMEOUT = 180  # s: gradio + torch imports and the trunk, on a busy 2-core machine


def _browser_paths() -> tuple[str, str]:
    pytest.importorskip("selenium", reason="selenium is not installed (pip install selenium)")
    chromium = next(filter(None, map(shutil.which, ("chromium", "chromium-browser",
                                                    "google-chrome"))), None)
    driver = shutil.which("chromedriver")
    if not chromium or not driver:
        pytest.skip("Chromium or chromedriver is not installed (Debian: apt-get install chromium "
                    "chromium-driver; .ci/browser does it in CI)")
    return chromium, driver


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Recorder(BaseHTTPRequestHandler):
    """A proxy that forwards nothing: it records each request line and answers 502."""
    seen: list[str] = []

    def _record(self) -> None:
        type(self).seen.append(self.requestline)
        self.send_error(502, "offline test: no outgoing requests")

    do_GET = do_POST = do_PUT = do_HEAD = do_CONNECT = _record

    def log_message(self, *args) -> None:  # keep pytest's output clean
        pass


def _wait_until_up(url: str, proc: subprocess.Popen, log: Path) -> None:
    direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"amnet serve exited ({proc.returncode}):\n{log.read_text()}")
        try:
            with direct.open(url, timeout=5) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.5)
    pytest.fail(f"amnet serve did not answer at {url} in {START_TIMEOUT} s:\n{log.read_text()}")


def _chrome(chromium: str, chromedriver: str, downloads: Path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1400,2200", "--no-proxy-server",
                # offline: any host but the server's fails to resolve
                "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    driver = webdriver.Chrome(service=Service(chromedriver), options=opts)
    driver.execute_cdp_cmd("Browser.setDownloadBehavior",
                           {"behavior": "allow", "downloadPath": str(downloads)})
    return driver


def _requested_urls(driver) -> set[str]:
    urls = set()
    for entry in driver.get_log("performance"):
        msg = json.loads(entry["message"])["message"]
        if msg["method"] == "Network.requestWillBeSent":
            urls.add(msg["params"]["request"]["url"])
    return urls


def _read_csv(path: Path) -> list[list[str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.reader(fh))


def test_serve_in_a_browser_scores_like_predict(tmp_path):
    chromium, chromedriver = _browser_paths()
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from amnet.cli import main

    heads = [save_tiny_head(tmp_path / f"{k}.pt", seed=k, size=224, train_config=DEMO_TRAIN_CONFIG)
             for k in (1, 2)]
    photo = PHOTO if PHOTO.is_file() else write_image(tmp_path / "photo.jpg", w=320, h=240)
    ck_args = [a for h in heads for a in ("--checkpoint", str(h))]
    res = CliRunner().invoke(main, ["predict", *ck_args, str(photo), "--out",
                                    str(tmp_path / "predict.csv")])
    assert res.exit_code == 0, res.output
    predicted = _read_csv(tmp_path / "predict.csv")
    want = float(predicted[1][1])

    _Recorder.seen = []
    proxy = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    proxy_url = f"http://127.0.0.1:{proxy.server_address[1]}"
    port = _free_port()
    url = f"http://127.0.0.1:{port}/"
    log = tmp_path / "serve.log"
    env = subprocess_env(**{k: proxy_url for k in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY",
                                                   "http_proxy", "https_proxy", "all_proxy")},
                         NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost")
    with open(log, "w") as out:
        # SIGINT as at a terminal, even where pytest runs with it ignored (a shell's background
        # job), which the server would inherit and then never see the Ctrl-C below
        server = subprocess.Popen([sys.executable, "-c", "from amnet.cli import main; main()",
                                   "serve", *ck_args, "--port", str(port)], env=env,
                                  stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path,
                                  preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    driver = None
    try:
        _wait_until_up(url, server, log)
        downloads = tmp_path / "downloads"
        downloads.mkdir()
        driver = _chrome(chromium, chromedriver, downloads)
        wait = WebDriverWait(driver, 120)
        driver.get(url)
        upload = wait.until(lambda d: d.find_elements(By.CSS_SELECTOR,
                                                      "#amnet-files input[type=file]"))[0]
        # the page says what the model is, and that it is the synthetic demo's
        warning = driver.find_element(By.ID, "amnet-warning")
        assert warning.is_displayed()
        assert "Demo model, not a memorability model for photos" in warning.text
        card = driver.find_element(By.ID, "amnet-model-card").text
        assert "random:0" in card and "resnet50 layer3" in card and "Trained on: demo" in card

        upload.send_keys(str(photo))
        item = wait.until(lambda d: d.find_elements(By.CSS_SELECTOR,
                                                    "#amnet-results li.amnet-score"))[0]
        shown = float(item.get_attribute("data-score"))
        assert item.get_attribute("data-name") == photo.name
        assert abs(shown - want) <= 1e-6, (shown, want)
        assert item.find_element(By.CSS_SELECTOR, ".amnet-value").text == predicted[1][1]
        steps = " + ".join(f"{float(v):.3f}" for v in predicted[1][2:5])
        assert f"(step scores {steps})" in item.text
        # the attention figure has loaded (served by the page's own server)
        figure = item.find_element(By.CSS_SELECTOR, "img.amnet-figure")
        wait.until(lambda d: d.execute_script(
            "return arguments[0].complete && arguments[0].naturalWidth > 0", figure))
        assert figure.get_property("naturalWidth") > 2.5 * figure.get_property("naturalHeight")
        table = driver.find_element(By.ID, "amnet-table").text
        # the table shows the CSV's score as a number (a trailing zero of "1.817670" dropped)
        cells = [float(c) for c in table.split() if re.fullmatch(r"-?\d+(\.\d+)?", c)]
        assert photo.name in table
        assert any(abs(c - float(predicted[1][1])) <= 1e-6 for c in cells), (table, predicted[1])

        # the CSV download: amnet predict's file, the path column holding the file's name
        button = wait.until(lambda d: d.find_element(By.ID, "amnet-csv"))
        wait.until(lambda d: button.is_displayed())
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(ARTIFACTS / "serve-screenshot.png"))
        button.click()
        wait.until(lambda d: [p for p in downloads.glob("*.csv")])
        got = _read_csv(next(downloads.glob("*.csv")))
        assert got == [predicted[0], [photo.name, *predicted[1][1:]]]

        # nothing but the server (and inline data) was asked for
        base = url.rstrip("/")
        elsewhere = sorted(u for u in _requested_urls(driver)
                           if not u.startswith((base + "/", "data:", "blob:")) and u != base)
        assert elsewhere == [], elsewhere
    finally:
        if driver is not None:
            driver.quit()
        if server.poll() is None:
            server.send_signal(signal.SIGINT)  # Ctrl-C: gradio closes, amnet cleans its folder
            try:
                server.wait(60)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
        proxy.shutdown()
    assert server.returncode == 0, log.read_text()
    assert _Recorder.seen == [], _Recorder.seen  # the server asked no one for anything
    assert (ARTIFACTS / "serve-screenshot.png").stat().st_size > 10_000
