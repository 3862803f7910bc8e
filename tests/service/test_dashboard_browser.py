"""The dashboard end to end in a real browser: Debian's Chromium driven by Playwright.

The real service (SQLite) serves the page; the test feeds prices and causes a liquidation through the
HTTP API after the page is open, and checks the page shows it live (over the WebSocket stream). A
screenshot is saved as a test artefact: out/test-artifacts/dashboard.png.

Chromium is Debian's package at /usr/bin/chromium (``make test`` installs it with scripts/chromium.sh;
FLUIDMARGIN_CHROMIUM names another). Playwright's own browser downloads are never used. A missing
browser fails the test, it never skips.
"""

from __future__ import annotations

import dataclasses
import os
import re
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from fluidmargin.model.config import BackstopSpec
from fluidmargin.model.instruments import OptionSpec
from fluidmargin.service import ServiceSettings, create_app
from fluidmargin.service.testing import ServerThread
from fluidmargin.sim.venues import waterfall_venue
from support.data import ROOT

ARTIFACTS = ROOT / "out" / "test-artifacts"
CHROMIUM = os.environ.get("FLUIDMARGIN_CHROMIUM", "/usr/bin/chromium")
ADMIN = "fm_browser-test-admin"
TIMEOUT_MS = 30_000
NS = 10**9
EXP = (time.time_ns() // (3600 * NS) + 30 * 24) * 3600 * NS  # ~30 days after the service clock (wall time)
C60, P40 = "BTC-C-60000", "BTC-P-40000"


def _chromium() -> str:
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        pytest.fail(
            f"Chromium is needed for the browser test and {CHROMIUM} is missing: run `bash scripts/chromium.sh` "
            "(as root it runs apt-get install chromium; `make test` does it), or set FLUIDMARGIN_CHROMIUM"
        )
    return CHROMIUM


def _ok(r: httpx.Response, status: int = 200) -> Any:
    assert r.status_code == status, f"{r.request.method} {r.request.url.path}: {r.status_code} {r.text}"
    return r.json()


def test_dashboard_shows_live_liquidation_in_chromium(tmp_path: Path) -> None:
    chromium = _chromium()
    try:
        from playwright.sync_api import expect, sync_playwright
    except ImportError as e:  # a dev dependency: `pip install -e '.[dev]'`
        pytest.fail(f"the browser test needs the playwright package: {e}")

    cfg = dataclasses.replace(
        waterfall_venue(single_source_liquidation=True),  # one publisher feeds this venue: it opts in
        backstop=BackstopSpec(withdrawal_delay_ns=1),
        options=(
            OptionSpec(C60, "BTC", 60_000 * 10**8, EXP, "call"),
            OptionSpec(P40, "BTC", 40_000 * 10**8, EXP, "put"),
        ),
    )
    app = create_app(ServiceSettings(db=tmp_path / "log.db", config=cfg, admin_key=ADMIN))
    with (
        ServerThread(app) as url,
        httpx.Client(base_url=url, headers={"Authorization": f"Bearer {ADMIN}"}, timeout=30) as c,
    ):
        pub = _ok(c.post("/v1/keys", json={"role": "publisher", "source": "browser-test"}), 201)["api_key"]
        as_pub = {"Authorization": f"Bearer {pub}"}
        for asset, price in (("BTC", "50000"), ("ETH", "3000")):
            _ok(c.post("/v1/prices", json={"asset": asset, "price": price}, headers=as_pub))
        acct = _ok(c.post("/v1/accounts", json={}), 201)["account_id"]
        _ok(c.post(f"/v1/accounts/{acct}/deposits", json={"amount": "3100"}))
        _ok(c.post(f"/v1/accounts/{acct}/fills", json={"market": "ETH-PERP", "size": "10", "price": "3000"}))
        # options: a vol for the 60,000 call (the put has none), and a portfolio account long the call
        # against a portfolio counterparty
        vol = {"underlying": "BTC", "expiry_ns": EXP, "strike": "60000", "vol": "0.65"}
        _ok(c.post("/v1/vols", json=vol, headers=as_pub))
        pm = []
        for usd in ("1000000", "20000"):
            a = _ok(c.post("/v1/accounts", json={}), 201)["account_id"]
            _ok(c.post(f"/v1/accounts/{a}/deposits", json={"amount": usd}))
            _ok(c.put(f"/v1/accounts/{a}/margin-mode", json={"mode": "portfolio"}))
            pm.append(a)
        for a, size in ((pm[1], "1.5"), (pm[0], "-1.5")):
            _ok(c.post(f"/v1/accounts/{a}/fills", json={"market": C60, "size": size, "price": "1000"}))

        with sync_playwright() as pw:
            browser = pw.chromium.launch(
                executable_path=chromium,
                headless=True,
                args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
            )
            try:
                page = browser.new_page(viewport={"width": 1400, "height": 1100})
                errors: list[str] = []
                page.on("pageerror", lambda e: errors.append(str(e)))
                page.goto(f"{url}/#key={ADMIN}")
                expect(page.get_by_test_id("conn")).to_have_text("live", timeout=TIMEOUT_MS)
                expect(page.get_by_test_id("seq")).to_have_text(re.compile(r"^\d+$"), timeout=TIMEOUT_MS)
                seq_before = int(page.get_by_test_id("seq").inner_text())
                expect(page.get_by_test_id("markets")).to_contain_text("ETH-PERP", timeout=TIMEOUT_MS)

                # the option markets panel: one row per series, the call with its vol and model price
                call = page.locator(f"#options tr[data-symbol='{C60}']")
                expect(call).to_contain_text("65 %", timeout=TIMEOUT_MS)
                expect(call).to_contain_text("60,000")
                expect(page.locator(f"#options tr[data-symbol='{P40}']")).to_contain_text("–")  # no vol yet
                # the scenario matrix of the account typed in: 31 PM2 scenarios, the worst highlighted
                page.get_by_test_id("pf-account").fill(str(pm[1]))
                page.get_by_test_id("pf-form").locator("button").click()
                expect(page.get_by_test_id("pf-summary")).to_contain_text("(portfolio)", timeout=TIMEOUT_MS)
                expect(page.locator("#pf table.scen tr")).to_have_count(32)  # a header and 31 scenarios
                pf = _ok(c.get(f"/v1/accounts/{pm[1]}/portfolio"))
                (btc,) = pf["underlyings"]
                if btc["worst_index"] is None:  # the basis contingency is worst: no row to highlight
                    expect(page.get_by_test_id("pf-worst")).to_contain_text("basis")
                else:
                    worst = page.get_by_test_id("pf-worst-row")
                    expect(worst).to_have_count(1)
                    expect(worst.locator("td").first).to_have_text(str(btc["worst_index"]))

                # after the page is open: more prices, then a crash that liquidates the account
                _ok(c.post("/v1/prices", json={"asset": "BTC", "price": "50100"}, headers=as_pub))
                r = _ok(c.post("/v1/prices", json={"asset": "ETH", "price": "2700"}, headers=as_pub))
                page_ = _ok(c.get("/v1/events", params={"after": r["seq"] - 1, "limit": 1000}))
                liq = [e for e in page_["events"] if e["type"] == "PositionLiquidated" and e["account_id"] == acct]
                assert liq, f"the crash did not liquidate account {acct}: {page_['events']}"
                liq_seq = liq[0]["seq"]
                assert liq_seq > seq_before

                row = page.locator("#feed tr", has_text=str(acct)).filter(has_text=re.compile("Positions? ?Liquidated"))
                expect(row.first).to_be_visible(timeout=TIMEOUT_MS)
                expect(row.first.locator("td").first).to_have_text(str(liq_seq))
                page.wait_for_function(
                    f"() => Number(document.getElementById('seq').textContent) >= {r['durable_seq']}",
                    timeout=TIMEOUT_MS,
                )
                expect(page.get_by_test_id("nliq")).to_contain_text("1 positions liquidated", timeout=TIMEOUT_MS)
                expect(page.get_by_test_id("conn")).to_have_text("live")
                page.wait_for_timeout(1200)  # one more summary poll, so the screenshot shows the figures
                ARTIFACTS.mkdir(parents=True, exist_ok=True)
                shot = ARTIFACTS / "dashboard.png"
                page.screenshot(path=str(shot), full_page=True)
                assert shot.stat().st_size > 10_000
                assert not errors, f"errors in the page: {errors}"
            finally:
                browser.close()
