/* Telemetry dashboard: fleet, device charts, alerts and system figures, read from this
 * same API. Plain JavaScript, no build step; uPlot (vendor/uplot) draws the charts.
 * Each view renders into <main> and returns a function that stops its timers and streams.
 */
"use strict";

(() => {
  // ---------------------------------------------------------------- small helpers

  const $ = (selector, root = document) => root.querySelector(selector);
  const $$ = (selector, root = document) => Array.from(root.querySelectorAll(selector));
  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

  const ESCAPES = { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" };
  const esc = (value) => String(value ?? "").replace(/[&<>"']/g, (c) => ESCAPES[c]);

  const numberFormat = new Intl.NumberFormat(undefined, { maximumFractionDigits: 2 });
  const countFormat = new Intl.NumberFormat(undefined);
  const fmt = (n) => (n === null || n === undefined || Number.isNaN(n) ? "–" : numberFormat.format(n));
  const fmtCount = (n) => (n === null || n === undefined ? "–" : countFormat.format(n));
  const timeFormat = new Intl.DateTimeFormat(undefined, {
    month: "short", day: "numeric", hour: "2-digit", minute: "2-digit", second: "2-digit",
  });
  const fmtTime = (iso) => (iso ? timeFormat.format(new Date(iso)) : "–");

  function ago(iso) {
    if (!iso) return "never";
    const s = Math.round((Date.now() - Date.parse(iso)) / 1000);
    if (s < 5) return "just now";
    if (s < 60) return `${s} s ago`;
    if (s < 3600) return `${Math.floor(s / 60)} min ago`;
    if (s < 86400) return `${Math.floor(s / 3600)} h ago`;
    return `${Math.floor(s / 86400)} d ago`;
  }

  function toast(message, kind = "") {
    const el = document.createElement("div");
    el.className = `toast ${kind}`;
    el.textContent = message;
    $("#toasts").append(el);
    setTimeout(() => el.remove(), 4500);
  }

  const store = {
    get: (key, fallback = null) => localStorage.getItem(`telemetry.${key}`) ?? fallback,
    set: (key, value) => localStorage.setItem(`telemetry.${key}`, value),
    remove: (key) => localStorage.removeItem(`telemetry.${key}`),
  };

  // ---------------------------------------------------------------- API access

  class HttpError extends Error {
    constructor(status, body) {
      super(body?.detail || `HTTP ${status}`);
      this.status = status;
      this.body = body;
    }
  }

  // The page is served by the API it reads: paths are relative to the origin.
  async function api(path, { method = "GET", params = null, signal } = {}) {
    const url = new URL(path, location.origin);
    for (const [key, value] of Object.entries(params || {})) {
      if (value !== null && value !== undefined && value !== "") url.searchParams.set(key, value);
    }
    const headers = { Accept: "application/json" };
    const key = store.get("apiKey");
    if (method !== "GET" && key) headers["X-API-Key"] = key;
    const response = await fetch(url, { method, headers, signal });
    const body = await response.json().catch(() => null);
    if (!response.ok) throw new HttpError(response.status, body);
    return body;
  }

  /* Server-Sent Events over fetch rather than EventSource: fetch sees the status, so a
   * server without the stream (404/405) is told apart from one that is briefly away,
   * and the caller can fall back to polling. Reconnects with backoff otherwise. */
  function openStream(path, { onEvent, onState }) {
    let stopped = false;
    let controller = null;
    (async () => {
      let backoff = 1000;
      while (!stopped) {
        controller = new AbortController();
        try {
          const response = await fetch(path, {
            headers: { Accept: "text/event-stream" },
            signal: controller.signal,
          });
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

  function liveLabel(el, state) {
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

  // ---------------------------------------------------------------- theme

  const darkQuery = matchMedia("(prefers-color-scheme: dark)");
  const THEMES = ["auto", "light", "dark"];

  function applyTheme() {
    const chosen = store.get("theme", "auto");
    const dark = chosen === "dark" || (chosen === "auto" && darkQuery.matches);
    document.documentElement.dataset.theme = dark ? "dark" : "light";
    const button = $("#theme-button");
    button.textContent = chosen === "auto" ? "◐" : dark ? "☾" : "☀";
    button.title = `Theme: ${chosen === "auto" ? "follows the system" : chosen}`;
  }

  const css = (name) => getComputedStyle(document.documentElement).getPropertyValue(name).trim();

  // ---------------------------------------------------------------- API key

  function refreshKeyButton() {
    const button = $("#key-button");
    const hasKey = Boolean(store.get("apiKey"));
    button.classList.toggle("has-key", hasKey);
    button.classList.toggle("needs-key", !hasKey && config.api_keys_required);
    $("#key-label").textContent = hasKey ? "Key set" : "API key";
  }

  function setUpKeyDialog() {
    const dialog = $("#key-dialog");
    const input = $("#key-input");
    $("#key-button").addEventListener("click", () => {
      input.value = store.get("apiKey", "");
      dialog.showModal();
    });
    $("#key-cancel").addEventListener("click", () => dialog.close());
    $("#key-forget").addEventListener("click", () => {
      store.remove("apiKey");
      dialog.close();
      refreshKeyButton();
      toast("API key forgotten");
    });
    $("#key-form").addEventListener("submit", () => {
      const key = input.value.trim();
      if (key) store.set("apiKey", key);
      else store.remove("apiKey");
      refreshKeyButton();
      if (key) toast("API key saved in this browser");
    });
  }

  // ---------------------------------------------------------------- shared bits

  const SILENT_CHOICES = [
    ["60", "1 min"], ["300", "5 min"], ["900", "15 min"], ["3600", "1 h"], ["86400", "1 day"],
  ];

  function health(device, silentAfterS) {
    const silentFor = (Date.now() - Date.parse(device.last_seen)) / 1000;
    return silentFor > silentAfterS
      ? `<span class="badge silent" title="No reading for ${esc(ago(device.last_seen))}">Silent</span>`
      : `<span class="badge ok">Reporting</span>`;
  }

  function valueChips(values) {
    const entries = Object.entries(values || {}).sort(([a], [b]) => a.localeCompare(b));
    if (!entries.length) return `<span class="muted">–</span>`;
    return `<div class="chips">${entries
      .map(([k, v]) => `<span class="chip"><span class="k">${esc(k)}</span><b>${fmt(v)}</b></span>`)
      .join("")}</div>`;
  }

  const deviceLink = (id) => `<a href="#/device/${encodeURIComponent(id)}">${esc(id)}</a>`;

  function statCard(label, value, { unit = "", note = "", tone = "", testid = "" } = {}) {
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

  async function pollStats() {
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

  function onStats(listener) {
    statsListeners.add(listener);
    if (latestStats) listener(latestStats);
    return () => statsListeners.delete(listener);
  }

  // ---------------------------------------------------------------- fleet view

  function fleetView(main) {
    const state = {
      prefix: store.get("fleet.prefix", ""),
      silentAfter: Number(store.get("fleet.silentAfter", "300")),
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
          state.prefix ? `No device id starts with “${esc(state.prefix)}”.` : "No device has reported yet."
        }</td></tr>`;
      } else {
        tbody.innerHTML = state.devices.map((d) => `
          <tr class="link" data-device="${esc(d.device_id)}">
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
    const loadCards = () => latestStats && renderCards(latestStats);

    let typing = null;
    $("#fleet-search", main).addEventListener("input", (event) => {
      clearTimeout(typing);
      typing = setTimeout(() => {
        state.prefix = event.target.value.trim();
        store.set("fleet.prefix", state.prefix);
        state.cursors = [null];
        load();
      }, 200);
    });
    $("#fleet-silent", main).addEventListener("change", (event) => {
      state.silentAfter = Number(event.target.value);
      store.set("fleet.silentAfter", event.target.value);
      renderRows();
      loadCards();
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

  // ---------------------------------------------------------------- device view

  const RANGES = [
    ["1h", 3600], ["6h", 6 * 3600], ["24h", 86400], ["7d", 7 * 86400], ["30d", 30 * 86400],
  ];
  // Most buckets a chart fetches (pages of the API's largest page size).
  const MAX_BUCKETS = 5000;

  function resolutionSeconds(name) {
    const match = /^(\d+)([smhd])$/.exec(name);
    return match ? Number(match[1]) * { s: 1, m: 60, h: 3600, d: 86400 }[match[2]] : 60;
  }

  // The finest stored resolution that keeps the range under ~1,500 buckets.
  function resolutionFor(rangeS) {
    const fine = config.resolutions.find((r) => rangeS / resolutionSeconds(r) <= 1500);
    return fine || config.resolutions.at(-1);
  }

  function deviceView(main, deviceId) {
    const state = {
      range: store.get("device.range", "1h"),
      resolution: null,
      device: null,
      charts: new Map(), // metric -> {plot, buckets: Map(ts seconds -> rollup), el}
    };
    state.resolution = store.get("device.resolution") || resolutionFor(rangeSeconds());
    if (!config.resolutions.includes(state.resolution)) state.resolution = resolutionFor(rangeSeconds());

    function rangeSeconds() {
      return (RANGES.find(([name]) => name === state.range) || RANGES[1])[1];
    }

    main.innerHTML = `
      <div class="page-head">
        <div>
          <div class="muted"><a href="#/fleet">← Fleet</a></div>
          <h1 class="mono" id="device-title">${esc(deviceId)}</h1>
          <div class="device-meta" id="device-meta"></div>
        </div>
        <span class="live" id="device-live">Connecting…</span>
      </div>
      <div class="toolbar">
        <div class="segmented" id="device-range" role="group" aria-label="Range">${RANGES.map(
          ([name]) => `<button type="button" data-range="${name}">${name}</button>`
        ).join("")}</div>
        <label>Resolution
          <select id="device-resolution">${config.resolutions.map(
            (r) => `<option value="${esc(r)}">${esc(r)}</option>`
          ).join("")}</select>
        </label>
        <span class="spacer"></span>
        <span class="muted hide-small">Band: min–max · line: average · dashed: p50/p95/p99 when kept</span>
      </div>
      <div class="charts" id="charts"><div class="card"><p class="muted">Loading…</p></div></div>
      <h2 class="section-title">Latest readings</h2>
      <div class="table-wrap">
        <table id="readings-table">
          <thead><tr><th>Time</th><th>Values</th><th class="hide-small">Event id</th></tr></thead>
          <tbody><tr><td colspan="3" class="empty">Loading…</td></tr></tbody>
        </table>
      </div>`;

    function markControls() {
      $$("#device-range button", main).forEach((b) => b.classList.toggle("active", b.dataset.range === state.range));
      $("#device-resolution", main).value = state.resolution;
    }

    function renderMeta() {
      const d = state.device;
      $("#device-meta", main).innerHTML = `
        <span>${health(d, Number(store.get("fleet.silentAfter", "300")))}</span>
        <span>Last seen <b title="${esc(fmtTime(d.last_seen))}">${esc(ago(d.last_seen))}</b></span>
        <span>First seen <b>${esc(fmtTime(d.first_seen))}</b></span>
        <span>Readings <b>${fmtCount(d.reading_count)}</b></span>
        <span>Open alerts <a href="#/alerts?device_id=${encodeURIComponent(d.device_id)}"><b class="count ${
          d.open_alerts ? "some" : "zero"}">${d.open_alerts}</b></a></span>
        ${(d.tags || []).map((t) => `<span class="chip">${esc(t)}</span>`).join("")}`;
    }

    const readings = [];
    function renderReadings() {
      const tbody = $("#readings-table tbody", main);
      tbody.innerHTML = readings.length
        ? readings.map((r) => `<tr>
            <td class="nowrap">${esc(fmtTime(r.ts))}</td>
            <td>${valueChips(r.metrics)}</td>
            <td class="mono muted hide-small">${esc(r.event_id)}</td></tr>`).join("")
        : `<tr><td colspan="3" class="empty">No readings kept for this device.</td></tr>`;
    }

    async function fetchBuckets(metric, from) {
      const buckets = [];
      let cursor = null;
      do {
        const body = await api(`/devices/${encodeURIComponent(deviceId)}/aggregates`, {
          params: { metric, resolution: state.resolution, from: from.toISOString(), limit: 1440, cursor },
        });
        buckets.push(...body.data);
        cursor = body.next_cursor;
      } while (cursor && buckets.length < MAX_BUCKETS);
      return buckets;
    }

    function chartOptions(el, withPercentiles) {
      const text = css("--muted");
      const grid = css("--grid");
      const axis = { stroke: text, grid: { stroke: grid, width: 1 }, ticks: { stroke: grid, width: 1 } };
      const value = (u, v) => fmt(v);
      const series = [
        {},
        { label: "min", stroke: "transparent", value, points: { show: false } },
        { label: "max", stroke: "transparent", value, points: { show: false } },
        { label: "avg", stroke: css("--accent"), width: 2, value, points: { size: 5 } },
      ];
      if (withPercentiles) {
        for (const p of ["p50", "p95", "p99"]) {
          series.push({ label: p, stroke: css(`--${p}`), width: 1.25, dash: [5, 4], value, points: { show: false } });
        }
      }
      return {
        width: el.clientWidth || 520,
        height: 240,
        series,
        bands: [{ series: [2, 1], fill: css("--band") }],
        scales: {
          x: { time: true, range: () => windowRange() },
          y: { range: (u, min, max) => valueRange(min, max) },
        },
        axes: [{ ...axis }, { ...axis, size: 56, values: (u, ticks) => ticks.map(fmt) }],
        legend: { live: true },
        cursor: { drag: { x: true, y: false } },
      };
    }

    // Some room above and below the values; a flat line sits in the middle.
    function valueRange(min, max) {
      if (min === null || max === null) return [0, 1];
      const pad = max > min ? (max - min) * 0.1 : Math.max(Math.abs(max) * 0.05, 1);
      return [min - pad, max + pad];
    }

    function windowRange() {
      const now = Date.now() / 1000;
      return [now - rangeSeconds(), now + resolutionSeconds(state.resolution)];
    }

    function chartData(chart) {
      const start = windowRange()[0] - resolutionSeconds(state.resolution);
      const rows = [...chart.buckets.values()]
        .filter((b) => b.t >= start)
        .sort((a, b) => a.t - b.t);
      const columns = [rows.map((b) => b.t), rows.map((b) => b.min), rows.map((b) => b.max), rows.map((b) => b.average)];
      if (chart.withPercentiles) for (const p of ["p50", "p95", "p99"]) columns.push(rows.map((b) => b[p] ?? null));
      return { rows, columns };
    }

    function drawChart(metric) {
      const chart = state.charts.get(metric);
      const { rows, columns } = chartData(chart);
      const summary = $(".chart-summary", chart.card);
      const latest = $(".latest", chart.card);
      chart.card.dataset.buckets = rows.length;
      if (!rows.length) {
        summary.textContent = `No ${state.resolution} buckets in the last ${state.range}`;
        latest.textContent = "";
      } else {
        const lo = Math.min(...rows.map((b) => b.min));
        const hi = Math.max(...rows.map((b) => b.max));
        const count = rows.reduce((n, b) => n + b.count, 0);
        const mean = rows.reduce((s, b) => s + b.sum, 0) / count;
        summary.textContent = `${rows.length} buckets · ${fmtCount(count)} readings · min ${fmt(lo)} · avg ${fmt(mean)} · max ${fmt(hi)}`;
        latest.textContent = fmt(rows.at(-1).last ?? rows.at(-1).average);
      }
      if (chart.plot) chart.plot.setData(columns);
    }

    function toBucket(rollup) {
      return { ...rollup, t: Date.parse(rollup.timestamp) / 1000 };
    }

    async function loadCharts() {
      for (const chart of state.charts.values()) chart.plot?.destroy();
      state.charts.clear();
      const metrics = Object.keys(state.device.last_values || {}).sort();
      const container = $("#charts", main);
      if (!metrics.length) {
        container.innerHTML = `<div class="card"><p class="muted">This device has no metrics yet.</p></div>`;
        return;
      }
      container.innerHTML = metrics.map((m) => `
        <section class="card chart-card" data-metric="${esc(m)}">
          <div class="chart-head"><h3>${esc(m)}</h3><span class="latest"></span></div>
          <div class="chart-summary">Loading…</div>
          <div class="chart"></div>
        </section>`).join("");
      const from = new Date((windowRange()[0] - resolutionSeconds(state.resolution)) * 1000);
      await Promise.all(metrics.map(async (metric) => {
        const card = $(`.chart-card[data-metric="${CSS.escape(metric)}"]`, container);
        const rollups = await fetchBuckets(metric, from);
        // Percentiles of single readings are the readings: drawn only when they say more.
        const withPercentiles = rollups.some((b) => b.p50 != null && b.count > 1);
        const chart = { card, withPercentiles, buckets: new Map(), plot: null };
        for (const r of rollups) chart.buckets.set(Date.parse(r.timestamp) / 1000, toBucket(r));
        state.charts.set(metric, chart);
        const el = $(".chart", card);
        chart.plot = new uPlot(chartOptions(el, withPercentiles), chartData(chart).columns, el);
        drawChart(metric);
      }));
    }

    async function loadDevice() {
      try {
        state.device = await api(`/devices/${encodeURIComponent(deviceId)}`);
      } catch (error) {
        $("#charts", main).innerHTML = `<div class="card"><p class="muted">${
          error.status === 404 ? "No reading from this device yet." : esc(error.message)}</p></div>`;
        return false;
      }
      renderMeta();
      return true;
    }

    async function loadAll() {
      markControls();
      if (!(await loadDevice())) return;
      await loadCharts();
      const body = await api(`/devices/${encodeURIComponent(deviceId)}/telemetry`, { params: { limit: 20 } });
      readings.splice(0, readings.length, ...body.data);
      renderReadings();
    }

    // Live: a new reading updates the header and the table, a rollup its chart.
    const stopStream = openStream(`/devices/${encodeURIComponent(deviceId)}/stream`, {
      onState: (s) => liveLabel($("#device-live", main), s === "missing" ? "reconnecting" : s),
      onEvent: (kind, data) => {
        if (kind === "reading" && state.device) {
          if (!readings.some((r) => r.event_id === data.event_id)) {
            readings.unshift(data);
            readings.splice(20);
            renderReadings();
          }
          if (data.ts >= state.device.last_seen) {
            state.device.last_seen = data.ts;
            state.device.last_values = { ...state.device.last_values, ...data.metrics };
          }
          state.device.reading_count += 1;
          renderMeta();
          const fresh = Object.keys(data.metrics).some((m) => !state.charts.has(m));
          if (fresh && state.charts.size) loadCharts(); // a metric this device never sent before
        } else if (kind === "rollup" && data.resolution === state.resolution) {
          const chart = state.charts.get(data.sensor_type);
          if (!chart) return;
          chart.buckets.set(Date.parse(data.timestamp) / 1000, toBucket(data));
          drawChart(data.sensor_type);
        }
      },
    });

    $("#device-range", main).addEventListener("click", (event) => {
      const button = event.target.closest("button[data-range]");
      if (!button) return;
      state.range = button.dataset.range;
      state.resolution = resolutionFor(rangeSeconds());
      store.set("device.range", state.range);
      store.set("device.resolution", state.resolution);
      loadAll();
    });
    $("#device-resolution", main).addEventListener("change", (event) => {
      state.resolution = event.target.value;
      store.set("device.resolution", state.resolution);
      markControls();
      loadCharts();
    });

    const onResize = () => {
      for (const chart of state.charts.values()) {
        const el = $(".chart", chart.card);
        chart.plot?.setSize({ width: el.clientWidth, height: 240 });
      }
    };
    window.addEventListener("resize", onResize);
    // The window slides with time even when the device is quiet.
    const timer = setInterval(() => {
      for (const metric of state.charts.keys()) drawChart(metric);
      if (state.device) renderMeta();
    }, 15000);

    loadAll();
    return () => {
      stopStream();
      clearInterval(timer);
      window.removeEventListener("resize", onResize);
      for (const chart of state.charts.values()) chart.plot?.destroy();
    };
  }

  // ---------------------------------------------------------------- alerts view

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

  function alertsView(main, query) {
    const state = {
      status: query.get("status") ?? store.get("alerts.status", "active"),
      severity: query.get("severity") ?? store.get("alerts.severity", ""),
      device: query.get("device_id") ?? "",
      alerts: new Map(), // alert_id -> alert, in the order shown (newest first)
      next: null,
      fresh: new Set(),
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

    let pollTimer = null;
    const stopStream = openStream("/alerts/stream", {
      onState: (s) => {
        if (s === "missing") {
          // No alert stream on this server: poll instead.
          liveLabel($("#alerts-live", main), "poll");
          pollTimer = setInterval(poll, POLL_MS);
        } else {
          liveLabel($("#alerts-live", main), s);
        }
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
        toast(`Acknowledged ${alert.alert_type || "alert"} on ${alert.device_id}`);
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
    let typing = null;
    $("#alerts-device", main).addEventListener("input", (event) => {
      clearTimeout(typing);
      typing = setTimeout(() => {
        state.device = event.target.value.trim();
        load();
      }, 250);
    });
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
      clearInterval(pollTimer);
      clearInterval(ageTimer);
      request?.abort();
    };
  }

  // ---------------------------------------------------------------- system view

  const HISTORY_S = 900;

  function systemView(main) {
    const history = { t: [], rate: [], lag: [] };
    let plot = null;
    main.innerHTML = `
      <div class="page-head">
        <div><h1>System</h1><div class="sub" id="system-asof">Loading…</div></div>
      </div>
      <div class="cards" id="system-pipeline"></div>
      <div class="cards" id="system-store"></div>
      <section class="card">
        <div class="chart-head"><h3>Ingest rate and consumer lag</h3><span class="muted">last 15 minutes, while this page is open</span></div>
        <div class="chart" id="system-chart"></div>
      </section>`;

    function render(stats) {
      const lag = stats.consumer_lag || {};
      const totalLag = Object.values(lag).reduce((a, b) => a + b, 0);
      const kafkaNote = stats.kafka_reachable ? "" : "Kafka unreachable";
      $("#system-asof", main).textContent =
        `Figures as of ${fmtTime(stats.as_of)}, gathered every ${fmt(stats.refresh_interval_s)} s.`;
      $("#system-pipeline", main).innerHTML = [
        statCard("Ingest rate", fmt(stats.ingest_rate_per_s), {
          unit: "readings/s", note: kafkaNote || "written to the telemetry topic", testid: "ingest-rate",
        }),
        ...Object.entries(lag).map(([group, n]) => statCard(`Lag · ${group}`, fmtCount(n), {
          unit: "records", tone: n > 10000 ? "warn" : n === 0 ? "good" : "", note: n === 0 ? "caught up" : "not processed yet",
          testid: `lag-${group}`,
        })),
        ...(stats.consumer_lag ? [] : [statCard("Consumer lag", "–", { note: kafkaNote })]),
        statCard("Dead-letter queue", fmtCount(stats.dlq_size), {
          unit: "records", tone: stats.dlq_size ? "bad" : stats.dlq_size === 0 ? "good" : "",
          note: stats.dlq_size ? "records that could not be processed" : kafkaNote || "empty", testid: "dlq",
        }),
      ].join("");
      $("#system-store", main).innerHTML = [
        statCard("Readings stored", fmtCount(stats.total_readings), { testid: "readings" }),
        statCard("Rollup buckets", fmtCount(stats.total_aggregates), { testid: "rollups" }),
        statCard("Devices", fmtCount(stats.total_devices), { testid: "devices" }),
        statCard("Alerts", fmtCount(stats.total_alerts), {
          note: `${fmtCount(stats.active_alerts)}${stats.active_alerts_capped ? "+" : ""} active`, testid: "alerts",
        }),
      ].join("");
      history.t.push(Date.now() / 1000);
      history.rate.push(stats.ingest_rate_per_s);
      history.lag.push(stats.consumer_lag ? totalLag : null);
      while (history.t[0] < Date.now() / 1000 - HISTORY_S) for (const k of Object.keys(history)) history[k].shift();
      drawHistory();
    }

    function drawHistory() {
      const el = $("#system-chart", main);
      const data = [history.t, history.rate, history.lag];
      if (plot) {
        plot.setData(data);
        return;
      }
      const grid = css("--grid");
      const axis = { stroke: css("--muted"), grid: { stroke: grid, width: 1 }, ticks: { stroke: grid, width: 1 } };
      plot = new uPlot({
        width: el.clientWidth || 600,
        height: 220,
        series: [
          {},
          { label: "readings/s", stroke: css("--accent"), width: 2, fill: css("--band"), scale: "rate", value: (u, v) => fmt(v) },
          { label: "lag (records)", stroke: css("--warn"), width: 1.5, scale: "lag", value: (u, v) => fmtCount(v) },
        ],
        scales: {
          x: { time: true, range: () => [Date.now() / 1000 - HISTORY_S, Date.now() / 1000] },
          rate: { range: (u, min, max) => [0, Math.max(1, max ?? 1) * 1.1] },
          lag: { range: (u, min, max) => [0, Math.max(1, max ?? 1) * 1.1] },
        },
        axes: [
          { ...axis },
          { ...axis, scale: "rate", size: 56, values: (u, t) => t.map(fmt) },
          { ...axis, scale: "lag", side: 1, size: 56, grid: { show: false }, values: (u, t) => t.map(fmtCount) },
        ],
      }, data, el);
    }

    const stopStats = onStats((stats) => {
      if (stats.error) $("#system-asof", main).textContent = `Figures unavailable: ${stats.error.message}`;
      else render(stats);
    });
    const onResize = () => plot?.setSize({ width: $("#system-chart", main).clientWidth, height: 220 });
    window.addEventListener("resize", onResize);
    return () => {
      stopStats();
      window.removeEventListener("resize", onResize);
      plot?.destroy();
    };
  }

  // ---------------------------------------------------------------- routing

  let config = { resolutions: ["1m"], api_keys_required: false, stats_refresh_s: 5 };
  let stopView = () => {};

  function route() {
    const [path, search = ""] = location.hash.replace(/^#/, "").split("?");
    const parts = path.split("/").filter(Boolean);
    const query = new URLSearchParams(search);
    const main = $("#view");
    stopView();
    let name = parts[0] || "fleet";
    if (name === "device" && parts[1]) {
      stopView = deviceView(main, decodeURIComponent(parts[1]));
      document.title = `${decodeURIComponent(parts[1])} · Telemetry`;
    } else if (name === "alerts") {
      stopView = alertsView(main, query);
      document.title = "Alerts · Telemetry";
    } else if (name === "system") {
      stopView = systemView(main);
      document.title = "System · Telemetry";
    } else {
      name = "fleet";
      stopView = fleetView(main);
      document.title = "Fleet · Telemetry";
    }
    $$(".topbar nav a").forEach((a) => a.classList.toggle("active", a.dataset.view === (name === "device" ? "fleet" : name)));
  }

  async function start() {
    applyTheme();
    darkQuery.addEventListener("change", () => {
      applyTheme();
      route(); // charts take their colours when drawn
    });
    $("#theme-button").addEventListener("click", () => {
      const next = THEMES[(THEMES.indexOf(store.get("theme", "auto")) + 1) % THEMES.length];
      store.set("theme", next);
      applyTheme();
      route();
    });
    try {
      config = await api(new URL("config.json", location.href).pathname);
    } catch {
      /* defaults above */
    }
    setUpKeyDialog();
    refreshKeyButton();
    window.addEventListener("hashchange", route);
    route();
    pollStats();
    setInterval(pollStats, Math.max(2, config.stats_refresh_s) * 1000);
  }

  start();
})();
