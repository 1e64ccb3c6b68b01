/* Telemetry dashboard: fleet, device charts, alerts and system figures, read from this
 * same API. Plain JavaScript modules, no build step; uPlot (vendor/uplot) draws the charts.
 * Each view renders into <main> and returns a function that stops its timers and streams.
 */

import { $, $$, api, config, esc, pollStats, session, store, toast } from "./core.js";
import { alertsView } from "./alerts.js";
import { deviceView } from "./device.js";
import { fleetView } from "./fleet.js";
import { rulesView } from "./rules.js";
import { systemView } from "./system.js";

const THEMES = ["auto", "light", "dark"];

// theme.js set the theme before the first paint; this keeps the button in step.
function applyTheme() {
  const { chosen, dark } = window.telemetryTheme();
  const button = $("#theme-button");
  button.textContent = chosen === "auto" ? "◐" : dark ? "☾" : "☀";
  button.title = `Theme: ${chosen === "auto" ? "follows the system" : chosen}`;
}

/* Projects to switch between, for a caller who may work in more than one (the admin key,
 * or anyone when keys are off): GET /orgs answers them and no one else. A project's key
 * works in its own project only, so it sees no switcher. */
async function setUpProjects() {
  const label = $("#project-switch");
  const select = $("#project-select");
  let projects = [];
  try {
    const orgs = (await api("/orgs", { params: { limit: 100 } })).data;
    for (const org of orgs) {
      const page = await api(`/orgs/${encodeURIComponent(org.org_id)}/projects`, {
        params: { limit: 100 },
      });
      projects.push(...page.data.map((project) => ({ ...project, org: org.name })));
    }
  } catch {
    projects = [];
  }
  label.hidden = projects.length < 2;
  if (label.hidden) {
    session.remove("project");
    return;
  }
  const chosen = session.get("project", "default");
  select.innerHTML = projects
    .map(
      (p) => `<option value="${esc(p.project_id)}" ${p.project_id === chosen ? "selected" : ""}>
        ${esc(p.org)} / ${esc(p.name)}</option>`,
    )
    .join("");
}

function refreshKeyButton() {
  const button = $("#key-button");
  const hasKey = Boolean(session.get("apiKey"));
  button.classList.toggle("has-key", hasKey);
  button.classList.toggle("needs-key", !hasKey && config.api_keys_required);
  $("#key-label").textContent = hasKey ? "Key set" : "API key";
}

function setUpKeyDialog() {
  const dialog = $("#key-dialog");
  const input = $("#key-input");
  const open = () => {
    if (dialog.open) return;
    input.value = session.get("apiKey", "");
    dialog.showModal();
  };
  $("#key-button").addEventListener("click", open);
  // Every view's reads need a key when the server requires one: ask for it at once.
  window.addEventListener("telemetry:needs-key", open);
  $("#key-cancel").addEventListener("click", () => dialog.close());
  $("#key-forget").addEventListener("click", () => {
    session.remove("apiKey");
    session.remove("project");
    dialog.close();
    refreshKeyButton();
    toast("API key forgotten");
  });
  $("#key-form").addEventListener("submit", async () => {
    const key = input.value.trim();
    if (key) session.set("apiKey", key);
    else session.remove("apiKey");
    // Another key may work in other projects: choose again from what it may see.
    session.remove("project");
    refreshKeyButton();
    if (key) toast("Signed in with this key until the tab is closed");
    await setUpProjects();
    route();
    pollStats();
  });
}

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
  } else if (name === "rules") {
    stopView = rulesView(main);
    document.title = "Rules · Telemetry";
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
  matchMedia("(prefers-color-scheme: dark)").addEventListener("change", () => {
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
    Object.assign(config, await api(new URL("config.json", location.href).pathname));
  } catch {
    /* defaults above */
  }
  setUpKeyDialog();
  refreshKeyButton();
  $("#project-select").addEventListener("change", (event) => {
    session.set("project", event.target.value);
    // A device id names another device in another project: back to the fleet.
    if (location.hash.startsWith("#/device/")) location.hash = "#/fleet";
    else route();
    pollStats();
  });
  await setUpProjects();
  window.addEventListener("hashchange", route);
  route();
  pollStats();
  setInterval(pollStats, Math.max(2, config.stats_refresh_s) * 1000);
}

start();
