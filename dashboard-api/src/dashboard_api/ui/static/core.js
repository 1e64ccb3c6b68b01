/* What every view shares: formatting, the API and its streams, the /stats poll, config. */

export const $ = (selector, root = document) => root.querySelector(selector);
export const $$ = (selector, root = document) => Array.from(root.querySelectorAll(selector));
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

export function debounce(fn, ms) {
  let timer = null;
  return (...args) => {
    clearTimeout(timer);
    timer = setTimeout(() => fn(...args), ms);
  };
}

const ESCAPES = { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" };
export const esc = (value) => String(value ?? "").replace(/[&<>"']/g, (c) => ESCAPES[c]);

const numberFormat = new Intl.NumberFormat(undefined, { maximumFractionDigits: 2 });
const countFormat = new Intl.NumberFormat(undefined);
export const fmt = (n) => (n === null || n === undefined || Number.isNaN(n) ? "–" : numberFormat.format(n));
export const fmtCount = (n) => (n === null || n === undefined ? "–" : countFormat.format(n));
const timeFormat = new Intl.DateTimeFormat(undefined, {
  month: "short", day: "numeric", hour: "2-digit", minute: "2-digit", second: "2-digit",
});
export const fmtTime = (iso) => (iso ? timeFormat.format(new Date(iso)) : "–");

export function ago(iso) {
  if (!iso) return "never";
  const s = Math.round((Date.now() - Date.parse(iso)) / 1000);
  if (s < 5) return "just now";
  if (s < 60) return `${s} s ago`;
  if (s < 3600) return `${Math.floor(s / 60)} min ago`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ago`;
  return `${Math.floor(s / 86400)} d ago`;
}

export function toast(message, kind = "") {
  const el = document.createElement("div");
  el.className = `toast ${kind}`;
  el.textContent = message;
  $("#toasts").append(el);
  setTimeout(() => el.remove(), 4500);
}

function storage(area) {
  return {
    get: (key, fallback = null) => area.getItem(`telemetry.${key}`) ?? fallback,
    set: (key, value) => area.setItem(`telemetry.${key}`, value),
    remove: (key) => area.removeItem(`telemetry.${key}`),
  };
}

// Preferences outlive the tab; the API key is kept for this tab's session only.
export const store = storage(localStorage);
export const session = storage(sessionStorage);

function keyHeaders(headers) {
  const key = session.get("apiKey");
  if (key) headers["X-API-Key"] = key;
  return headers;
}

/* The project every call works in: the one chosen in the switcher (the admin key, or
 * any caller when keys are off, may choose); none means the server's default, which for a
 * project's key is its own project. */
function inProject(url) {
  const project = session.get("project");
  if (project && !url.searchParams.has("project_id")) url.searchParams.set("project_id", project);
  return url;
}

// A 401 means the server wants a key this tab has not got (or a revoked one): app.js asks.
function keyRefused() {
  window.dispatchEvent(new CustomEvent("telemetry:needs-key"));
}

// ---------------------------------------------------------------- API access

export class HttpError extends Error {
  constructor(status, body) {
    super(body?.detail || `HTTP ${status}`);
    this.status = status;
    this.body = body;
  }
}

// The page is served by the API it reads: paths are relative to the origin.
export async function api(path, { method = "GET", params = null, json = undefined, signal } = {}) {
  const url = new URL(path, location.origin);
  for (const [key, value] of Object.entries(params || {})) {
    if (value !== null && value !== undefined && value !== "") url.searchParams.set(key, value);
  }
  inProject(url);
  const headers = keyHeaders({ Accept: "application/json" });
  let body;
  if (json !== undefined) {
    headers["Content-Type"] = "application/json";
    body = JSON.stringify(json);
  }
  const response = await fetch(url, { method, headers, body, signal });
  const answer = response.status === 204 ? null : await response.json().catch(() => null);
  if (response.status === 401) keyRefused();
  if (!response.ok) throw new HttpError(response.status, answer);
  return answer;
}

/* Server-Sent Events over fetch rather than EventSource: fetch sees the status, so a
 * server without the stream (404/405) is told apart from one that is briefly away,
 * and the caller can fall back to polling. Reconnects with backoff otherwise. */
export function openStream(path, { onEvent, onState }) {
  let stopped = false;
  let controller = null;
  (async () => {
    let backoff = 1000;
    while (!stopped) {
      controller = new AbortController();
      try {
        const response = await fetch(inProject(new URL(path, location.origin)), {
          headers: keyHeaders({ Accept: "text/event-stream" }),
          signal: controller.signal,
        });
        if (response.status === 401) keyRefused();
        if (response.status === 404 || response.status === 405) {
          onState("missing");
          return;
        }
        if (!response.ok || !response.body) throw new Error(`HTTP ${response.status}`);
        onState("live");
        backoff = 1000;
        const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
        let buffer = "";
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buffer += value.replace(/\r\n?/g, "\n");
          let end;
          while ((end = buffer.indexOf("\n\n")) >= 0) {
            const frame = parseFrame(buffer.slice(0, end));
            buffer = buffer.slice(end + 2);
            if (frame) onEvent(frame.event, frame.data);
          }
        }
      } catch (error) {
        if (stopped) return;
      }
      if (stopped) return;
      onState("reconnecting");
      await sleep(backoff);
      backoff = Math.min(backoff * 2, 15000);
    }
  })();
  return () => {
    stopped = true;
    controller?.abort();
  };
}

function parseFrame(text) {
  let event = "message";
  const data = [];
  for (const line of text.split("\n")) {
    if (!line || line.startsWith(":")) continue;
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
    if (field === "event") event = value;
    else if (field === "data") data.push(value);
  }
  if (!data.length) return null;
  try {
    return { event, data: JSON.parse(data.join("\n")) };
  } catch {
    return null;
  }
}

export function liveLabel(el, state) {
  const labels = {
    live: ["on", "Live"],
    poll: ["poll", "Polling"],
    reconnecting: ["off", "Reconnecting…"],
    connecting: ["", "Connecting…"],
  };
  const [cls, text] = labels[state] || labels.connecting;
  el.className = `live ${cls}`;
  el.textContent = text;
}

export const css = (name) => getComputedStyle(document.documentElement).getPropertyValue(name).trim();

// What this deployment serves (GET config.json); app.js fills it in before any view starts.
export const config = { resolutions: ["1m"], api_keys_required: false, stats_refresh_s: 5 };

export const SILENT_CHOICES = [
  ["60", "1 min"], ["300", "5 min"], ["900", "15 min"], ["3600", "1 h"], ["86400", "1 day"],
];

export function health(device, silentAfterS) {
  // An absent rule's judgement (against how far the workers have read) comes first;
  // the page's own "silent after" is a hint for fleets without such a rule.
  if (device.status === "offline") {
    return `<span class="badge offline" title="Offline since ${esc(fmtTime(device.offline_since))}">Offline ${esc(ago(device.offline_since))}</span>`;
  }
  const silentFor = (Date.now() - Date.parse(device.last_seen)) / 1000;
  return silentFor > silentAfterS
    ? `<span class="badge silent" title="No reading for ${esc(ago(device.last_seen))}">Silent</span>`
    : `<span class="badge ok">Reporting</span>`;
}

export function valueChips(values) {
  const entries = Object.entries(values || {}).sort(([a], [b]) => a.localeCompare(b));
  if (!entries.length) return `<span class="muted">–</span>`;
  return `<div class="chips">${entries
    .map(([k, v]) => `<span class="chip"><span class="k">${esc(k)}</span><b>${fmt(v)}</b></span>`)
    .join("")}</div>`;
}

/* A rule's condition in a line, as a person would say it. */
export function ruleCondition(rule) {
  const kind = rule.kind || "threshold";
  if (kind === "absent") return `no ${rule.metric || "reading"} for ${rule.for}`;
  if (kind === "anomaly") return `${rule.metric} over ${rule.deviations} σ from its usual`;
  if (kind === "rate") return `${rule.metric} ${rule.operator} ${rule.threshold}/s over ${rule.window}`;
  const window = rule.n > 1 ? ` in ${rule.k} of ${rule.n}` : "";
  const hold = rule.for && rule.for !== "0s" ? ` for ${rule.for}` : "";
  return `${rule.metric} ${rule.operator} ${rule.threshold}${window}${hold}`;
}

export const deviceLink = (id) => `<a href="#/device/${encodeURIComponent(id)}">${esc(id)}</a>`;

export function statCard(label, value, { unit = "", note = "", tone = "", testid = "" } = {}) {
  return `<div class="card stat ${tone}" ${testid ? `data-stat="${esc(testid)}"` : ""}>
    <div class="label">${esc(label)}</div>
    <div class="value">${value}${unit ? `<small>${esc(unit)}</small>` : ""}</div>
    ${note ? `<div class="note">${note}</div>` : ""}
  </div>`;
}

/* /stats is polled once for the whole page, as often as the server refreshes it; the nav
 * badge and whichever view shows figures listen. A listener added gets the latest at once. */
const statsListeners = new Set();
let latestStats = null;

export async function pollStats() {
  try {
    latestStats = await api("/stats");
  } catch (error) {
    latestStats = { error };
  }
  if (!latestStats.error) {
    const badge = $("#nav-active-alerts");
    badge.hidden = !latestStats.active_alerts;
    badge.textContent = `${latestStats.active_alerts}${latestStats.active_alerts_capped ? "+" : ""}`;
  }
  for (const listener of statsListeners) listener(latestStats);
}

export function onStats(listener) {
  statsListeners.add(listener);
  if (latestStats) listener(latestStats);
  return () => statsListeners.delete(listener);
}

export const currentStats = () => latestStats;
