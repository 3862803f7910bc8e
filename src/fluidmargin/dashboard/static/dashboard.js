// fluidmargin live dashboard. No framework, no CDN: uPlot is vendored next to this file.
//
// Data it reads (served by fluidmargin.service):
//   GET  v1/dashboard/summary  -> {seq, accounts, markets: [{symbol, size_decimals, index, mark,
//        funding_rate, open_interest_long, halted}], health: {edges, labels, counts}, worst: [{account_id,
//        health_ratio, status}], statuses: {healthy, at_risk, liquidating, bankrupt}, funds: {name: usd},
//        vault: {equity, shares} | null, auctions} (money, prices and ratios as decimal strings)
//   WS   v1/stream?from_seq=N&key=K -> {op: "hello"|"live", ...} control messages, and data messages
//        {seq, records: [{seq, type, events: [wire events]}]}: every log record up to seq this key may see
//        (wire events as the API renders them: quantums as decimal strings). On reconnect it resumes
//        from the last message's seq + 1, so nothing is missed or repeated.
//   GET  v1/options -> [{symbol, underlying, right, strike, expiry_ns, index_price, mark_vol, mark_price, delta,
//        gamma, vega, theta, open_interest, settled, settlement_price}]: the option markets panel
//   GET  v1/accounts/{id}/portfolio -> {margin_mode, valuation_blocked, equity, maintenance_margin,
//        initial_margin, health, total: {delta, gamma, vega, theta}, underlyings: [{underlying, spot, worst_kind,
//        worst_index, worst_pnl, maintenance_requirement, scenarios: [{index, kind, spot_shock, vol_shock,
//        dampening, pnl}]}]}: the scenario matrix of the account typed in (worst scenario highlighted)
// The API key comes from the page address: /#key=... (or ?key=...).
"use strict";

const KEY = new URLSearchParams(location.hash.slice(1)).get("key") || new URLSearchParams(location.search).get("key") || "";
const MAX_POINTS = 600, FEED_ROWS = 60, REDRAW_MS = 250;
const $ = (id) => document.getElementById(id);
const state = { seq: 0, events: 0, liq: 0, markets: {}, prices: null, funds: null, risk: null, dirty: false };

function fmt(x, d = 2) { return Number(x).toLocaleString(undefined, { maximumFractionDigits: d }); }
function now() { return Date.now() / 1000; }
function esc(s) { return String(s).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]); }

function lineChart(el, series, height = 220) {
  const opts = {
    width: el.clientWidth || 600, height,
    series: [{}, ...series.map((s, i) => ({ label: s, stroke: ["#4fc3f7", "#ffb300", "#81c784", "#e57373", "#ba68c8", "#90a4ae"][i % 6], width: 1.5 }))],
    axes: [{ stroke: "#8391a1" }, { stroke: "#8391a1", size: 86 }],
    scales: { x: { time: true } },
  };
  const data = [[], ...series.map(() => [])];
  return { plot: new uPlot(opts, data, el), data, series };
}

function push(chart, values, draw = true) {
  chart.data[0].push(now());
  chart.series.forEach((s, i) => chart.data[i + 1].push(values[s] ?? null));
  if (chart.data[0].length > MAX_POINTS) chart.data.forEach((a) => a.shift());
  if (!draw) return;
  chart.plot.setData(chart.data);
  const xs = chart.data[0], last = xs[xs.length - 1];
  if (last - xs[0] < 60) chart.plot.setScale("x", { min: last - 60, max: last + 1 });  // at least a minute
}

let healthLabels = [];
function barChart(el) {
  const opts = {
    width: el.clientWidth || 460, height: 200,
    series: [{}, { label: "buckets", stroke: "#4fc3f7", fill: "rgba(79,195,247,0.35)", paths: uPlot.paths.bars({ size: [0.9] }) }],
    axes: [{ stroke: "#8391a1", values: (u, v) => v.map((x) => healthLabels[x] ?? "") }, { stroke: "#8391a1", size: 60 }],
    scales: { x: { time: false, range: (u, lo, hi) => [lo - 0.5, hi + 0.5] } },
  };
  return new uPlot(opts, [[0], [0]], el);
}

