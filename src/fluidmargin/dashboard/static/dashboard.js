// fluidmargin live dashboard. No framework, no CDN: uPlot is vendored next to this file.
//
// Data it reads (served by fluidmargin.service):
//   GET  v1/dashboard/summary  -> {seq, accounts, markets: [{symbol, size_decimals, index, mark,
//        funding_rate, open_interest_long, halted}], health: {edges, counts}, statuses: {healthy,
//        at_risk, liquidating, bankrupt}, funds: {name: usd}, vault: {equity, shares} | null, auctions}
//        (money and prices as decimal strings)
//   WS   v1/stream?from_seq=N&key=K -> {seq, type, event} per logged record, integers as strings;
//        on reconnect it resumes from the last seq seen + 1, so nothing is missed or repeated.
// The API key comes from the page address: /#key=... (or ?key=...).
"use strict";

const KEY = new URLSearchParams(location.hash.slice(1)).get("key") || new URLSearchParams(location.search).get("key") || "";
const PRICE = 1e8, QUOTE = 1e6, MAX_POINTS = 600, FEED_ROWS = 60;
const $ = (id) => document.getElementById(id);
const state = { seq: 0, events: 0, liq: 0, markets: {}, sizeDec: {}, prices: null, funds: null, risk: null };

function fmt(x, d = 2) { return Number(x).toLocaleString(undefined, { maximumFractionDigits: d }); }
function now() { return Date.now() / 1000; }

function lineChart(el, series, height = 220) {
  const opts = {
    width: el.clientWidth || 600, height,
    series: [{}, ...series.map((s, i) => ({ label: s, stroke: ["#4fc3f7", "#ffb300", "#81c784", "#e57373", "#ba68c8", "#90a4ae"][i % 6], width: 1.5 }))],
    axes: [{ stroke: "#8391a1" }, { stroke: "#8391a1", size: 70 }],
    scales: { x: { time: true } },
  };
  const data = [[], ...series.map(() => [])];
  return { plot: new uPlot(opts, data, el), data, series };
}

function push(chart, values) {
  chart.data[0].push(now());
  chart.series.forEach((s, i) => chart.data[i + 1].push(values[s] ?? null));
  if (chart.data[0].length > MAX_POINTS) chart.data.forEach((a) => a.shift());
  chart.plot.setData(chart.data);
}

function barChart(el) {
  const opts = {
    width: el.clientWidth || 460, height: 200,
    series: [{}, { label: "accounts", stroke: "#4fc3f7", fill: "rgba(79,195,247,0.35)", paths: uPlot.paths.bars({ size: [0.9] }) }],
    axes: [{ stroke: "#8391a1", values: (u, v) => v.map((x) => fmt(x, 2)) }, { stroke: "#8391a1", size: 60 }],
    scales: { x: { time: false } },
  };
  return new uPlot(opts, [[0], [0]], el);
}

async function api(path) {
  const r = await fetch(path, { headers: KEY ? { Authorization: "Bearer " + KEY } : {} });
  if (!r.ok) throw new Error(path + ": " + r.status);
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
      state.sizeDec[m.symbol] = m.size_decimals;
      mk.insertAdjacentHTML("beforeend", `<tr><td>${m.symbol}</td><td>${m.halted ? "HALTED" : ""}</td><td>${fmt(m.index)}</td><td>${fmt(m.mark)}</td><td>${fmt(Number(m.funding_rate) * 100, 4)} %</td></tr>`);
      oi.insertAdjacentHTML("beforeend", `<tr><td>${m.symbol}</td><td>${fmt(m.open_interest_long, 4)}</td></tr>`);
    }
    if (!health) health = barChart($("health"));
    health.setData([s.health.edges.slice(0, s.health.counts.length), s.health.counts]);
    $("at_risk").textContent = fmt(s.statuses.at_risk, 0);
    $("liquidating").textContent = fmt(s.statuses.liquidating, 0);
    $("bankrupt").textContent = fmt(s.statuses.bankrupt, 0);
    if (!state.risk) state.risk = lineChart($("risk_ts"), ["at_risk", "liquidating", "bankrupt"], 140);
    push(state.risk, s.statuses);
    const f = {};
    for (const [k, v] of Object.entries(s.funds)) f["fund " + k] = Number(v);
    if (s.vault) f["vault"] = Number(s.vault.equity);
    if (!state.funds) state.funds = lineChart($("funds"), Object.keys(f), 200);
    push(state.funds, f);
    if (!state.seq) state.seq = s.seq;
  } catch (e) {
    console.warn(e);
  }
}

