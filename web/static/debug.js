// Renders GET /debug/actors as a tree, refreshed every 2 s.
// The snapshot's exact shape belongs to the actors, so this renders any tree
// of objects: a node's kind/name/state/start time go in its heading, its other
// scalar members (nested objects flattened, e.g. counters.sent) as fields, and
// its "children" array (or any array of objects) nested below it.
// Everything is inserted with textContent: routing keys and peers are data
// from clients and must never become markup.
"use strict";

(function () {
  const REFRESH_MS = 2000;
  const TOKEN_KEY = "ess-debug-token";
  const HEADING_KEYS = new Set(["kind", "name", "state", "children"]);
  const START_KEYS = ["started_at", "start_time", "started", "created_at"];
  const GOOD = new Set(["running", "active", "open", "connected", "consuming", "ready", "serving", "idle"]);
  const WARN = new Set(["starting", "connecting", "waiting", "reconnecting", "closing", "paused"]);
  const BAD = new Set(["failed", "crashed", "closed", "stopped", "error", "unavailable"]);

  function initialToken() {
    const hash = new URLSearchParams(window.location.hash.replace(/^#/, ""));
    const query = new URLSearchParams(window.location.search);
    const fromUrl = hash.get("token") || query.get("token");
    if (fromUrl) {
      sessionStorage.setItem(TOKEN_KEY, fromUrl);
      return fromUrl;
    }
    return sessionStorage.getItem(TOKEN_KEY) || "";
  }

  let token = initialToken();

  function element(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = String(text);
    return node;
  }

  function startSeconds(node) {
    for (const key of START_KEYS) {
      const value = node[key];
      if (typeof value === "number") return value > 1e12 ? value / 1000 : value;
      if (typeof value === "string" && !Number.isNaN(Date.parse(value))) return Date.parse(value) / 1000;
    }
    return null;
  }

  function formatAge(seconds) {
    const s = Math.max(0, Math.floor(seconds));
    if (s < 60) return s + "s";
    if (s < 3600) return Math.floor(s / 60) + "m " + (s % 60) + "s";
    if (s < 86400) return Math.floor(s / 3600) + "h " + Math.floor((s % 3600) / 60) + "m";
    return Math.floor(s / 86400) + "d " + Math.floor((s % 86400) / 3600) + "h";
  }

  function isNode(value) {
    return value !== null && typeof value === "object" && !Array.isArray(value);
  }

  function childArrays(node) {
    const found = [];
    for (const [key, value] of Object.entries(node)) {
      if (Array.isArray(value) && (key === "children" || value.some(isNode))) {
        found.push(...value.filter(isNode));
      }
    }
    return found;
  }

  function scalarFields(node, prefix, out) {
    for (const [key, value] of Object.entries(node)) {
      if (!prefix && HEADING_KEYS.has(key)) continue;
      if (Array.isArray(value)) {
        if (!value.some(isNode)) out.push([prefix + key, value.join(", ")]);
      } else if (isNode(value)) {
        scalarFields(value, prefix + key + ".", out);
      } else {
        out.push([prefix + key, value === null ? "-" : value]);
      }
    }
    return out;
  }

  function stateClass(state) {
    const s = String(state).toLowerCase();
    if (GOOD.has(s)) return "state good";
    if (WARN.has(s)) return "state warn";
    if (BAD.has(s)) return "state bad";
    return "state";
  }

  function renderNode(node) {
    const box = element("div", "node");
    const head = element("div", "head");
    if (node.kind !== undefined) head.appendChild(element("span", "kind", node.kind));
    head.appendChild(element("span", "name", node.name !== undefined ? node.name : "(unnamed)"));
    if (node.state !== undefined) head.appendChild(element("span", stateClass(node.state), node.state));
    const started = startSeconds(node);
    if (started !== null) head.appendChild(element("span", "muted", "age " + formatAge(Date.now() / 1000 - started)));
    box.appendChild(head);

    const fields = element("div", "fields");
    for (const [key, value] of scalarFields(node, "", [])) {
      const field = element("span", "field");
      field.appendChild(element("span", "key", key + "="));
      field.appendChild(element("span", "value", value));
      fields.appendChild(field);
    }
    if (fields.childNodes.length) box.appendChild(fields);

    const children = childArrays(node);
    if (children.length) {
      const list = element("div", "children");
      for (const child of children) list.appendChild(renderNode(child));
      box.appendChild(list);
    }
    return box;
  }

  function setStatus(text, isError) {
    const status = document.getElementById("status");
    status.textContent = text;
    status.className = isError ? "status error" : "status";
  }

  async function refresh() {
    const headers = { Accept: "application/json" };
    if (token) headers.Authorization = "Bearer " + token;
    try {
      const response = await fetch("/debug/actors", { headers: headers, cache: "no-store" });
      if (response.status === 401) {
        setStatus("401: enter the bearer token above (or open this page with #token=...).", true);
        return;
      }
      if (!response.ok) {
        setStatus("HTTP " + response.status + " from /debug/actors", true);
        return;
      }
      const tree = await response.json();
      const main = document.getElementById("tree");
      main.replaceChildren(renderNode(tree));
      setStatus("Updated " + new Date().toLocaleTimeString(), false);
    } catch (error) {
      setStatus("Cannot reach the service: " + error, true);
    }
  }

  document.getElementById("token-form").addEventListener("submit", function (event) {
    event.preventDefault();
    token = document.getElementById("token").value.trim();
    sessionStorage.setItem(TOKEN_KEY, token);
    refresh();
  });

  refresh();
  window.setInterval(refresh, REFRESH_MS);
})();