async function api(path) {
  const r = await fetch(path, { headers: KEY ? { Authorization: "Bearer " + KEY } : {} });
  if (!r.ok) throw new Error(path + ": HTTP " + r.status);
  return r.json();
}

let health = null;
async function refresh() {
  try {
    const s = await api("v1/dashboard/summary");
    $("naccounts").textContent = fmt(s.accounts, 0);
    const mk = $("markets"), oi = $("oi");
    mk.innerHTML = "<tr><th>market</th><th></th><th>index</th><th>mark</th><th>funding</th></tr>";
    oi.innerHTML = "";
    for (const m of s.markets) {
      mk.insertAdjacentHTML("beforeend", `<tr><td>${esc(m.symbol)}</td><td>${m.halted ? "HALTED" : ""}</td><td>${m.index === null ? "–" : fmt(m.index)}</td><td>${m.mark === null ? "–" : fmt(m.mark)}</td><td>${fmt(Number(m.funding_rate) * 100, 4)} %</td></tr>`);
      oi.insertAdjacentHTML("beforeend", `<tr><td>${esc(m.symbol)}</td><td>${fmt(m.open_interest_long, 4)}</td></tr>`);
    }
    healthLabels = s.health.labels;
    if (!health) health = barChart($("health"));
    health.setData([s.health.counts.map((_, i) => i), s.health.counts]);
    $("at_risk").textContent = fmt(s.statuses.at_risk, 0);
    $("liquidating").textContent = fmt(s.statuses.liquidating, 0);
    $("bankrupt").textContent = fmt(s.statuses.bankrupt, 0);
    $("nauctions").textContent = fmt(s.auctions, 0);
    const w = $("worst");
    w.innerHTML = "<tr><th>account</th><th>status</th><th>equity / maintenance</th></tr>";
    for (const a of s.worst) w.insertAdjacentHTML("beforeend", `<tr><td>${a.account_id}</td><td>${esc(a.status)}</td><td>${fmt(a.health_ratio, 3)}</td></tr>`);
    if (!state.risk) state.risk = lineChart($("risk_ts"), ["at_risk", "liquidating", "bankrupt"], 140);
    push(state.risk, s.statuses);
    const f = {};
    for (const [k, v] of Object.entries(s.funds)) f["fund " + k] = Number(v);
    if (s.vault) f["vault"] = Number(s.vault.equity);
    if (!state.funds) state.funds = lineChart($("funds"), Object.keys(f), 200);
    push(state.funds, f);
    if (!state.seq) state.seq = s.seq;
    $("error").textContent = "";
  } catch (e) {
    $("error").textContent = String(e.message || e);
    console.warn(e);
  }
}

const FEED = new Set(["PositionLiquidated", "PositionsLiquidated", "BatchNetted", "LiquidationExecuted", "AuctionStarted",
  "AuctionBidFilled", "AuctionReset", "AuctionFinished", "BackstopTakeover", "AutoDeleveraged", "BadDebtSocialized", "MarketHalted", "MarketResumed"]);
const pending = [];  // feed rows waiting for the next redraw

function feedRow(rec) {
  const evs = rec.events;
  let e = evs[0], accounts = "", size = "", price = "", detail = "";
  if (rec.type === "PositionsLiquidated") {  // one row for the batch: its per-account closes summed
    const closes = evs.filter((x) => x.type === "PositionLiquidated");
    e = closes[0] || e;
    accounts = closes.length > 3 ? closes.length + " accounts" : closes.map((x) => x.account_id).join(",");
    size = closes.reduce((a, x) => a + Number(x.size), 0);
    detail = "penalties " + fmt(closes.reduce((a, x) => a + Number(x.fee), 0));
  } else {
    accounts = e.account_id ?? (e.account_ids ? (e.account_ids.length > 3 ? e.account_ids.length + " accounts" : e.account_ids.join(",")) : "");
    if (e.bankrupt_account_id !== undefined) accounts += " (bankrupt " + e.bankrupt_account_id + ")";
    size = e.size ?? e.net ?? "";
    if (e.fee !== undefined) detail = "penalty " + fmt(e.fee);
    if (e.slippage !== undefined) detail = "slippage " + fmt(e.slippage);
    if (e.fund_pnl !== undefined) detail += " fund " + fmt(e.fund_pnl);
    if (e.amount !== undefined) detail = "amount " + fmt(e.amount);
    if (e.reason) detail = e.reason;
    if (e.how) detail = e.how;
  }
  price = e.price !== undefined ? fmt(e.price) : "";
  const market = e.market || (e.auction_id ? e.auction_id.replace(/-\d+$/, "") : "");
  const tr = document.createElement("tr");
  tr.dataset.type = rec.type;
  tr.innerHTML = `<td>${rec.seq}</td><td>${esc(rec.type)}</td><td>${esc(market)}</td><td>${esc(accounts)}</td><td>${size === "" ? "" : fmt(size, 6)}</td><td>${price}</td><td>${esc(detail)}</td>`;
  pending.push(tr);
}