function feedRow(seq, type, e) {
  const market = e.market || (e.auction_id ? e.auction_id.replace(/-\d+$/, "") : "");
  const dec = state.sizeDec[market] ?? 8;
  let accounts = e.account_id ?? (e.account_ids ? (e.account_ids.length > 3 ? e.account_ids.length + " accounts" : e.account_ids.join(",")) : "");
  let size = e.size_base_q ?? (e.sizes ? e.sizes.reduce((a, b) => a + Number(b), 0) : e.net_base_q);
  let price = e.price_q ? fmt(Number(e.price_q) / PRICE) : "";
  let detail = "";
  if (e.fee_quote_q) detail = "penalty " + fmt(Number(e.fee_quote_q) / QUOTE);
  if (e.fees) detail = "penalties " + fmt(e.fees.reduce((a, b) => a + Number(b), 0) / QUOTE);
  if (e.slippage_quote_q) detail = "slippage " + fmt(Number(e.slippage_quote_q) / QUOTE);
  if (e.fund_pnl_quote_q) detail += " fund " + fmt(Number(e.fund_pnl_quote_q) / QUOTE);
  if (e.amount_quote_q) detail = "amount " + fmt(Number(e.amount_quote_q) / QUOTE);
  if (e.reason) detail = e.reason;
  if (e.how) detail = e.how;
  const tr = document.createElement("tr");
  tr.innerHTML = `<td>${seq}</td><td>${type}</td><td>${market}</td><td>${accounts}</td><td>${size === undefined ? "" : fmt(Number(size) / 10 ** dec, 6)}</td><td>${price}</td><td>${detail}</td>`;
  const body = $("feed");
  body.insertBefore(tr, body.firstChild);
  while (body.rows.length > FEED_ROWS) body.deleteRow(-1);
}

const FEED = new Set(["PositionLiquidated", "PositionsLiquidated", "BatchNetted", "LiquidationExecuted", "AuctionStarted",
  "AuctionBidFilled", "AuctionReset", "AuctionFinished", "BackstopTakeover", "AutoDeleveraged", "BadDebtSocialized", "MarketHalted", "MarketResumed"]);

function onEvent(msg) {
  state.seq = msg.seq;
  state.events += 1;
  $("seq").textContent = msg.seq;
  $("nevents").textContent = fmt(state.events, 0);
  const e = msg.event;
  if (msg.type === "MarkPriceUpdated" || msg.type === "IndexPriceUpdated") {
    const key = msg.type === "MarkPriceUpdated" ? "mark " + e.market : "index " + e.asset;
    state.markets[key] = Number(e.price_q) / PRICE;
    if (!state.prices) return;
    if (!state.prices.series.includes(key)) {
      state.prices.plot.destroy();
      $("prices").innerHTML = "";
      state.prices = lineChart($("prices"), Object.keys(state.markets).sort(), 240);
    }
    push(state.prices, state.markets);
  } else if (FEED.has(msg.type)) {
    state.liq += msg.type === "PositionsLiquidated" ? e.account_ids.length : 1;
    $("nliq").textContent = fmt(state.liq, 0) + " liquidation events";
    feedRow(msg.seq, msg.type, e);
  }
}

let ws = null, retry = 500;
function connect() {
  const proto = location.protocol === "https:" ? "wss:" : "ws:";
  const base = location.pathname.replace(/[^/]*$/, "");
  const url = `${proto}//${location.host}${base}v1/stream?from_seq=${state.seq + 1}` + (KEY ? `&key=${encodeURIComponent(KEY)}` : "");
  ws = new WebSocket(url);
  ws.onopen = () => { $("conn").textContent = "live"; $("conn").className = "pill on"; retry = 500; };
  ws.onmessage = (m) => {
    const msg = JSON.parse(m.data);
    if (typeof msg.seq === "number" && msg.type) onEvent(msg);
  };
  ws.onclose = () => {
    $("conn").textContent = "reconnecting"; $("conn").className = "pill off";
    setTimeout(connect, retry);
    retry = Math.min(retry * 2, 8000);
  };
}

async function main() {
  state.prices = lineChart($("prices"), [], 240);
  await refresh();
  connect();
  setInterval(refresh, 1000);
}
main();
