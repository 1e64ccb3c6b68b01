/* Fleet view: every device by id, one page of the cursor-paged /devices at a time. */

import { $, debounce, esc, fmt, fmtCount, fmtTime, ago, store, api, SILENT_CHOICES, health, valueChips, deviceLink, statCard, onStats, currentStats } from "./core.js";

export function fleetView(main) {
  const state = {
    prefix: store.get("fleet.prefix", ""),
    silentAfter: Number(store.get("fleet.silentAfter", "300")),
    status: store.get("fleet.status", ""),
    pageSize: Number(store.get("fleet.pageSize", "50")),
    cursors: [null], // cursor of each page visited; the last is the current page's
    next: null,
    devices: [],
  };
  main.innerHTML = `
    <div class="page-head">
      <div><h1>Fleet</h1><div class="sub">Every device, its latest values and whether it still reports.</div></div>
    </div>
    <div class="cards" id="fleet-cards"></div>
    <div class="toolbar">
      <input type="search" id="fleet-search" placeholder="Search device id…" aria-label="Search by device id"
             value="${esc(state.prefix)}" spellcheck="false" autocomplete="off">
      <label>Silent after
        <select id="fleet-silent">${SILENT_CHOICES.map(
          ([v, t]) => `<option value="${v}" ${Number(v) === state.silentAfter ? "selected" : ""}>${t}</option>`
        ).join("")}</select>
      </label>
      <label>Show
        <select id="fleet-status">${[["", "All devices"], ["offline", "Offline only"], ["online", "Online only"]].map(
          ([v, t]) => `<option value="${v}" ${v === state.status ? "selected" : ""}>${t}</option>`
        ).join("")}</select>
      </label>
      <span class="spacer"></span>
      <label class="hide-small">Rows
        <select id="fleet-size">${[25, 50, 100, 200].map(
          (n) => `<option ${n === state.pageSize ? "selected" : ""}>${n}</option>`
        ).join("")}</select>
      </label>
    </div>
    <div class="table-wrap">
      <table id="fleet-table">
        <thead><tr>
          <th>Device</th><th>Health</th><th>Last seen</th><th>Last values</th>
          <th class="num">Open alerts</th><th class="num hide-small">Readings</th><th class="hide-small">Tags</th>
        </tr></thead>
        <tbody><tr><td colspan="7" class="empty">Loading…</td></tr></tbody>
      </table>
    </div>
    <div class="pager">
      <span id="fleet-page"></span>
      <button type="button" id="fleet-prev" class="small">← Previous</button>
      <button type="button" id="fleet-next" class="small">Next →</button>
    </div>`;

  let request = null;
  async function load() {
    request?.abort();
    request = new AbortController();
    const params = {
      limit: state.pageSize,
      cursor: state.cursors.at(-1),
      id_prefix: state.prefix || null,
      status: state.status || null,
    };
    try {
      const body = await api("/devices", { params, signal: request.signal });
      state.devices = body.data;
      state.next = body.next_cursor;
      renderRows();
    } catch (error) {
      if (error.name === "AbortError") return;
      const reason = error.status === 422 ? "Device ids hold only letters, digits and - _ . :" : error.message;
      $("tbody", main).innerHTML = `<tr><td colspan="7" class="empty">${esc(reason)}</td></tr>`;
    }
  }

  function renderRows() {
    const tbody = $("#fleet-table tbody", main);
    if (!state.devices.length) {
      tbody.innerHTML = `<tr><td colspan="7" class="empty">${
        state.status === "offline" ? "No device is offline." :
        state.prefix ? `No device id starts with “${esc(state.prefix)}”.` : "No device has reported yet."
      }</td></tr>`;
    } else {
      tbody.innerHTML = state.devices.map((d) => `
        <tr class="link ${d.status === "offline" ? "offline" : ""}" data-device="${esc(d.device_id)}">
          <td class="mono">${deviceLink(d.device_id)}</td>
          <td>${health(d, state.silentAfter)}</td>
          <td class="nowrap" title="${esc(fmtTime(d.last_seen))}">${esc(ago(d.last_seen))}</td>
          <td>${valueChips(d.last_values)}</td>
          <td class="num"><span class="count ${d.open_alerts ? "some" : "zero"}">${d.open_alerts}</span></td>
          <td class="num hide-small">${fmtCount(d.reading_count)}</td>
          <td class="hide-small">${(d.tags || []).map((t) => `<span class="tag">${esc(t)}</span>`).join(" ")}</td>
        </tr>`).join("");
    }
    const page = state.cursors.length;
    $("#fleet-page", main).textContent = `Page ${page}`;
    $("#fleet-prev", main).disabled = page === 1;
    $("#fleet-next", main).disabled = !state.next;
  }

  function renderCards(stats) {
    if (stats.error) return; // the cards are a summary; the table works without /stats
    const silent = state.devices.filter(
        (d) => (Date.now() - Date.parse(d.last_seen)) / 1000 > state.silentAfter
      ).length;
      $("#fleet-cards", main).innerHTML = [
        statCard("Devices", fmtCount(stats.total_devices), {
          testid: "devices", note: `as of ${esc(fmtTime(stats.as_of))}`,
        }),
        statCard("Silent on this page", fmtCount(silent), {
          tone: silent ? "warn" : "good", note: `of ${state.devices.length} shown`,
        }),
        statCard("Active alerts", fmtCount(stats.active_alerts), {
          tone: stats.active_alerts ? "bad" : "good", note: `<a href="#/alerts">Open alerts →</a>`,
        }),
        statCard("Ingest rate", fmt(stats.ingest_rate_per_s), { unit: "readings/s" }),
      ].join("");
  }
  const loadCards = () => currentStats() && renderCards(currentStats());

  $("#fleet-search", main).addEventListener("input", debounce((event) => {
    state.prefix = event.target.value.trim();
    store.set("fleet.prefix", state.prefix);
    state.cursors = [null];
    load();
  }, 200));
  $("#fleet-silent", main).addEventListener("change", (event) => {
    state.silentAfter = Number(event.target.value);
    store.set("fleet.silentAfter", event.target.value);
    renderRows();
    loadCards();
  });
  $("#fleet-status", main).addEventListener("change", (event) => {
    state.status = event.target.value;
    store.set("fleet.status", state.status);
    state.cursors = [null];
    load();
  });
  $("#fleet-size", main).addEventListener("change", (event) => {
    state.pageSize = Number(event.target.value);
    store.set("fleet.pageSize", event.target.value);
    state.cursors = [null];
    load();
  });
  $("#fleet-next", main).addEventListener("click", () => {
    if (!state.next) return;
    state.cursors.push(state.next);
    load();
  });
  $("#fleet-prev", main).addEventListener("click", () => {
    if (state.cursors.length > 1) state.cursors.pop();
    load();
  });
  $("#fleet-table", main).addEventListener("click", (event) => {
    const row = event.target.closest("tr[data-device]");
    if (row && !event.target.closest("a")) location.hash = `#/device/${encodeURIComponent(row.dataset.device)}`;
  });

  let stopCards = () => {};
  load().then(() => {
    stopCards = onStats(renderCards);
  });
  // Only the page on screen is refreshed: one bounded request however large the fleet.
  const timer = setInterval(() => load().then(loadCards), 10000);
  return () => {
    clearInterval(timer);
    stopCards();
    request?.abort();
  };
}
