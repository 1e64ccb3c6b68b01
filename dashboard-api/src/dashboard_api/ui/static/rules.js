/* Rules view: alert rules of every kind, silences and webhooks, managed through the same
 * API a script would use. A refusal (422) is shown beside the field it names. */

import { $, $$, api, esc, fmtTime, ruleCondition, toast } from "./core.js";

const KINDS = {
  threshold: "a value past a number",
  rate: "a change per second past a number",
  anomaly: "a value unusual for the device",
  absent: "no reading for a while",
};
// Which fields each kind uses; the form shows only those.
const KIND_FIELDS = {
  threshold: ["metric", "operator", "threshold", "k", "n", "for", "cooldown", "clear_threshold"],
  rate: ["metric", "operator", "threshold", "window", "for", "cooldown", "clear_threshold"],
  anomaly: ["metric", "deviations", "clear_deviations", "warmup", "for", "cooldown"],
  absent: ["metric", "for"],
};
const NUMBER_FIELDS = ["threshold", "k", "n", "clear_threshold", "deviations", "clear_deviations", "warmup"];

const field = (name, label, input, hint = "") => `
  <label class="field" data-field="${name}">
    <span>${label}</span>${input}
    ${hint ? `<small class="muted">${hint}</small>` : ""}
    <small class="field-error" data-error-for="${name}"></small>
  </label>`;

const select = (name, options, chosen) =>
  `<select name="${name}">${options
    .map(([value, text]) => `<option value="${esc(value)}" ${value === chosen ? "selected" : ""}>${esc(text)}</option>`)
    .join("")}</select>`;

/* Show each refusal beside its field (or above the form for a field it does not show). */
function showErrors(form, error) {
  $$(".field-error", form).forEach((el) => (el.textContent = ""));
  $$(".field", form).forEach((el) => el.classList.remove("invalid"));
  const general = $(".form-error", form);
  general.textContent = "";
  const errors = error.body?.errors || [{ field: "", reason: error.message }];
  for (const { field: name, reason } of errors) {
    const slot = $(`[data-error-for="${name}"]`, form);
    if (slot && slot.closest(".field").offsetParent !== null) {
      slot.textContent = reason;
      slot.closest(".field").classList.add("invalid");
    } else {
      general.textContent += `${name ? `${name}: ` : ""}${reason} `;
    }
  }
}

function clearErrors(form) {
  $$(".field-error", form).forEach((el) => (el.textContent = ""));
  $$(".field", form).forEach((el) => el.classList.remove("invalid"));
  $(".form-error", form).textContent = "";
}

function ruleForm() {
  return `
    <form id="rule-form" class="card form-card" novalidate>
      <h2 id="rule-form-title">New rule</h2>
      <input type="hidden" name="rule_id">
      <div class="form-grid">
        ${field("name", "Name", `<input name="name" required maxlength="100" placeholder="Server room too hot">`)}
        ${field("kind", "Kind", select("kind", Object.entries(KINDS).map(([k, t]) => [k, `${k}: ${t}`]), "threshold"))}
        ${field("metric", "Metric", `<input name="metric" placeholder="temperature_c" spellcheck="false">`, "absent rules: empty for any reading")}
        ${field("operator", "Operator", select("operator", [">", ">=", "<", "<=", "==", "!="].map((o) => [o, o]), ">"))}
        ${field("threshold", "Threshold", `<input name="threshold" inputmode="decimal" placeholder="30">`)}
        ${field("window", "Window", `<input name="window" value="1m" spellcheck="false">`)}
        ${field("deviations", "Deviations", `<input name="deviations" inputmode="decimal" value="4">`)}
        ${field("clear_deviations", "Clear at deviations", `<input name="clear_deviations" inputmode="decimal" placeholder="half of deviations">`)}
        ${field("warmup", "Warm-up readings", `<input name="warmup" inputmode="numeric" value="30">`)}
        ${field("k", "k (of n)", `<input name="k" inputmode="numeric" value="1">`)}
        ${field("n", "n readings", `<input name="n" inputmode="numeric" value="1">`)}
        ${field("for", "For", `<input name="for" value="0s" spellcheck="false">`, "30s, 5m, 2h, 1d")}
        ${field("cooldown", "Cooldown", `<input name="cooldown" value="0s" spellcheck="false">`)}
        ${field("clear_threshold", "Clear threshold", `<input name="clear_threshold" inputmode="decimal" placeholder="the threshold">`)}
        ${field("severity", "Severity", select("severity", [["info", "info"], ["warning", "warning"], ["critical", "critical"]], "warning"))}
        ${field("scope", "Devices", select("scope", [["all", "all devices"], ["tag", "with a tag"], ["devices", "listed"]], "all"))}
        ${field("tag", "Tag", `<input name="tag" placeholder="room:101" spellcheck="false">`)}
        ${field("devices", "Device ids", `<input name="devices" placeholder="dev-1, dev-2" spellcheck="false">`)}
        ${field("enabled", "Enabled", `<input type="checkbox" name="enabled" checked>`)}
      </div>
      <p class="form-error" role="alert"></p>
      <div class="form-actions">
        <button type="button" class="ghost" id="rule-reset">Clear</button>
        <button type="submit" class="primary" id="rule-save">Create rule</button>
      </div>
    </form>`;
}

