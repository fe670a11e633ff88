"""Headless Chromium for the operator page's tests: the system browser, never a download."""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service as DriverService
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.wait import WebDriverWait

from tests.support import AUTH, LIVE_KEY, REPO, signed

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
INSTALL = "no Chromium for the operator page's tests: apt-get install -y chromium chromium-driver"
SCREENSHOTS = REPO / "screenshots"  # git-ignored
WAIT_SECONDS = 20


def browser_missing() -> str | None:
    """Why the browser tests cannot run here, or None."""
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    return f"{INSTALL} (missing {', '.join(missing)})" if missing else None


@contextmanager
def chromium(width: int = 1280, height: int = 1500) -> Iterator[WebDriver]:
    """Headless Chromium driven by the system chromedriver; skips (or fails in CI) without it."""
    problem = browser_missing()
    if problem is not None:
        if os.environ.get("PROJECTOR_REQUIRE_BROWSER") == "1":
            pytest.fail(f"PROJECTOR_REQUIRE_BROWSER=1 but {problem}")
        pytest.skip(problem)
    # Selenium Manager must never fetch a browser or a driver: both paths are given, and offline.
    os.environ["SE_OFFLINE"] = "true"
    options = Options()
    options.binary_location = str(CHROMIUM)
    for argument in (
        "--headless=new",
        "--no-sandbox",  # CI runs as root in a container
        "--disable-dev-shm-usage",
        "--disable-gpu",
        f"--window-size={width},{height}",
    ):
        options.add_argument(argument)
    driver = webdriver.Chrome(
        service=DriverService(executable_path=str(CHROMEDRIVER)), options=options
    )
    driver.set_page_load_timeout(WAIT_SECONDS)
    driver.set_script_timeout(WAIT_SECONDS)
    try:
        yield driver
    finally:
        driver.quit()


def wait(driver: WebDriver) -> WebDriverWait[WebDriver]:
    return WebDriverWait(driver, WAIT_SECONDS, poll_frequency=0.05)


def log_in(driver: WebDriver, base_url: str, token: str) -> None:
    """Open /ui afresh (no token kept), type the token, and wait for the first full render."""
    driver.get(f"{base_url}/ui")
    driver.execute_script("sessionStorage.clear()")
    driver.refresh()
    field = wait(driver).until(expected_conditions.visibility_of_element_located((By.ID, "token")))
    field.send_keys(token)
    driver.find_element(By.ID, "login-button").click()
    wait(driver).until(
        expected_conditions.presence_of_element_located((By.CSS_SELECTOR, "body[data-loaded]"))
    )


def screenshot(driver: WebDriver, name: str) -> Path:
    SCREENSHOTS.mkdir(exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    driver.save_screenshot(str(path))
    return path


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def send(base_url: str, payload: dict[str, object], key: str = LIVE_KEY) -> tuple[int, bytes]:
    """POST one signed delivery; its status and the exact body sent."""
    body = json.dumps(payload).encode()
    request = urllib.request.Request(
        f"{base_url}/webhooks/refold", data=body, headers=signed(body, key), method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, body
    except urllib.error.HTTPError as refused:
        return refused.code, body


def wait_for_head(base_url: str, at_least: int, timeout: float = 60) -> None:
    """Wait (bounded) until the log holds at least `at_least` deliveries (a seed finishes)."""
    deadline = time.monotonic() + timeout
    while True:
        request = urllib.request.Request(f"{base_url}/v1/projections", headers=AUTH)
        with urllib.request.urlopen(request, timeout=5) as answer:
            state = json.loads(answer.read())
        caught_up = all(p["position"] == state["log_head"] for p in state["projections"])
        if state["log_head"] >= at_least and caught_up:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"the log did not reach {at_least} in {timeout}s: {state}")
        time.sleep(0.1)
