/* System view: ingest rate, consumer lag, DLQ size and store sizes from /stats. */

import { $, fmt, fmtCount, fmtTime, store, css, statCard, onStats } from "./core.js";

const HISTORY_S = 900;

export function systemView(main) {
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
