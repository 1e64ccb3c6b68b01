/* Before the first paint: the theme chosen in this browser, or the system's. */
"use strict";

window.telemetryTheme = () => {
  const chosen = localStorage.getItem("telemetry.theme") || "auto";
  const dark = chosen === "dark" || (chosen === "auto" && matchMedia("(prefers-color-scheme: dark)").matches);
  document.documentElement.dataset.theme = dark ? "dark" : "light";
  return { chosen, dark };
};
window.telemetryTheme();
