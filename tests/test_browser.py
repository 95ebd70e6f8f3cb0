"""The champion as a person sees it: dagster-webserver over an instance with two promotion
attempts, opened in headless Chromium (Debian's ``chromium``, driven by playwright's Python
API; no browser download). Everything is asserted from the rendered page, not GraphQL:
the metrics plot, the check results, and the model card with its training-curves picture.
Screenshots go to ``$TRAINRESULTS_ARTIFACTS/browser`` (default ``test-artifacts/browser``).
"""

import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import dagster as dg
import pytest
from conftest import free_port
from handoff_helpers import Receiver

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ARTIFACTS = Path(os.environ.get("TRAINRESULTS_ARTIFACTS") or REPO / "test-artifacts") / "browser"


def _require_chromium() -> None:
    if os.path.exists(CHROMIUM):
        return
    if os.environ.get("TRAINRESULTS_REQUIRE_BROWSER"):  # .ci/run: never skip
        pytest.fail(f"chromium is required (TRAINRESULTS_REQUIRE_BROWSER) but {CHROMIUM} is missing")
    pytest.skip("chromium is not installed (make install adds it when run as root)")


@pytest.fixture(scope="module")
def webserver(v2_runs, tmp_path_factory):
    """An instance with two promotion attempts (v1 promoted, then v2 beats it) and every
    check evaluated, served by dagster-webserver on a free port."""
    _require_chromium()
    sys.path.insert(0, str(Path(__file__).parent))
    import ui_defs

    root = tmp_path_factory.mktemp("ui")
    home = root / "home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    env = {"DAGSTER_HOME": str(home), "GUARDRAILS_UI_ROOT": str(root / "store")}
    mp = pytest.MonkeyPatch()
    for key, value in env.items():
        mp.setenv(key, value)
    try:
        with Receiver() as receiver, dg.DagsterInstance.get() as instance:
            assets, checks, resources = ui_defs.build(str(root / "store"), receiver.url)
            for run in ("failure", "success"):  # best loss 0.5, then 0.4: promoted twice
                mp.setenv("GUARDRAILS_UI_RUN", v2_runs[run])
                result = dg.materialize([*assets, *checks], resources=resources,
                                        instance=instance)
                assert result.success
    finally:
        mp.undo()
    port = free_port()
    log = open(root / "webserver.log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [str(BIN / "dagster-webserver"), "-f", str(REPO / "tests" / "ui_defs.py"),
         "-h", "127.0.0.1", "-p", str(port)],
        env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                urllib.request.urlopen(f"{base}/server_info", timeout=2)
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise AssertionError("dagster-webserver did not start: "
                                         + (root / "webserver.log").read_text()[-2000:]) from None
                time.sleep(0.5)
        yield base
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()


@pytest.fixture(scope="module")
def page(webserver):
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            tempfile.mkdtemp(prefix="chromium-profile-"), executable_path=CHROMIUM,
            headless=True, args=FLAGS, viewport={"width": 1400, "height": 1000},
        )
        context.set_default_timeout(60_000)
        page = context.new_page()
        page.goto(f"{webserver}/assets/champion")
        skip = page.get_by_role("button", name="Skip")  # the first-visit community dialog
        try:
            skip.click(timeout=15_000)
        except Exception:  # noqa: BLE001 - not shown on every version
            pass
        yield page
        context.close()


def test_model_card_with_its_picture_is_rendered(page, webserver):
    page.goto(f"{webserver}/assets/champion")
    row = page.locator("tr", has=page.get_by_text("model_card", exact=True))
    row.get_by_text("[Show Markdown]").click()
    dialog = page.get_by_role("dialog")
    dialog.get_by_text("Model card: clf version 2 for").wait_for()
    picture = dialog.locator('img[src^="data:image/png;base64,"]')
    picture.wait_for(state="visible")
    size = picture.evaluate("img => [img.naturalWidth, img.naturalHeight, img.complete]")
    assert size[0] >= 400 and size[1] >= 150 and size[2], size
    assert dialog.get_by_text("PROMOTED", exact=True).is_visible()
    assert dialog.locator("table").first.is_visible()  # the metric table
    assert dialog.get_by_text("champion v1 (before)").is_visible()
    dialog.get_by_text("Model card: clf version 2 for").scroll_into_view_if_needed()
    page.screenshot(path=str(ARTIFACTS / "model_card.png"))
    page.keyboard.press("Escape")


def test_metrics_plot_is_rendered(page, webserver):
    page.goto(f"{webserver}/assets/champion")  # Overview > Metadata > Plots
    page.locator("button", has_text="Plots").first.click()
    title = page.get_by_text("candidate/loss", exact=True).first
    title.wait_for(state="visible")
    chart = page.locator("canvas").first
    chart.wait_for(state="visible")
    box = chart.bounding_box()
    assert box and box["width"] > 100 and box["height"] > 50
    page.screenshot(path=str(ARTIFACTS / "metrics_plot.png"))


def test_check_results_are_rendered(page, webserver):
    page.goto(f"{webserver}/assets/champion?view=checks")
    for name in ("champion_files", "champion_age", "champion_training_data", "promotion_gate"):
        page.get_by_text(name, exact=True).first.wait_for(state="visible")
    page.get_by_text("Succeeded").nth(3).wait_for(state="visible")  # all four passed
    page.get_by_text("champion_files", exact=True).first.click()
    page.get_by_text("all 2 files intact", exact=False).first.wait_for(state="visible")
    page.screenshot(path=str(ARTIFACTS / "checks.png"))
    page.goto(f"{webserver}/assets/served?view=checks")
    page.get_by_text("serving_matches_champion", exact=True).first.wait_for(state="visible")
    page.get_by_text("Succeeded").first.wait_for(state="visible")
    page.get_by_text("acknowledged version 2", exact=False).first.wait_for(state="visible")
    page.screenshot(path=str(ARTIFACTS / "serving_checks.png"))
