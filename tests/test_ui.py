"""projector.ui: GET /ui, and the operator page driven in headless Chromium on a real server."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support import expected_conditions

from projector.ui import ASSETS
from tests import browser_support
from tests.browser_support import chromium, log_in, screenshot, send, unique, wait, wait_for_head
from tests.support import READ_TOKEN, SAMPLE, Service, sample_bodies

pytestmark = pytest.mark.e2e

CREATED_AT = "Wed, 01 Jul 2026 09:15:00 GMT"


def connection(
    account: str, event: str = "Connection Expired", **fields: object
) -> dict[str, object]:
    """A connection payload; a field given as None is left out."""
    payload = {
        "linked_account_id": account,
        "org_id": "645270e37917442c4307297a",
        "environment": "live",
        "type": "General",
        "event": event,
        "slug": "gmail",
        "createdAt": CREATED_AT,
        **fields,
    }
    return {name: value for name, value in payload.items() if value is not None}


# --- the page as served -------------------------------------------------------------------


async def test_the_page_and_its_assets_are_served_without_a_token_from_the_package(
    client: TestClient,
) -> None:
    for path, (name, content_type) in ASSETS.items():
        answer = await client.get(path)
        assert answer.status == 200, path
        assert answer.content_type == content_type
        shipped = (Path(__file__).parent.parent / "projector" / name).read_bytes()
        assert await answer.read() == shipped
        policy = answer.headers["Content-Security-Policy"]
        assert "script-src 'self'" in policy
        assert "connect-src 'self'" in policy


async def test_the_page_loads_nothing_from_another_host_and_never_parses_api_text_as_html(
    client: TestClient,
) -> None:
    page = await (await client.get("/ui")).text()
    script = await (await client.get("/ui/ui.js")).text()
    style = await (await client.get("/ui/ui.css")).text()
    # The SVG namespace is a name the DOM needs, never fetched.
    script_loads = script.replace('"http://www.w3.org/2000/svg"', "")
    for text in (page, script_loads, style):
        assert re.findall(r"(?:https?:)?//[a-z0-9.-]+\.[a-z]{2,}", text, re.IGNORECASE) == []
        assert "@import" not in text
        assert "url(" not in text
    # Relative, so the page works behind a proxy that serves the service under a prefix.
    assert 'src="ui/ui.js"' in page
    assert 'href="ui/ui.css"' in page
    for parser in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
        assert parser not in script
    assert "sessionStorage" in script
    assert "localStorage" not in script


def test_without_chromium_the_browser_tests_skip_saying_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(browser_support, "CHROMIUM", tmp_path / "no-chromium")
    monkeypatch.delenv("PROJECTOR_REQUIRE_BROWSER", raising=False)
    with pytest.raises(pytest.skip.Exception) as skipped, chromium():
        pass
    assert "apt-get install -y chromium chromium-driver" in str(skipped.value)
    assert str(tmp_path / "no-chromium") in str(skipped.value)


def test_without_chromium_the_browser_tests_fail_when_the_browser_is_required(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(browser_support, "CHROMEDRIVER", tmp_path / "no-chromedriver")
    monkeypatch.setenv("PROJECTOR_REQUIRE_BROWSER", "1")
    with pytest.raises(pytest.fail.Exception) as failed, chromium():
        pass
    assert "PROJECTOR_REQUIRE_BROWSER=1" in str(failed.value)
    assert "apt-get install -y chromium chromium-driver" in str(failed.value)


# --- in the browser -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def sample_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """A real `projector serve` loaded with the sample stream, as `make run` is."""
    db = tmp_path_factory.mktemp("ui") / "projector.sqlite3"
    service = Service(db, serve_args=("--seed", str(SAMPLE))).start()
    try:
        wait_for_head(service.url, len(sample_bodies()))
        yield service
    finally:
        service.kill()


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    with chromium() as driver:
        yield driver


def rows(driver: WebDriver, table: str) -> list[list[str]]:
    """A table's cells as shown, read in one script: the page may re-render it at any time."""
    script = (
        "return Array.from(document.querySelectorAll(arguments[0]),"
        " (row) => Array.from(row.cells, (cell) => cell.innerText.trim()))"
    )
    found: list[list[str]] = driver.execute_script(script, f"#{table} tbody tr")
    return found