function onRecord(rec) {
  state.events += rec.events.length;
  for (const e of rec.events) {
    if (e.type === "MarkPriceUpdated" || e.type === "IndexPriceUpdated") {
      const key = e.type === "MarkPriceUpdated" ? "mark " + e.market : "index " + e.asset;
      state.markets[key] = Number(e.price);
      state.dirty = true;
    } else if (e.type === "PositionLiquidated") {
      state.liq += 1;
    }
  }
  if (FEED.has(rec.type)) feedRow(rec);
}

function redraw() {
  $("seq").textContent = state.seq;
  $("nevents").textContent = fmt(state.events, 0);
  $("nliq").textContent = fmt(state.liq, 0) + " positions liquidated";
  if (pending.length) {
    const body = $("feed");
    for (const tr of pending.splice(0).slice(-FEED_ROWS)) body.insertBefore(tr, body.firstChild);
    while (body.rows.length > FEED_ROWS) body.deleteRow(-1);
  }
  if (state.dirty && state.prices) {
    state.dirty = false;
    const keys = Object.keys(state.markets).sort();
    if (keys.join() !== state.prices.series.join()) {
      state.prices.plot.destroy();
      $("prices").innerHTML = "";
      state.prices = lineChart($("prices"), keys, 240);
    }
    push(state.prices, state.markets);
  }
}

function setConn(text, on) { $("conn").textContent = text; $("conn").className = "pill " + (on ? "on" : "off"); }

let ws = null, retry = 500;
function connect() {
  const proto = location.protocol === "https:" ? "wss:" : "ws:";
  const base = location.pathname.replace(/[^/]*$/, "");
  const params = new URLSearchParams();
  if (state.seq) params.set("from_seq", state.seq + 1);
  if (KEY) params.set("key", KEY);
  ws = new WebSocket(`${proto}//${location.host}${base}v1/stream?${params}`);
  ws.onmessage = (m) => {
    const msg = JSON.parse(m.data);
    if (msg.op === "hello") setConn(msg.from_seq ? "catching up" : "live", !msg.from_seq);
    else if (msg.op === "live") setConn("live", true);
    else if (Array.isArray(msg.records)) {
      for (const rec of msg.records) onRecord(rec);
      state.seq = msg.seq;
      retry = 500;
    }
  };
  ws.onclose = (ev) => {
    if (ev.code === 4401 || ev.code === 4403) {  // a bad key: retrying will not help
      setConn("unauthorized", false);
      $("error").textContent = ev.reason || "unauthorized: open the page as /#key=<API key>";
      return;
    }
    setConn("reconnecting", false);
    setTimeout(connect, retry);
    retry = Math.min(retry * 2, 8000);
  };
}

// --- options and portfolio margin ---------------------------------------------------------------------

const OPTION_COLS = ["series", "right", "strike", "expiry (UTC)", "mark vol", "index", "model price", "delta", "gamma",
  "vega", "theta / day", "open interest"];

function expiry(ns) { return new Date(Number(ns) / 1e6).toISOString().slice(0, 16).replace("T", " "); }
function shock(x) { const p = (Number(x) - 1) * 100; return (p > 0 ? "+" : "") + fmt(p, 1) + " %"; }
function dash(x, d) { return x === null || x === undefined ? "–" : fmt(x, d); }

