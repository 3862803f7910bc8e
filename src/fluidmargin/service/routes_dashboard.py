"""The live dashboard: the page at ``/`` (static files of :mod:`fluidmargin.dashboard`, no CDN) and the
``GET /v1/dashboard/summary`` it polls; live events come over ``WS /v1/stream``.

The summary is read in the engine worker (so it is one consistent state, as of a durable seq). The
health histogram uses the engine's float shadow (statistics only: it is within the screen's proven
error bound of the exact figures) with numpy over every bucket, a few milliseconds at a million accounts.
"""

from __future__ import annotations

import time
import weakref
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from numba import njit
from pydantic import BaseModel, Field

from fluidmargin.core.units import QUOTE_DECIMALS
from fluidmargin.core.units import format_decimal as fmt
from fluidmargin.dashboard import STATIC_DIR
from fluidmargin.engine.engine import Engine
from fluidmargin.engine.state import STATUS_NAMES
from fluidmargin.risk.perp.kernels import ACCT_HEALTH, ACCT_MM
from fluidmargin.service import views
from fluidmargin.service.auth import Principal, require
from fluidmargin.service.deps import Svc, errors
from fluidmargin.service.roles import OWNERS, SEE_ALL
from fluidmargin.service.schemas import DecOut

router = APIRouter(tags=["dashboard"])
READERS = require(*OWNERS)

# left edges of the health bins (equity / maintenance margin); below the first: negative equity
HEALTH_EDGES = (0.0, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 20.0, 50.0, 100.0)
WORST = 10


class MarketSummary(BaseModel):
    symbol: str
    size_decimals: int
    index: DecOut | None
    mark: DecOut | None
    funding_rate: DecOut = Field(description="per funding interval")
    open_interest_long: DecOut = Field(description="base units")
    halted: bool


class HealthHistogram(BaseModel):
    edges: list[DecOut] = Field(description="left edges of the bins (equity / maintenance margin)")
    labels: list[str]
    counts: list[int] = Field(description="buckets per bin: counts[0] below edges[0], counts[i] from edges[i-1]")
    buckets: int = Field(description="margin buckets with a maintenance requirement (cross and isolated)")


class AtRisk(BaseModel):
    account_id: int
    health_ratio: DecOut = Field(description="equity / maintenance margin (float screen, 3 decimals)")
    status: str


class Statuses(BaseModel):
    healthy: int
    at_risk: int
    liquidating: int
    bankrupt: int


class VaultSummary(BaseModel):
    equity: DecOut
    shares: DecOut


class DashboardSummary(BaseModel):
    seq: int = Field(description="the durable seq the figures are as of: stream from seq + 1")
    now_ns: int
    accounts: int
    markets: list[MarketSummary]
    health: HealthHistogram
    worst: list[AtRisk] = Field(
        description=f"the {WORST} cross accounts with the lowest health ratio (an account key: only its own)"
    )
    statuses: Statuses = Field(description="accounts by cross status")
    funds: dict[str, DecOut] = Field(description="insurance fund balances (USD)")
    socialized_loss: DecOut
    vault: VaultSummary | None
    auctions: int = Field(description="open auctions")


def _label(i: int) -> str:
    e = HEALTH_EDGES
    if i == 0:
        return f"<{e[0]:g}"
    if i == len(e):
        return f"≥{e[-1]:g}"
    return f"{e[i - 1]:g}–{e[i]:g}"


@njit(cache=True)
def _health(
    acct_f: Any,
    n: int,
    status: Any,
    pos_iso: Any,
    pos_size: Any,
    pos_mm: Any,
    pos_c: Any,
    pos_iso_margin: Any,
    k: int,
    edges: Any,
    n_worst: int,
) -> Any:
    """One pass over the shadow: the health histogram (cross buckets with a maintenance requirement, then
    isolated positions), the ``n_worst`` lowest cross ratios (ratio, row), and the cross status counts."""
    ne = len(edges)
    counts = np.zeros(ne + 1, np.int64)
    statuses = np.zeros(4, np.int64)
    worst_r = np.full(n_worst, np.inf)
    worst_i = np.full(n_worst, -1, np.int64)
    for r in range(n):
        statuses[status[r]] += 1
        mm = acct_f[r, ACCT_MM]
        if mm > 0.0:
            ratio = (acct_f[r, ACCT_HEALTH] + mm) / mm  # health is equity - maintenance
            b = 0
            for j in range(ne):  # branch-free: the bin is how many edges are <= ratio (NaN: the first)
                b += ratio >= edges[j]
            counts[b] += 1
            if n_worst > 0 and ratio < worst_r[n_worst - 1]:
                j = n_worst - 1
                while j > 0 and worst_r[j - 1] > ratio:
                    worst_r[j] = worst_r[j - 1]
                    worst_i[j] = worst_i[j - 1]
                    j -= 1
                worst_r[j] = ratio
                worst_i[j] = r
    for p in range(k):
        if pos_iso[p] != 1:
            continue
        mm = pos_mm[p]
        if pos_size[p] != 0 and mm > 0.0:
            ratio = (pos_iso_margin[p] + pos_c[p] + mm) / mm
            b = 0
            for j in range(ne):  # branch-free: the bin is how many edges are <= ratio (NaN: the first)
                b += ratio >= edges[j]
            counts[b] += 1
    return counts, worst_r, worst_i, statuses


