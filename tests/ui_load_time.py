"""The operator page's load time in headless Chromium, on a server loaded with the sample.

`python -m tests.ui_load_time --loads 15` prints the median time from navigation start until
the projections and the audit trail are rendered (the page's first full render, which it
records as `window.firstRenderMs`), with the token already in the tab's sessionStorage.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions

from tests.browser_support import chromium, log_in, wait, wait_for_head
from tests.support import READ_TOKEN, SAMPLE, Service, sample_bodies


def measure(loads: int) -> list[float]:
    with tempfile.TemporaryDirectory() as folder:
        service = Service(Path(folder) / "projector.sqlite3", serve_args=("--seed", str(SAMPLE)))
        service.start()
        try:
            wait_for_head(service.url, len(sample_bodies()))
            with chromium() as driver:
                log_in(driver, service.url, READ_TOKEN)
                times = []
                for _ in range(loads):
                    driver.refresh()  # the token stays in sessionStorage: no login
                    wait(driver).until(
                        expected_conditions.presence_of_element_located(
                            (By.CSS_SELECTOR, "body[data-loaded]")
                        )
                    )
                    audit = driver.find_elements(By.CSS_SELECTOR, "#audit tbody tr[data-seq]")
                    projections = driver.find_elements(By.CSS_SELECTOR, "#projections tbody tr")
                    assert audit, "the audit trail is shown"
                    assert len(projections) == 2, "both projections are shown"
                    times.append(float(driver.execute_script("return window.firstRenderMs")))
                return times
        finally:
            service.kill()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--loads", type=int, default=15)
    times = measure(parser.parse_args().loads)
    print(
        f"{len(times)} loads: median {statistics.median(times):.0f} ms, "
        f"min {min(times):.0f} ms, max {max(times):.0f} ms"
    )


if __name__ == "__main__":
    main()