export function rulesView(main) {
  main.innerHTML = `
    <div class="page-head">
      <div><h1>Rules</h1><div class="sub">When a device is in trouble, who is told, and who is spared.</div></div>
    </div>
    <div class="table-wrap">
      <table id="rules-table">
        <thead><tr><th>Rule</th><th>Kind</th><th>Condition</th><th>Devices</th><th>Severity</th>
          <th>Enabled</th><th></th></tr></thead>
        <tbody><tr><td colspan="7" class="empty">Loading…</td></tr></tbody>
      </table>
    </div>
    ${ruleForm()}
    <h2 class="section-title">Silences</h2>
    <div class="table-wrap">
      <table id="silences-table">
        <thead><tr><th>Rule</th><th>Device</th><th>Until</th><th>Comment</th><th></th></tr></thead>
        <tbody><tr><td colspan="5" class="empty">Loading…</td></tr></tbody>
      </table>
    </div>
    <form id="silence-form" class="card form-card" novalidate>
      <h2>New silence</h2>
      <div class="form-grid">
        ${field("rule_id", "Rule", `<select name="rule_id"><option value="">any rule</option></select>`)}
        ${field("device_id", "Device id", `<input name="device_id" placeholder="any device" spellcheck="false">`)}
        ${field("until", "Until", `<input name="until" type="datetime-local">`)}
        ${field("comment", "Comment", `<input name="comment" maxlength="500" placeholder="maintenance window">`)}
      </div>
      <p class="form-error" role="alert"></p>
      <div class="form-actions"><button type="submit" class="primary" id="silence-save">Silence</button></div>
    </form>
    <h2 class="section-title">Webhooks</h2>
    <div class="table-wrap">
      <table id="webhooks-table">
        <thead><tr><th>URL</th><th>For</th><th>Circuit</th><th>Recent deliveries</th><th></th></tr></thead>
        <tbody><tr><td colspan="5" class="empty">Loading…</td></tr></tbody>
      </table>
    </div>
    <form id="webhook-form" class="card form-card" novalidate>
      <h2>New webhook</h2>
      <div class="form-grid">
        ${field("url", "URL", `<input name="url" type="url" placeholder="https://hooks.example.com/telemetry" spellcheck="false">`)}
        ${field("description", "Description", `<input name="description" maxlength="200" placeholder="on-call pager">`)}
        ${field("severity", "Severities", `<input name="severity" placeholder="warning, critical (empty: all)" spellcheck="false">`)}
      </div>
      <p class="form-error" role="alert"></p>
      <p class="webhook-secret muted" hidden></p>
      <div class="form-actions"><button type="submit" class="primary" id="webhook-save">Add webhook</button></div>
    </form>`;

  const state = { rules: [] };
  const ruleFormEl = $("#rule-form", main);

  function showKindFields() {
    const kind = ruleFormEl.elements.kind.value;
    const used = new Set(KIND_FIELDS[kind]);
    for (const name of ["metric", "operator", "threshold", "window", "deviations", "clear_deviations", "warmup", "k", "n", "for", "cooldown", "clear_threshold"]) {
      $(`[data-field="${name}"]`, ruleFormEl).hidden = !used.has(name);
    }
    const scope = ruleFormEl.elements.scope.value;
    $('[data-field="tag"]', ruleFormEl).hidden = scope !== "tag";
    $('[data-field="devices"]', ruleFormEl).hidden = scope !== "devices";
  }

  /* The form's fields as the API takes them: only the kind's own, numbers as numbers. */
  function ruleBody() {
    const f = ruleFormEl.elements;
    const kind = f.kind.value;
    const body = { name: f.name.value.trim(), kind, severity: f.severity.value, scope: f.scope.value, enabled: f.enabled.checked };
    for (const name of KIND_FIELDS[kind]) {
      const raw = f[name].value.trim();
      if (raw === "") {
        if (["metric", "clear_threshold", "clear_deviations", "threshold", "operator"].includes(name)) body[name] = null;
        continue;
      }
      body[name] = NUMBER_FIELDS.includes(name) ? Number(raw) : raw;
    }
    // A rule changed to a kind without them must drop them (the API refuses them there).
    for (const name of ["operator", "threshold", "clear_threshold"]) {
      if (!KIND_FIELDS[kind].includes(name)) body[name] = null;
    }
    if (body.scope === "tag") body.tag = f.tag.value.trim() || null;
    if (body.scope === "devices") body.devices = f.devices.value.split(",").map((d) => d.trim()).filter(Boolean);
    return body;
  }

  function resetRuleForm() {
    ruleFormEl.reset();
    ruleFormEl.elements.rule_id.value = "";
    $("#rule-form-title", main).textContent = "New rule";
    $("#rule-save", main).textContent = "Create rule";
    clearErrors(ruleFormEl);
    showKindFields();
  }

  function editRule(rule) {
    resetRuleForm();
    const f = ruleFormEl.elements;
    f.rule_id.value = rule.rule_id;
    for (const name of ["name", "kind", "metric", "operator", "threshold", "window", "deviations", "clear_deviations", "warmup", "k", "n", "for", "cooldown", "clear_threshold", "severity", "scope", "tag"]) {
      const value = rule[name];
      f[name].value = value === null || value === undefined ? "" : value;
    }
    f.kind.value = rule.kind || "threshold";
    f.devices.value = (rule.devices || []).join(", ");
    f.enabled.checked = rule.enabled;
    $("#rule-form-title", main).textContent = `Edit ${rule.name}`;
    $("#rule-save", main).textContent = "Save rule";
    showKindFields();
    ruleFormEl.scrollIntoView({ behavior: "smooth", block: "start" });
  }

  async function loadRules() {
    const tbody = $("#rules-table tbody", main);
    try {
      state.rules = (await api("/alerts/rules", { params: { limit: 500 } })).data;
    } catch (error) {
      tbody.innerHTML = `<tr><td colspan="7" class="empty">${esc(error.message)}</td></tr>`;
      return;
    }
    tbody.innerHTML = state.rules.length
      ? state.rules.map((r) => `
        <tr data-rule="${esc(r.rule_id)}">
          <td>${esc(r.name)}${r.builtin ? ' <span class="tag">built-in</span>' : ""}</td>
          <td>${esc(r.kind || "threshold")}</td>
          <td class="mono">${esc(ruleCondition(r))}</td>
          <td>${esc(r.scope === "tag" ? `tag ${r.tag}` : r.scope === "devices" ? r.devices.join(", ") : "all")}</td>
          <td><span class="badge ${esc(r.severity)}">${esc(r.severity)}</span></td>
          <td><input type="checkbox" class="rule-enabled" aria-label="Enabled" ${r.enabled ? "checked" : ""}></td>
          <td class="nowrap">${r.builtin ? "" : `<button type="button" class="small ghost rule-edit">Edit</button>
            <button type="button" class="small ghost rule-delete">Delete</button>`}</td>
        </tr>`).join("")
      : `<tr><td colspan="7" class="empty">No rules yet.</td></tr>`;
    const choices = $("#silence-form select[name=rule_id]", main);
    const chosen = choices.value;
    choices.innerHTML = `<option value="">any rule</option>${state.rules
      .map((r) => `<option value="${esc(r.rule_id)}">${esc(r.name)}</option>`).join("")}`;
    choices.value = chosen;
  }

  async function loadSilences() {
    const tbody = $("#silences-table tbody", main);
    try {
      const silences = (await api("/alerts/silences", { params: { limit: 200 } })).data;
      const names = Object.fromEntries(state.rules.map((r) => [r.rule_id, r.name]));
      tbody.innerHTML = silences.length
        ? silences.map((s) => `
          <tr data-silence="${esc(s.silence_id)}">
            <td>${esc(s.rule_id ? names[s.rule_id] || s.rule_id : "any rule")}</td>
            <td class="mono">${esc(s.device_id || "any device")}</td>
            <td title="${esc(fmtTime(s.until))}">${esc(fmtTime(s.until))}</td>
            <td>${esc(s.comment || "")}</td>
            <td><button type="button" class="small ghost silence-delete">End</button></td>
          </tr>`).join("")
        : `<tr><td colspan="5" class="empty">Nothing is silenced.</td></tr>`;
    } catch (error) {
      tbody.innerHTML = `<tr><td colspan="5" class="empty">${esc(error.message)}</td></tr>`;
    }
  }

  async function loadWebhooks() {
    const tbody = $("#webhooks-table tbody", main);
    try {
      const hooks = (await api("/alerts/webhooks", { params: { limit: 100 } })).data;
      const rows = await Promise.all(hooks.map(async (w) => {
        const deliveries = (await api(`/alerts/webhooks/${encodeURIComponent(w.webhook_id)}/deliveries`, { params: { limit: 5 } })).data;
        // Known once the worker has sent to the URL since it started.
        const circuit = w.circuit?.state || "unknown";
        return `
          <tr data-webhook="${esc(w.webhook_id)}">
            <td class="mono">${esc(w.url)}${w.description ? `<div class="muted">${esc(w.description)}</div>` : ""}</td>
            <td>${esc((w.severity || ["every severity"]).join(", "))}</td>
            <td><span class="badge circuit-${esc(circuit)}" title="${w.circuit?.since ? `since ${esc(fmtTime(w.circuit.since))}` : ""}">${esc(circuit)}</span></td>
            <td>${deliveries.length ? deliveries.map((d) => `<div class="delivery">
                <span class="badge ${d.status === "delivered" ? "ok" : d.status === "failed" ? "critical" : "warning"}">${esc(d.status)}</span>
                <span class="mono">${esc(d.device_id)} ${esc(d.transition)}</span>
                <span class="muted">${esc(d.attempt_count)} attempt${d.attempt_count === 1 ? "" : "s"}${
                  d.attempts.at(-1)?.error ? ` · ${esc(d.attempts.at(-1).error)}` : ""}</span></div>`).join("")
              : '<span class="muted">none yet</span>'}</td>
            <td><button type="button" class="small ghost webhook-delete">Delete</button></td>
          </tr>`;
      }));
      tbody.innerHTML = rows.length ? rows.join("") : `<tr><td colspan="5" class="empty">No webhooks.</td></tr>`;
    } catch (error) {
      tbody.innerHTML = `<tr><td colspan="5" class="empty">${esc(error.message)}</td></tr>`;
    }
  }

  const loadAll = async () => {
    await loadRules();
    await Promise.all([loadSilences(), loadWebhooks()]);
  };

  ruleFormEl.elements.kind.addEventListener("change", showKindFields);
  ruleFormEl.elements.scope.addEventListener("change", showKindFields);
  $("#rule-reset", main).addEventListener("click", resetRuleForm);
  ruleFormEl.addEventListener("submit", async (event) => {
    event.preventDefault();
    const id = ruleFormEl.elements.rule_id.value;
    try {
      const saved = id
        ? await api(`/alerts/rules/${encodeURIComponent(id)}`, { method: "PATCH", json: ruleBody() })
        : await api("/alerts/rules", { method: "POST", json: ruleBody() });
      toast(`Rule “${saved.name}” ${id ? "saved" : "created"}`);
      resetRuleForm();
      await loadRules();
    } catch (error) {
      showErrors(ruleFormEl, error);
    }
  });

  $("#rules-table", main).addEventListener("click", async (event) => {
    const row = event.target.closest("tr[data-rule]");
    if (!row) return;
    const rule = state.rules.find((r) => r.rule_id === row.dataset.rule);
    if (event.target.closest(".rule-edit")) editRule(rule);
    if (event.target.closest(".rule-delete")) {
      if (!confirm(`Delete the rule “${rule.name}”? Its open alerts resolve.`)) return;
      try {
        await api(`/alerts/rules/${encodeURIComponent(rule.rule_id)}`, { method: "DELETE" });
        toast(`Rule “${rule.name}” deleted`);
        await loadRules();
      } catch (error) {
        toast(error.message, "error");
      }
    }
  });
  $("#rules-table", main).addEventListener("change", async (event) => {
    const box = event.target.closest(".rule-enabled");
    if (!box) return;
    const id = box.closest("tr").dataset.rule;
    try {
      await api(`/alerts/rules/${encodeURIComponent(id)}`, { method: "PATCH", json: { enabled: box.checked } });
      toast(box.checked ? "Rule enabled" : "Rule disabled");
    } catch (error) {
      box.checked = !box.checked;
      toast(error.message, "error");
    }
  });

  const silenceForm = $("#silence-form", main);
  const inAnHour = new Date(Date.now() + 3600_000 - new Date().getTimezoneOffset() * 60_000);
  silenceForm.elements.until.value = inAnHour.toISOString().slice(0, 16);
  silenceForm.addEventListener("submit", async (event) => {
    event.preventDefault();
    const f = silenceForm.elements;
    const until = f.until.value ? new Date(f.until.value).toISOString() : "";
    const body = { rule_id: f.rule_id.value || null, device_id: f.device_id.value.trim() || null, until, comment: f.comment.value.trim() || null };
    try {
      await api("/alerts/silences", { method: "POST", json: body });
      toast("Silenced");
      clearErrors(silenceForm);
      f.device_id.value = "";
      f.comment.value = "";
      await loadSilences();
    } catch (error) {
      showErrors(silenceForm, error);
    }
  });
  $("#silences-table", main).addEventListener("click", async (event) => {
    const row = event.target.closest("tr[data-silence]");
    if (!row || !event.target.closest(".silence-delete")) return;
    await api(`/alerts/silences/${encodeURIComponent(row.dataset.silence)}`, { method: "DELETE" });
    toast("Silence ended");
    await loadSilences();
  });

  const webhookForm = $("#webhook-form", main);
  webhookForm.addEventListener("submit", async (event) => {
    event.preventDefault();
    const f = webhookForm.elements;
    const severity = f.severity.value.split(",").map((s) => s.trim()).filter(Boolean);
    const body = { url: f.url.value.trim(), description: f.description.value.trim() || null, severity: severity.length ? severity : null };
    try {
      const created = await api("/alerts/webhooks", { method: "POST", json: body });
      clearErrors(webhookForm);
      const secret = $(".webhook-secret", webhookForm);
      secret.hidden = false;
      secret.innerHTML = `Signing secret (shown once, store it now): <code>${esc(created.secret)}</code>`;
      webhookForm.reset();
      await loadWebhooks();
    } catch (error) {
      showErrors(webhookForm, error);
    }
  });
  $("#webhooks-table", main).addEventListener("click", async (event) => {
    const row = event.target.closest("tr[data-webhook]");
    if (!row || !event.target.closest(".webhook-delete")) return;
    if (!confirm("Delete this webhook? Its pending deliveries are cancelled.")) return;
    await api(`/alerts/webhooks/${encodeURIComponent(row.dataset.webhook)}`, { method: "DELETE" });
    toast("Webhook deleted");
    await loadWebhooks();
  });

  showKindFields();
  loadAll();
  // Deliveries and circuits change as the worker sends: keep the tables current.
  const timer = setInterval(() => Promise.all([loadSilences(), loadWebhooks()]), 10000);
  return () => clearInterval(timer);
}
