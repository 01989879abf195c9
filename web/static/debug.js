// The operator's view: a header of service-wide figures, a paged list of
// streams (searchable, sortable) and one opened stream with its connections.
//
// Every 2 s it asks for what it shows, never for the whole actor tree:
//   /debug/actors?summary=1          counts by state, websockets, rates
//   /debug/actors?q=&sort=&limit=&cursor=   the one page of streams on screen
//   /debug/actors?stream=<id>        the opened stream and its connections
//   /metrics, /health/ready          reconnects, event totals, broker state
// The server pages by keyset cursor, so 10,000 streams are 100 rows in the DOM.
//
// The page's state (search, sort, state filter, opened stream) lives in the
// URL fragment, so a view can be bookmarked or shared (the token is removed
// from the fragment once read and kept in sessionStorage for the tab).
// Everything is inserted with textContent: routing keys and peers are data
// from clients and must never become markup.
"use strict";

(function () {
  const REFRESH_MS = 2000;
  const CHART_POINTS = 60;
  const SEARCH_DELAY_MS = 250;
  const TOKEN_KEY = "ess-debug-token";
  const LAG_WARNING = 1000;
  const STATE_CLASS = {
    good: ["running", "active", "open", "attached", "shared", "ready", "up"],
    idle: ["idle"],
    warn: ["starting", "opening", "waiting", "attaching", "reconnecting", "restarting", "closing", "stopping", "shutting down"],
    bad: ["closed", "stopped", "detached", "failed", "down", "error"],
  };
  const FIRST_FIELDS = ["peer", "start", "last_ordinal", "lag", "rate_in", "rate_out"];

  const view = readFragment();
  let token = initialToken(view);
  let cursors = [null]; // the cursor of each page up to the one shown (null: the first)
  let nextCursor = null;
  let lastTotals = null; // {at, received, sent} of the previous /metrics read
  const history = [];
  let firstRenderDone = false;
  let searchTimer = null;

  // -- the URL fragment and the token --------------------------------------

  function readFragment() {
    const hash = new URLSearchParams(window.location.hash.replace(/^#/, ""));
    return {
      token: hash.get("token") || new URLSearchParams(window.location.search).get("token"),
      q: hash.get("q") || "",
      sort: hash.get("sort") || "id",
      state: hash.get("state") || "",
      stream: hash.get("stream") || null,
    };
  }

  function writeFragment() {
    const hash = new URLSearchParams();
    if (view.q) hash.set("q", view.q);
    if (view.sort !== "id") hash.set("sort", view.sort);
    if (view.state) hash.set("state", view.state);
    if (view.stream) hash.set("stream", view.stream);
    const text = hash.toString();
    window.history.replaceState(null, "", window.location.pathname + (text ? "#" + text : ""));
  }

  function initialToken(fromUrl) {
    if (fromUrl.token) {
      sessionStorage.setItem(TOKEN_KEY, fromUrl.token);
      return fromUrl.token;
    }
    return sessionStorage.getItem(TOKEN_KEY) || "";
  }

  // -- fetching ----------------------------------------------------------------

  async function get(path) {
    const headers = {};
    if (token) headers.Authorization = "Bearer " + token;
    const response = await fetch(path, { headers: headers, cache: "no-store" });
    if (response.status === 401) throw new Error("401: enter the bearer token above (or open this page with #token=...)");
    return response;
  }

  async function getJson(path) {
    const response = await get(path);
    const body = await response.json();
    if (!response.ok && response.status !== 404) throw new Error("HTTP " + response.status + " from " + path + ": " + body.detail);
    return { status: response.status, body: body };
  }

  function listPath() {
    const params = new URLSearchParams({ sort: view.sort, limit: document.getElementById("page-size").value });
    if (view.q) params.set("q", view.q);
    if (view.state) params.set("state", view.state);
    const cursor = cursors[cursors.length - 1];
    if (cursor !== null) params.set("cursor", cursor);
    return "/debug/actors?" + params.toString();
  }

  // -- small helpers -----------------------------------------------------------

  function element(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  function stateClass(state) {
    const s = String(state).toLowerCase();
    for (const [css, states] of Object.entries(STATE_CLASS)) {
      if (states.includes(s)) return "state " + css;
    }
    return "state";
  }

  function statePill(state) {
    return element("span", stateClass(state), state);
  }

  function formatAge(seconds) {
    const s = Math.max(0, Math.floor(seconds));
    if (s < 60) return s + "s";
    if (s < 3600) return Math.floor(s / 60) + "m " + (s % 60) + "s";
    if (s < 86400) return Math.floor(s / 3600) + "h " + Math.floor((s % 3600) / 60) + "m";
    return Math.floor(s / 86400) + "d " + Math.floor((s % 86400) / 3600) + "h";
  }

  function formatRate(value) {
    if (value === null || value === undefined) return "-";
    return value >= 100 ? Math.round(value).toLocaleString() : Number(value).toFixed(1);
  }

  function formatNumber(value) {
    return value === null || value === undefined ? "-" : Number(value).toLocaleString();
  }

  function setText(id, text) {
    document.getElementById(id).textContent = text;
  }

  function setStatus(text, isError) {
    const status = document.getElementById("status");
    status.textContent = text;
    status.className = isError ? "status error" : "status";
  }

  function announce(name, detail) {
    document.dispatchEvent(new CustomEvent(name, { detail: detail }));
  }

  // -- the header and the chart ----------------------------------------------

  function parseMetrics(text) {
    const sums = {};
    for (const line of text.split("\n")) {
      const match = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? ([-+0-9.eE]+|NaN|[+-]Inf)$/.exec(line);
      if (match) sums[match[1]] = (sums[match[1]] || 0) + Number(match[3]);
    }
    return sums;
  }

  async function refreshOverview() {
    const [summary, metricsText, ready] = await Promise.all([
      getJson("/debug/actors?summary=1"),
      get("/metrics").then((r) => (r.ok ? r.text() : "")).catch(() => ""),
      fetch("/health/ready", { cache: "no-store" }).then(async (r) => ({ ok: r.ok, body: await r.json() })).catch(() => null),
    ]);
    const s = summary.body;
    if (s.replica) setText("replica", "replica " + s.replica);
    setText("stat-uptime", formatAge(s.uptime));
    setText("stat-streams", formatNumber(s.streams));
    setText("stat-websockets", formatNumber(s.connections));
    // The stream furthest behind (ess_connection_lag_events_max names no stream).
    const worst = s.lag_max;
    setText("stat-lag", worst ? formatNumber(worst.lag) + " events" : "-");
    setText("stat-lag-stream", worst ? "stream " + worst.stream : "");
    const states = document.getElementById("stat-states");
    states.replaceChildren(...Object.entries(s.states).map(([state, count]) => statePill(state + " " + count.toLocaleString())));
    for (const pill of states.children) pill.className = stateClass(pill.textContent.split(" ")[0]);

    const broker = document.getElementById("stat-broker");
    if (ready === null) {
      broker.replaceChildren(statePill("down"));
    } else {
      broker.replaceChildren(statePill(ready.ok ? "up" : "down"));
      broker.title = ready.ok ? "ready" : String(ready.body.detail);
    }

    const metrics = parseMetrics(metricsText);
    let rateIn = s.rate_in;
    let rateOut = s.rate_out;
    if ("ess_messages_received_total" in metrics) {
      const now = { at: performance.now() / 1000, received: metrics.ess_messages_received_total, sent: metrics.ess_messages_sent_total || 0 };
      if (lastTotals !== null && now.at > lastTotals.at) {
        rateIn = Math.max(0, now.received - lastTotals.received) / (now.at - lastTotals.at);
        rateOut = Math.max(0, now.sent - lastTotals.sent) / (now.at - lastTotals.at);
      }
      lastTotals = now;
    }
    setText("stat-in", formatRate(rateIn));
    setText("stat-out", formatRate(rateOut));
    setText("stat-reconnects", formatNumber(metrics.ess_broker_reconnects_total));
    const brokerNotes = [];
    if ("ess_broker_connections" in metrics) brokerNotes.push(formatNumber(metrics.ess_broker_connections) + " connections");
    if ("ess_broker_connection_attempts_total" in metrics) {
      brokerNotes.push(formatNumber(metrics.ess_broker_connection_attempts_total) + " connection attempts");
    }
    setText("stat-attempts", brokerNotes.join(" · "));
    history.push({ in: rateIn, out: rateOut });
    if (history.length > CHART_POINTS) history.shift();
    drawChart();
    document.body.dataset.overview = "shown";
    announce("ess-overview", { streams: s.streams });
  }

  function drawChart() {
    const canvas = document.getElementById("chart");
    const ratio = window.devicePixelRatio || 1;
    const width = canvas.clientWidth || 300;
    const height = canvas.clientHeight || 70;
    canvas.width = width * ratio;
    canvas.height = height * ratio;
    const g = canvas.getContext("2d");
    g.scale(ratio, ratio);
    g.clearRect(0, 0, width, height);
    const top = Math.max(1, ...history.map((p) => Math.max(p.in, p.out)));
    g.strokeStyle = "#d9dee5";
    g.beginPath();
    g.moveTo(0, height - 0.5);
    g.lineTo(width, height - 0.5);
    g.stroke();
    const style = getComputedStyle(document.documentElement);
    for (const [key, color] of [["in", style.getPropertyValue("--in")], ["out", style.getPropertyValue("--out")]]) {
      g.strokeStyle = color.trim() || "#333";
      g.lineWidth = key === "in" ? 3 : 1.5;
      g.setLineDash(key === "in" ? [] : [4, 3]); // in and out often coincide: both stay visible
      g.beginPath();
      history.forEach((point, i) => {
        const x = (width * (i + CHART_POINTS - history.length)) / (CHART_POINTS - 1);
        const y = height - 2 - ((height - 14) * point[key]) / top;
        if (i === 0) g.moveTo(x, y);
        else g.lineTo(x, y);
      });
      g.stroke();
    }
    g.fillStyle = "#6b7785";
    g.font = "10px system-ui, sans-serif";
    g.fillText("max " + formatRate(top) + "/s", 2, 10);
  }

  // -- the list of streams -----------------------------------------------------

  function renderList(page) {
    const now = Date.now() / 1000;
    const rows = page.streams.map((stream) => {
      const tr = element("tr");
      tr.dataset.id = String(stream.id);
      if (String(stream.id) === view.stream) tr.className = "selected";
      tr.append(
        element("td", "num", stream.id),
        element("td", "", stream.name),
        element("td", "key", stream.routing_key),
      );
      const state = element("td");
      state.appendChild(statePill(stream.state));
      tr.append(
        state,
        element("td", "num", stream.connections),
        element("td", "num", formatRate(stream.rate_in)),
        element("td", "num", formatRate(stream.rate_out)),
        element("td", "num" + (stream.lag >= LAG_WARNING ? " lagging" : ""), formatNumber(stream.lag)),
        element("td", "num", formatAge(now - stream.created_at)),
      );
      tr.title = stream.routing_key;
      return tr;
    });
    document.querySelector("#streams tbody").replaceChildren(...rows);
    for (const th of document.querySelectorAll("#streams th[data-sort]")) {
      th.classList.toggle("sorted", th.dataset.sort === view.sort);
    }
    nextCursor = page.next_cursor;
    const size = Number(document.getElementById("page-size").value);
    const first = (cursors.length - 1) * size;
    const shown = page.streams.length ? first + 1 + "–" + (first + page.streams.length) : "none";
    setText("page-info", shown + " of " + page.total.toLocaleString() + (view.q || view.state ? " matching" : " streams"));
    document.getElementById("next-page").disabled = nextCursor === null;
    document.getElementById("prev-page").disabled = cursors.length < 2;
    document.getElementById("first-page").disabled = cursors.length < 2;
    if (!firstRenderDone) {
      firstRenderDone = true;
      document.body.dataset.firstRender = String(Math.round(performance.now()));
    }
    announce("ess-list", { q: view.q, sort: view.sort, ids: page.streams.map((s) => s.id) });
  }

  async function refreshList() {
    const requested = listPath();
    const { body } = await getJson(requested);
    if (requested === listPath()) renderList(body); // not overtaken by a newer search
  }

  // -- the opened stream ------------------------------------------------------

  function fieldsOf(counters) {
    const keys = Object.keys(counters);
    const ordered = FIRST_FIELDS.filter((k) => k in counters).concat(keys.filter((k) => !FIRST_FIELDS.includes(k)));
    const box = element("div", "fields");
    for (const key of ordered) {
      const value = counters[key];
      if (Array.isArray(value) && value.some((v) => v !== null && typeof v === "object")) {
        box.append(element("span", "key", key), historyTable(value));
        continue;
      }
      let text = value === null || value === undefined ? "-" : Array.isArray(value) ? value.join(", ") : value;
      if (key.startsWith("rate_")) text = formatRate(value) + "/s";
      else if (key.endsWith("_at") && typeof value === "number") text = new Date(value * 1000).toISOString();
      const cell = element("span", "value" + (key === "lag" && value >= LAG_WARNING ? " lagging" : ""), text);
      box.append(element("span", "key", key), cell);
    }
    return box;
  }

  function historyTable(entries) {
    // e.g. a close history: one row per entry, its keys as columns.
    const table = element("table", "history");
    const keys = [...new Set(entries.flatMap((entry) => Object.keys(entry)))];
    const head = element("tr");
    for (const key of keys) head.appendChild(element("th", "", key));
    table.appendChild(head);
    for (const entry of entries) {
      const tr = element("tr");
      for (const key of keys) tr.appendChild(element("td", "", entry[key] === undefined ? "" : entry[key]));
      table.appendChild(tr);
    }
    return table;
  }

  function renderNode(node) {
    const box = element("div", "node " + node.kind);
    box.dataset.kind = node.kind;
    const head = element("div", "head");
    head.append(element("span", "kind", node.kind), element("span", "name", node.name), statePill(node.state));
    const started = Date.parse(node.started_at);
    if (!Number.isNaN(started)) head.appendChild(element("span", "muted", "age " + formatAge(Date.now() / 1000 - started / 1000)));
    box.appendChild(head);
    box.appendChild(fieldsOf(node.counters || {}));
    for (const child of node.children || []) box.appendChild(renderNode(child));
    return box;
  }

  function renderStream(found) {
    const detail = document.getElementById("detail");
    if (found.status === 404) {
      detail.replaceChildren(element("p", "muted", "Stream " + view.stream + " no longer exists."));
    } else {
      const stream = found.body;
      const title = element("h2", "", "Stream " + stream.counters.id + " ");
      title.appendChild(element("span", "muted", stream.counters.routing_key));
      const connections = (stream.children || []).filter((c) => c.kind === "connection").length;
      const note = element("p", "muted small", connections + " connection(s); lag is in events behind the newest ordinal the stream has seen.");
      detail.replaceChildren(title, note, renderNode(stream));
    }
    announce("ess-stream", { id: view.stream, status: found.status });
  }

  async function refreshDetail() {
    if (!view.stream) return;
    const wanted = view.stream;
    const found = await getJson("/debug/actors?stream=" + encodeURIComponent(wanted));
    if (wanted === view.stream) renderStream(found);
  }

  // -- the loop and the controls -------------------------------------------------

  let refreshing = false;

  async function refresh() {
    if (refreshing) return; // a slow service gets one round of requests at a time, not a pile
    refreshing = true;
    try {
      const results = await Promise.allSettled([refreshList(), refreshOverview(), refreshDetail()]);
      const failed = results.find((r) => r.status === "rejected");
      if (failed) setStatus(String(failed.reason.message || failed.reason), true);
      else setStatus("Updated " + new Date().toLocaleTimeString(), false);
    } finally {
      refreshing = false;
    }
  }

  function restartList() {
    cursors = [null];
    writeFragment();
    refreshList().catch((error) => setStatus(String(error.message || error), true));
  }

  document.getElementById("token-form").addEventListener("submit", function (event) {
    event.preventDefault();
    token = document.getElementById("token").value.trim();
    sessionStorage.setItem(TOKEN_KEY, token);
    refresh();
  });
  const search = document.getElementById("search");
  search.value = view.q;
  search.addEventListener("input", function () {
    window.clearTimeout(searchTimer);
    searchTimer = window.setTimeout(function () {
      view.q = search.value.trim();
      restartList();
    }, SEARCH_DELAY_MS);
  });
  const stateFilter = document.getElementById("state-filter");
  stateFilter.value = view.state;
  stateFilter.addEventListener("change", function () {
    view.state = stateFilter.value;
    restartList();
  });
  document.getElementById("page-size").addEventListener("change", restartList);
  for (const th of document.querySelectorAll("#streams th[data-sort]")) {
    th.addEventListener("click", function () {
      view.sort = th.dataset.sort;
      restartList();
    });
  }
  document.getElementById("first-page").addEventListener("click", restartList);
  document.getElementById("prev-page").addEventListener("click", function () {
    if (cursors.length > 1) cursors.pop();
    refreshList();
  });
  document.getElementById("next-page").addEventListener("click", function () {
    if (nextCursor !== null) cursors.push(nextCursor);
    refreshList();
  });
  document.querySelector("#streams tbody").addEventListener("click", function (event) {
    const row = event.target.closest("tr");
    if (!row) return;
    view.stream = row.dataset.id;
    for (const tr of this.children) tr.classList.toggle("selected", tr === row);
    writeFragment();
    refreshDetail().catch((error) => setStatus(String(error.message || error), true));
  });

  writeFragment(); // drops a token from the address bar
  refresh();
  window.setInterval(refresh, REFRESH_MS);
})();