def click_row(driver: WebDriver, table: str, seq: str) -> None:
    """Click a delivery's row, found and clicked in one script (rows are re-rendered)."""
    driver.execute_script(
        "document.querySelector(`#${arguments[0]} tr[data-seq='${arguments[1]}']`).click()",
        table,
        seq,
    )


def test_a_wrong_token_is_refused_and_nothing_is_shown(
    sample_service: Service, browser: WebDriver
) -> None:
    browser.get(f"{sample_service.url}/ui")
    browser.execute_script("sessionStorage.clear()")
    browser.refresh()
    field = wait(browser).until(expected_conditions.visibility_of_element_located((By.ID, "token")))
    field.send_keys("not-a-configured-token")
    browser.find_element(By.ID, "login-button").click()
    wait(browser).until(
        expected_conditions.text_to_be_present_in_element((By.ID, "problem"), "token was refused")
    )
    assert not browser.find_element(By.ID, "main").is_displayed()
    assert browser.execute_script("return sessionStorage.length") == 0


def test_an_operator_finds_the_flagged_delivery_they_sent_and_reads_its_raw_body(
    sample_service: Service, browser: WebDriver
) -> None:
    account = unique("flagged")
    # No slug: stored but flagged. Its `type` is markup that must be shown, never run.
    hostile = "<img src=x onerror=\"document.title='injected'\">"
    status, body = send(sample_service.url, connection(account, slug=None, type=hostile))
    assert status == 200
    log_in(browser, sample_service.url, READ_TOKEN)
    assert browser.execute_script("return sessionStorage.getItem('projector-read-token')") == (
        READ_TOKEN
    )

    def sent_row(driver: WebDriver) -> list[str] | None:
        return next((r for r in rows(driver, "flagged") if r[3] == account), None)

    flagged_row = wait(browser).until(sent_row)
    assert flagged_row[2:] == ["Connection Expired", account, "", "missing_field:slug"]
    click_row(browser, "flagged", flagged_row[0])
    raw = wait(browser).until(
        expected_conditions.visibility_of_element_located((By.ID, "detail-body"))
    )
    wait(browser).until(lambda d: raw.text == body.decode())
    fields = browser.find_element(By.ID, "detail-fields").text
    assert "missing_field:slug" in fields
    assert "duplicate_of\nnull" in fields
    headers = rows(browser, "detail-headers")
    assert ["content-type", "application/json"] in headers
    assert [name for name, _ in headers] == ["content-type", "user-agent", "x-cobalt-signature"]
    # Shown as text: no element was made from the delivery's markup, and it did not run.
    assert browser.find_elements(By.TAG_NAME, "img") == []
    assert browser.title == "refold-projector: operator page"
    screenshot(browser, "ui-flagged-delivery")


def test_an_operator_finds_the_expired_connection_they_sent(
    sample_service: Service, browser: WebDriver
) -> None:
    account = unique("000-expired")  # sorts first in the list of expired connections
    status, _ = send(sample_service.url, connection(account))
    assert status == 200
    log_in(browser, sample_service.url, READ_TOKEN)
    wait(browser).until(lambda d: [account, "gmail", "2026-07-01T09:15:00Z"] in rows(d, "expired"))
    browser.find_element(By.ID, "account-id").send_keys(account)
    browser.find_element(By.CSS_SELECTOR, "#account-search button").click()
    wait(browser).until(
        expected_conditions.text_to_be_present_in_element(
            (By.ID, "account-result"), f"{account}: must reconnect"
        )
    )
    assert rows(browser, "account-connections") == [
        ["gmail", "expired", "2026-07-01T09:15:00Z", "reconnect"]
    ]
    screenshot(browser, "ui-expired-connection")


