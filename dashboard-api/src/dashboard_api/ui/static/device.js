/* Device view: a chart per metric from the rollups, kept current by the device's stream. */

import { $, $$, esc, fmt, fmtCount, fmtTime, ago, store, api, openStream, liveLabel, css, health, valueChips, config, ruleCondition } from "./core.js";

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

export function deviceView(main, deviceId) {
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
    <h2 class="section-title">Rules covering this device</h2>
    <div class="table-wrap">
      <table id="device-rules">
        <thead><tr><th>Rule</th><th>Kind</th><th>Condition</th><th>Severity</th><th>Enabled</th></tr></thead>
        <tbody><tr><td colspan="5" class="empty">Loading…</td></tr></tbody>
      </table>
    </div>
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

  async function loadRules() {
    const tbody = $("#device-rules tbody", main);
    try {
      const body = await api("/alerts/rules", { params: { device_id: deviceId, limit: 200 } });
      tbody.innerHTML = body.data.length
        ? body.data.map((r) => `<tr>
            <td>${esc(r.name)}</td><td>${esc(r.kind || "threshold")}</td>
            <td class="mono">${esc(ruleCondition(r))}</td>
            <td><span class="badge ${esc(r.severity)}">${esc(r.severity)}</span></td>
            <td>${r.enabled ? "yes" : "no"}</td></tr>`).join("")
        : `<tr><td colspan="5" class="empty">No rule covers this device.</td></tr>`;
    } catch (error) {
      tbody.innerHTML = `<tr><td colspan="5" class="empty">${esc(error.message)}</td></tr>`;
    }
  }

  async function loadAll() {
    markControls();
    if (!(await loadDevice())) return;
    loadRules();
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
