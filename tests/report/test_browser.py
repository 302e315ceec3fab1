"""The report in a real headless browser: every image loads, no relative link is broken, a screenshot.

Needs selenium (the ``test`` extra) and Debian's ``chromium`` and ``chromium-driver`` (``.ci/run``
installs them when it can); skips cleanly where any of them is missing.
"""

import importlib.util
import shutil
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest

CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)
DRIVER = shutil.which("chromedriver")
SELENIUM = importlib.util.find_spec("selenium") is not None

# checked before any fixture is built (the report's run directory takes seconds)
pytestmark = [
    pytest.mark.skipif(not SELENIUM, reason="selenium is not installed (pip install -e .[test])"),
    pytest.mark.skipif(CHROMIUM is None or DRIVER is None,
                       reason="chromium or chromedriver not installed (Debian: apt-get install chromium chromium-driver)"),
]


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,2000",
                "--allow-file-access-from-files"):
        opts.add_argument(arg)
    opts.binary_location = CHROMIUM
    try:
        driver = webdriver.Chrome(service=Service(executable_path=DRIVER), options=opts)
    except WebDriverException as exc:  # a browser that cannot start here (e.g. no shared memory): not the report's fault
        pytest.skip(f"headless chromium did not start: {str(exc).splitlines()[0]}")
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def test_report_opens_offline_with_every_image_and_link(browser, wheeler_report, tmp_path):
    _, index = wheeler_report
    browser.get(index.resolve().as_uri())
    assert browser.title.startswith("Cannonade run report")
    images = browser.execute_script(
        "return Array.from(document.images).map(i => [i.getAttribute('src'), i.complete, i.naturalWidth]);")
    assert len(images) >= 10
    broken = [src for src, complete, width in images if not (complete and width > 0)]
    assert not broken, f"images that did not load: {broken}"
    links = browser.execute_script("return Array.from(document.querySelectorAll('a[href]')).map(a => [a.getAttribute('href'), a.href]);")
    ids = set(browser.execute_script("return Array.from(document.querySelectorAll('[id]')).map(e => e.id);"))
    for raw, resolved in links:
        url = urlparse(resolved)
        assert url.scheme == "file", f"link {raw!r} leaves the report ({resolved})"
        if raw.startswith("#"):
            assert raw[1:] in ids, f"anchor {raw!r} has no target"
        else:
            assert Path(unquote(url.path)).is_file(), f"broken link {raw!r}"
    shot = tmp_path / "report.png"
    assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