def test_the_audit_trail_filters_by_account_event_and_flagged(
    sample_service: Service, browser: WebDriver
) -> None:
    account = unique("audit")
    for event in ("Connection Created", "Connection Expired", "Connection Expired"):
        assert send(sample_service.url, connection(account, event))[0] == 200
    log_in(browser, sample_service.url, READ_TOKEN)
    browser.find_element(By.ID, "filter-account").send_keys(account)
    browser.find_element(By.CSS_SELECTOR, "#audit-filters button").click()
    wait(browser).until(lambda d: len(rows(d, "audit")) == 3 and rows(d, "audit")[0][3] == account)
    # The last 100 positions of the log, newest first.
    assert [(r[2], r[4]) for r in rows(browser, "audit")] == [
        ("Connection Expired", "yes"),
        ("Connection Expired", ""),
        ("Connection Created", ""),
    ]
    seqs = [int(r[0]) for r in rows(browser, "audit")]
    assert seqs == sorted(seqs, reverse=True)
    browser.find_element(By.CSS_SELECTOR, "#filter-event option[value='']")
    select = browser.find_element(By.ID, "filter-event")
    select.find_element(By.XPATH, "option[text()='Connection Created']").click()
    browser.find_element(By.CSS_SELECTOR, "#audit-filters button").click()
    wait(browser).until(lambda d: len(rows(d, "audit")) == 1)
    assert rows(browser, "audit")[0][2:4] == ["Connection Created", account]
    # The whole log, oldest first, when "only the last 100 seqs" is off.
    browser.find_element(By.ID, "filter-recent").click()
    select.find_element(By.XPATH, "option[text()='any']").click()
    browser.find_element(By.ID, "filter-flagged").find_element(
        By.XPATH, "option[@value='true']"
    ).click()
    browser.find_element(By.ID, "filter-account").clear()
    browser.find_element(By.CSS_SELECTOR, "#audit-filters button").click()
    wait(browser).until(lambda d: rows(d, "audit") and rows(d, "audit")[0][3] != account)
    flagged = rows(browser, "audit")
    assert flagged
    assert all(r[5] for r in flagged)
    assert [int(r[0]) for r in flagged] == sorted(int(r[0]) for r in flagged)


def test_the_projections_and_the_chart_show_the_log_and_this_hour(
    sample_service: Service, browser: WebDriver
) -> None:
    assert send(sample_service.url, connection(unique("chart")))[0] == 200
    refused, _ = send(sample_service.url, connection(unique("chart")), key="pk_wrong_key_000")
    assert refused == 401
    log_in(browser, sample_service.url, READ_TOKEN)
    head = browser.find_element(By.ID, "log-head").text
    projections = rows(browser, "projections")
    assert [r[0] for r in projections] == ["connection_health", "workflow_runs"]
    for _name, position, behind, lag, errors, rebuilt in projections:
        assert int(position) + int(behind) == int(head)
        assert lag.endswith(" s")
        assert errors == "0"
        # The service's first start rebuilt both from the empty log, a moment ago.
        assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC \(build 1\)", rebuilt), rebuilt
    assert browser.find_elements(By.CSS_SELECTOR, "#chart svg rect.refused")
    assert browser.find_elements(By.CSS_SELECTOR, "#chart svg rect.new")
    totals = browser.find_element(By.ID, "chart-totals").text
    assert re.search(r"refused: [1-9]", totals), totals
    screenshot(browser, "ui-overview")


def test_a_workflow_run_shows_every_delivery_that_spoke_of_it(
    sample_service: Service, browser: WebDriver
) -> None:
    instance = unique("run")
    run = {
        "linked_account_id": unique("acct"),
        "instance_id": instance,
        "workflow_id": "a53c9521b8d92d95b9d3fbd2",
        "config_id": "33ba490f50aec3c2fc066986",
        "event": "Workflow Completed",
        "workflow_name": "Get Response",
        "status": "COMPLETED",
    }
    assert send(sample_service.url, run)[0] == 200
    assert send(sample_service.url, run)[0] == 200  # Refold's retry: a duplicate
    log_in(browser, sample_service.url, READ_TOKEN)
    browser.find_element(By.ID, "run-id").send_keys(instance)
    browser.find_element(By.CSS_SELECTOR, "#run-search button").click()
    wait(browser).until(lambda d: len(rows(d, "run-deliveries")) == 2)
    assert [r[1:] for r in rows(browser, "run-deliveries")] == [
        ["Workflow Completed", "completed", ""],
        ["Workflow Completed", "completed", "yes"],
    ]
    assert "completed" in browser.find_element(By.ID, "run-fields").text