async function refreshOptions() {
  try {
    const opts = await api("v1/options");
    const t = $("options");
    if (!opts.length) { t.innerHTML = `<tr><td class="dim">no option series listed</td></tr>`; return; }
    t.innerHTML = "<tr>" + OPTION_COLS.map((c) => `<th>${c}</th>`).join("") + "</tr>";
    for (const o of opts) {
      const vol = o.mark_vol === null ? "–" : fmt(Number(o.mark_vol) * 100, 2) + " %";
      const price = o.settled ? "settled @ " + fmt(o.settlement_price) : dash(o.mark_price, 2);
      t.insertAdjacentHTML("beforeend", `<tr data-symbol="${esc(o.symbol)}"><td>${esc(o.symbol)}</td><td>${esc(o.right)}</td>` +
        `<td>${fmt(o.strike)}</td><td>${expiry(o.expiry_ns)}</td><td>${vol}</td><td>${dash(o.index_price, 2)}</td>` +
        `<td>${price}</td><td>${dash(o.delta, 4)}</td><td>${dash(o.gamma, 8)}</td><td>${dash(o.vega, 2)}</td>` +
        `<td>${dash(o.theta, 2)}</td><td>${fmt(o.open_interest, 4)}</td></tr>`);
    }
  } catch (e) {
    $("error").textContent = String(e.message || e);
  }
}

let pfAccount = "";
async function refreshPortfolio() {
  if (!pfAccount) return;
  const out = $("pf"), sum = $("pf_summary");
  let p;
  try {
    p = await api(`v1/accounts/${encodeURIComponent(pfAccount)}/portfolio`);
  } catch (e) {
    sum.textContent = "account " + pfAccount + ": " + String(e.message || e);
    out.innerHTML = "";
    return;
  }
  sum.textContent = `account ${p.account_id} (${p.margin_mode}): equity ${fmt(p.equity)}, maintenance ${fmt(p.maintenance_margin)}, ` +
    `initial ${fmt(p.initial_margin)}, health ${fmt(p.health)}; delta ${fmt(p.total.delta, 4)}, gamma ${fmt(p.total.gamma, 8)}, ` +
    `vega ${fmt(p.total.vega)}, theta/day ${fmt(p.total.theta)}` + (p.valuation_blocked ? " — valuation blocked: " + p.valuation_blocked : "");
  let html = p.underlyings.length ? "" : `<p class="dim">no positions valued with the portfolio model</p>`;
  for (const u of p.underlyings) {
    const worst = u.worst_index === null ? `the basis contingency (${fmt(u.worst_pnl)})`
      : `#${u.worst_index} ${esc(u.worst_kind)} (${fmt(u.worst_pnl)})`;
    html += `<div class="pfhead" data-underlying="${esc(u.underlying)}">${esc(u.underlying)} at ${fmt(u.spot)}: worst <b data-testid="pf-worst">${worst}</b>, ` +
      `maintenance requirement ${fmt(u.maintenance_requirement)}, initial ${fmt(u.initial_requirement)}</div>`;
    html += `<table class="scen"><tr><th>#</th><th>kind</th><th>spot shock</th><th>vol shock</th><th>dampening</th><th>P&amp;L</th></tr>`;
    for (const s of u.scenarios) {
      const cls = s.index === u.worst_index ? ` class="worst" data-testid="pf-worst-row"` : "";
      html += `<tr${cls}><td>${s.index}</td><td>${esc(s.kind)}</td><td>${shock(s.spot_shock)}</td>` +
        `<td>${esc(s.vol_shock)}</td><td>${fmt(s.dampening, 4)}</td><td>${fmt(s.pnl)}</td></tr>`;
    }
    html += "</table>";
  }
  out.innerHTML = html;
}

async function main() {
  state.prices = lineChart($("prices"), [], 240);
  if (!KEY) $("error").textContent = "no API key: open the page as /#key=<API key>";
  $("pf_form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    pfAccount = $("pf_account").value.trim();
    refreshPortfolio();
  });
  await refresh();
  refreshOptions();
  connect();
  setInterval(refresh, 1000);
  setInterval(() => { refreshOptions(); refreshPortfolio(); }, 2000);
  setInterval(redraw, REDRAW_MS);
}
main();
