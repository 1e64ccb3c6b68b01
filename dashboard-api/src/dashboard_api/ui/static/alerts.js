/* Alerts view: filters, acknowledgement, and new alerts as they fire. */

import { $, debounce, $$, esc, fmt, fmtTime, ago, toast, store, api, openStream, liveLabel, deviceLink } from "./core.js";

// Whether this server can acknowledge; learnt from its OpenAPI document, and
// unlearnt if an acknowledgement answers that the route does not exist.
let canAcknowledge = null;
async function ackSupported() {
  if (canAcknowledge === null) {
    try {
      const spec = await api("/openapi.json");
      canAcknowledge = Boolean(spec.paths?.["/alerts/{alert_id}/ack"]?.post);
    } catch {
      canAcknowledge = false;
    }
  }
  return canAcknowledge;
}

const POLL_MS = 5000;

export function alertsView(main, query) {
  const state = {
    status: query.get("status") ?? store.get("alerts.status", "active"),
    severity: query.get("severity") ?? store.get("alerts.severity", ""),
    device: query.get("device_id") ?? "",
    alerts: new Map(), // alert_id -> alert, in the order shown (newest first)
    next: null,
    fresh: new Set(),
    loaded: false,
    ack: false,
  };
  main.innerHTML = `
    <div class="page-head">
      <div><h1>Alerts</h1><div class="sub">Newest first. New alerts appear as they fire.</div></div>
      <span class="live" id="alerts-live">Connecting…</span>
    </div>
    <div class="toolbar">
      <div class="segmented" id="alerts-status" role="group" aria-label="Status">
        <button type="button" data-status="active">Active</button>
        <button type="button" data-status="resolved">Resolved</button>
        <button type="button" data-status="">All</button>
      </div>
      <select id="alerts-severity" aria-label="Severity">
        <option value="">Any severity</option><option value="critical">Critical</option>
        <option value="warning">Warning</option><option value="info">Info</option>
      </select>
      <input type="search" id="alerts-device" placeholder="Device id" aria-label="Device id"
             value="${esc(state.device)}" spellcheck="false" autocomplete="off">
    </div>
    <div class="table-wrap">
      <table id="alerts-table">
        <thead><tr>
          <th>Severity</th><th>Alert</th><th>Device</th><th class="num">Value</th>
          <th class="num hide-small">Threshold</th><th>Fired</th><th>Status</th><th></th>
        </tr></thead>
        <tbody><tr><td colspan="8" class="empty">Loading…</td></tr></tbody>
      </table>
    </div>
    <div class="pager"><button type="button" id="alerts-more" class="small" hidden>Load more</button></div>`;
  $("#alerts-severity", main).value = state.severity;

  function matches(alert) {
    return (!state.status || (alert.status ?? "active") === state.status)
      && (!state.severity || alert.severity === state.severity)
      && (!state.device || alert.device_id === state.device);
  }

  function statusBadge(alert) {
    const status = alert.status ?? "active";
    const acked = alert.acknowledged_at
      ? ` <span class="badge acked" title="${esc(fmtTime(alert.acknowledged_at))}">Acked by ${esc(alert.acknowledged_by || "someone")}</span>`
      : "";
    return `<span class="badge ${status === "resolved" ? "resolved" : "active"}">${esc(status)}</span>${acked}`;
  }

  function renderRows() {
    const tbody = $("#alerts-table tbody", main);
    const rows = [...state.alerts.values()].filter(matches);
    if (!rows.length) {
      tbody.innerHTML = `<tr><td colspan="8" class="empty">No ${esc(state.status)} alerts${
        state.device ? ` for ${esc(state.device)}` : ""}.</td></tr>`;
    } else {
      tbody.innerHTML = rows.map((a) => `
        <tr data-alert="${esc(a.alert_id)}" class="${state.fresh.has(a.alert_id) ? "flash" : ""}">
          <td><span class="badge ${esc(a.severity)}">${esc(a.severity)}</span></td>
          <td>${esc(a.message || a.alert_type)}<div class="tag">${esc(a.rule_name || a.alert_type)}</div></td>
          <td class="mono">${deviceLink(a.device_id)}</td>
          <td class="num">${fmt(a.value)}</td>
          <td class="num hide-small">${fmt(a.threshold)}</td>
          <td class="nowrap" title="${esc(fmtTime(a.created_at))}">${esc(ago(a.created_at))}</td>
          <td>${statusBadge(a)}</td>
          <td class="num">${state.ack && !a.acknowledged_at
            ? `<button type="button" class="small" data-ack="${esc(a.alert_id)}">Acknowledge</button>` : ""}</td>
        </tr>`).join("");
    }
    state.fresh.clear();
    $("#alerts-more", main).hidden = !state.next;
    $$("#alerts-status button", main).forEach((b) => b.classList.toggle("active", b.dataset.status === state.status));
  }

  function params(cursor = null) {
    return { status: state.status || null, severity: state.severity || null, device_id: state.device || null, limit: 50, cursor };
  }

  let request = null;
  async function load() {
    request?.abort();
    request = new AbortController();
    try {
      const body = await api("/alerts", { params: params(), signal: request.signal });
      state.alerts = new Map(body.data.map((a) => [a.alert_id, a]));
      state.next = body.next_cursor;
      state.loaded = true;
      renderRows();
    } catch (error) {
      if (error.name === "AbortError") return;
      $("#alerts-table tbody", main).innerHTML = `<tr><td colspan="8" class="empty">${esc(error.message)}</td></tr>`;
    }
  }

  // Polling: the first page again, new alerts merged on top.
  async function poll() {
    try {
      const body = await api("/alerts", { params: params() });
      const merged = new Map();
      for (const a of body.data) {
        if (!state.alerts.has(a.alert_id)) state.fresh.add(a.alert_id);
        merged.set(a.alert_id, a);
      }
      for (const [id, a] of state.alerts) if (!merged.has(id)) merged.set(id, a);
      state.alerts = merged;
      renderRows();
    } catch {
      /* the next poll tries again */
    }
  }

  function upsert(alert, flash) {
    const rest = [...state.alerts].filter(([id]) => id !== alert.alert_id);
    const existing = state.alerts.get(alert.alert_id);
    state.alerts = existing
      ? new Map([...state.alerts].map(([id, a]) => [id, id === alert.alert_id ? { ...a, ...alert } : a]))
      : new Map([[alert.alert_id, alert], ...rest]);
    if (flash) state.fresh.add(alert.alert_id);
    renderRows();
  }

  // Polled whenever the stream is not live: absent on this server (404), or away
  // (Kafka down, a restart). Once live again, one poll catches up on what it missed.
  let pollTimer = null;
  const stopPolling = () => {
    clearInterval(pollTimer);
    pollTimer = null;
  };
  const stopStream = openStream("/alerts/stream", {
    onState: (s) => {
      if (s === "live") {
        stopPolling();
        if (state.loaded) poll(); // the first load is still to come otherwise
      } else if (s !== "connecting" && pollTimer === null) {
        pollTimer = setInterval(poll, POLL_MS);
      }
      liveLabel($("#alerts-live", main), s === "live" ? "live" : pollTimer ? "poll" : s);
    },
    onEvent: (_kind, event) => {
      if (!event.alert_id) return;
      const { transition, transition_at, notification_id, ...alert } = event;
      upsert(alert, transition === "fired");
    },
  });

  async function acknowledge(button) {
    const id = button.dataset.ack;
    button.disabled = true;
    try {
      const alert = await api(`/alerts/${encodeURIComponent(id)}/ack`, { method: "POST" });
      upsert(alert, false);
      toast(`Acknowledged ${alert.rule_name || alert.alert_type || "alert"} on ${alert.device_id}`);
    } catch (error) {
      button.disabled = false;
      if (error.status === 405 || (error.status === 404 && !error.body?.errors)) {
        canAcknowledge = state.ack = false;
        renderRows();
        toast("This server cannot acknowledge alerts", "bad");
      } else if (error.status === 401 || error.status === 403) {
        toast(error.status === 401 ? "Acknowledging needs an API key" : "This key may not acknowledge", "bad");
        $("#key-button").click();
      } else {
        toast(`Not acknowledged: ${error.message}`, "bad");
      }
    }
  }

  $("#alerts-status", main).addEventListener("click", (event) => {
    const button = event.target.closest("button[data-status]");
    if (!button) return;
    state.status = button.dataset.status;
    store.set("alerts.status", state.status);
    load();
  });
  $("#alerts-severity", main).addEventListener("change", (event) => {
    state.severity = event.target.value;
    store.set("alerts.severity", state.severity);
    load();
  });
  $("#alerts-device", main).addEventListener("input", debounce((event) => {
    state.device = event.target.value.trim();
    load();
  }, 250));
  $("#alerts-more", main).addEventListener("click", async () => {
    const body = await api("/alerts", { params: params(state.next) });
    for (const a of body.data) state.alerts.set(a.alert_id, a);
    state.next = body.next_cursor;
    renderRows();
  });
  $("#alerts-table", main).addEventListener("click", (event) => {
    const button = event.target.closest("button[data-ack]");
    if (button) acknowledge(button);
  });

  ackSupported().then((supported) => {
    state.ack = supported;
    load();
  });
  // Relative times ("2 min ago") age even when nothing new comes.
  const ageTimer = setInterval(renderRows, 30000);
  return () => {
    stopStream();
    stopPolling();
    clearInterval(ageTimer);
    request?.abort();
  };
}
