"""The leaderboard web page in a real headless browser (Debian's chromium, installed by scripts/install.sh --test)."""

from __future__ import annotations

import shutil

import pytest

from psml_bench.report.leaderboard import leaderboard_sections, write_leaderboard
from psml_bench.report.results import results_frame
from test_leaderboard import CardOnlyZoo, rows, toy_grid

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")


@pytest.fixture(scope="module")
def browser():
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium comes with the test extra")
    if not (CHROMIUM and DRIVER):
        pytest.fail("chromium and chromedriver are needed: run scripts/install.sh --test")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     "--window-size=1400,1000"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=DRIVER))
    yield driver
    driver.quit()


def test_the_page_loads_without_errors_and_every_table_has_its_rows(browser, tmp_path):
    from selenium.webdriver.common.by import By

    write_leaderboard(rows(), CardOnlyZoo(), toy_grid(), tmp_path)
    html = (tmp_path / "index.html").read_text()
    assert "http://" not in html and "https://" not in html  # nothing outside the file and the PNGs beside it
    browser.get((tmp_path / "index.html").as_uri())
    errors = [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
    assert errors == []
    expected = [s.table for s in leaderboard_sections(results_frame(rows()), CardOnlyZoo(), toy_grid(),
                                                      ["zoo_frontier.png"]) if s.table is not None]
    tables = browser.find_elements(By.CSS_SELECTOR, "table.sortable")
    assert len(tables) == len(expected)
    for table, want in zip(tables, expected):
        assert len(table.find_elements(By.CSS_SELECTOR, "tbody tr")) == len(want.rows)
    images = browser.find_elements(By.TAG_NAME, "img")
    assert images and all(browser.execute_script("return arguments[0].naturalWidth", img) > 0 for img in images)
    # every summarising row links to its cells' JSON files
    attack_table = tables[1]
    links = attack_table.find_elements(By.CSS_SELECTOR, "tbody tr:first-child td.cells a")
    assert links and all(link.get_attribute("href").endswith(".json") and "/cells/" in link.get_attribute("href")
                         for link in links)
    # a click on the fidelity header sorts the table by it, ascending
    headers = attack_table.find_elements(By.TAG_NAME, "th")
    column = [h.text for h in headers].index("fidelity")
    headers[column].click()
    values = [float(r.find_elements(By.TAG_NAME, "td")[column].text.split()[0])
              for r in attack_table.find_elements(By.CSS_SELECTOR, "tbody tr")]
    assert values == sorted(values)
    assert "Protocol version" in browser.find_element(By.TAG_NAME, "body").text
    assert browser.save_screenshot(str(tmp_path / "leaderboard.png"))
    assert (tmp_path / "leaderboard.png").stat().st_size > 10_000


@pytest.mark.parametrize("width", [1280, 1920])
def test_the_page_fits_the_window_and_every_figure_loads(browser, tmp_path, width):
    """Nothing but a table's own scroll box is wider than the window; the headline box, contents and links are there."""
    from selenium.webdriver.common.by import By

    write_leaderboard(rows(), CardOnlyZoo(), toy_grid(), tmp_path)
    browser.set_window_size(width, 1000)
    browser.get((tmp_path / "index.html").as_uri())
    viewport = browser.execute_script("return document.documentElement.clientWidth")
    assert browser.execute_script("return document.documentElement.scrollWidth") <= viewport
    too_wide = browser.execute_script("""
        const limit = document.documentElement.clientWidth;
        return Array.from(document.querySelectorAll("body *"))
            .filter(e => !e.closest(".table-box") || e.classList.contains("table-box"))
            .filter(e => e.getBoundingClientRect().right > limit + 0.5)
            .map(e => e.tagName + "." + e.className);""")
    assert too_wide == []
    images = browser.find_elements(By.TAG_NAME, "img")
    assert len(images) == 3 and all(browser.execute_script(
        "return arguments[0].complete && arguments[0].naturalWidth > 0", img) for img in images)
    assert browser.find_element(By.CSS_SELECTOR, "section.headline li").text.startswith("Zoo toy")
    contents = [a.get_attribute("href").split("#")[1] for a in browser.find_elements(By.CSS_SELECTOR, "nav a")]
    assert contents and all(browser.find_elements(By.ID, anchor) for anchor in contents)
    links = [a.get_attribute("href") for a in browser.find_elements(By.TAG_NAME, "a")]
    assert any(link.endswith("/results.csv") for link in links) and any("/cells/" in link for link in links)
    assert "`" not in browser.find_element(By.TAG_NAME, "body").text  # no Markdown left unrendered
    header = browser.find_element(By.CSS_SELECTOR, "table.sortable th")
    assert header.value_of_css_property("position") == "sticky"
    assert browser.save_screenshot(str(tmp_path / f"leaderboard-{width}.png"))
    assert (tmp_path / f"leaderboard-{width}.png").stat().st_size > 10_000


def test_filters_change_the_visible_rows(browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    write_leaderboard(rows(), CardOnlyZoo(), toy_grid(), tmp_path)
    browser.set_window_size(1280, 1000)
    browser.get((tmp_path / "index.html").as_uri())
    visible = lambda: sum(row.is_displayed() for row in browser.find_elements(By.CSS_SELECTOR, "tbody tr"))  # noqa: E731
    everything = visible()
    victim = Select(browser.find_element(By.CSS_SELECTOR, "select[data-facet='victim']"))
    assert [o.text for o in victim.options] == ["all", "rank:1", "rank:2"]
    victim.select_by_visible_text("rank:1")
    one_victim = visible()
    assert 0 < one_victim < everything
    block = Select(browser.find_element(By.CSS_SELECTOR, "select[data-facet='block']"))
    block.select_by_visible_text("defenses")
    assert 0 < visible() < one_victim
    victim.select_by_visible_text("all")
    block.select_by_visible_text("all")
    assert visible() == everything