_EDGES = np.array(HEALTH_EDGES, dtype=np.float64)


def health(eng: Engine) -> tuple[Any, Any, Any, Any]:
    return _health(  # type: ignore[no-any-return]
        eng.acct_f,
        eng.n_acc,
        eng.status,
        eng.pos_iso,
        eng.pos_size,
        eng.pos_mm,
        eng.pos_c,
        eng.pos_iso_margin,
        eng.n_pos,
        _EDGES,
        WORST,
    )


def summary(eng: Engine) -> dict[str, Any]:
    """The dashboard's figures (runs in the worker thread: one compiled pass over the shadow columns,
    a few milliseconds at a million accounts)."""
    n = eng.n_acc
    counts, worst_r, worst_i, st = health(eng)
    worst = [
        {
            "account_id": int(eng.acct_id[r]),
            "health_ratio": f"{float(x):.3f}",
            "status": STATUS_NAMES[int(eng.status[r])],
        }
        for x, r in zip(worst_r.tolist(), worst_i.tolist(), strict=True)
        if r >= 0
    ]
    vault = None
    if eng.cfg.backstop is not None:
        v = views.vault_view(eng)
        vault = {"equity": v["equity"], "shares": v["total_shares"]}
    markets = [
        {
            "symbol": m["symbol"],
            "size_decimals": m["size_decimals"],
            "index": m["index_price"],
            "mark": m["mark_price"],
            "funding_rate": m["funding_rate"],
            "open_interest_long": m["open_interest"],
            "halted": m["halted"],
        }
        for m in views.markets_view(eng)
    ]
    return {
        "seq": eng.seq,
        "now_ns": eng.now_ns,
        "accounts": n,
        "markets": markets,
        "health": {
            "edges": [f"{e:g}" for e in HEALTH_EDGES],
            "labels": [_label(i) for i in range(len(HEALTH_EDGES) + 1)],
            "counts": [int(c) for c in counts[: len(HEALTH_EDGES) + 1]],
            "buckets": int(counts.sum()),
        },
        "worst": worst,
        "statuses": {name: int(st[i]) for i, name in enumerate(STATUS_NAMES)},
        "funds": {name: fmt(bal, QUOTE_DECIMALS) for name, bal in sorted(eng.wf.funds.items())},
        "socialized_loss": fmt(eng.socialized_q, QUOTE_DECIMALS),
        "vault": vault,
        "auctions": len(eng.wf.auctions),
    }


@router.get(
    "/v1/dashboard/summary",
    response_model=DashboardSummary,
    responses=errors(403),
    summary="Dashboard figures: markets, health histogram, statuses, funds, vault (one consistent state)",
)
async def dashboard_summary(svc: Svc, p: Annotated[Principal, READERS]) -> dict[str, Any]:
    # dashboards poll once a second each: one read of the worker serves them all for CACHE_S
    hit = _cache.get(svc.worker)
    now = time.monotonic()
    if hit is not None and now - hit[0] < CACHE_S:
        body = hit[1]
    else:
        body = await svc.worker.read(summary)
        _cache[svc.worker] = (now, body)
    if p.role in SEE_ALL:
        return body
    # an account key sees the venue's aggregates, but among the worst accounts only its own
    return {**body, "worst": [w for w in body["worst"] if p.may_touch(w["account_id"])]}


CACHE_S = 0.25
_cache: weakref.WeakKeyDictionary[Any, tuple[float, dict[str, Any]]] = weakref.WeakKeyDictionary()


async def index(request: Request) -> FileResponse:
    """The dashboard page (public: the API key stays in the address's fragment, read by the page)."""
    return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})


def warm_up() -> None:
    """Compile the histogram pass now (or load it from numba's cache), not in the worker's first read."""
    z8, zi = np.zeros(1, np.int8), np.zeros(1, np.int64)
    _health(np.zeros((1, 8)), 0, z8, z8, zi, np.zeros(1), np.zeros(1), zi, 0, _EDGES, WORST)


def mount(app: FastAPI) -> None:
    """The summary route, the page at ``/`` and its static files (served by the app itself: no CDN).
    The page and files are plain routes, outside the OpenAPI document."""
    warm_up()
    app.include_router(router)
    app.add_route("/", index, methods=["GET"], include_in_schema=False)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")


__all__ = ["mount", "router", "summary"]
