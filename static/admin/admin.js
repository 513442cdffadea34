// hebdo admin: confirmations before destructive actions, select-all, and live progress.
// No framework, no build step; everything works without it except the live refresh.
"use strict";

document.addEventListener("submit", (event) => {
  const form = event.target;
  const button = event.submitter;
  const question = (button && button.dataset.confirm) || form.dataset.confirm;
  if (question && !window.confirm(question)) {
    event.preventDefault();
  }
});

document.addEventListener("change", (event) => {
  const box = event.target;
  if (box.matches("input[data-select-all]")) {
    document.querySelectorAll("input[name='" + box.dataset.selectAll + "']").forEach((other) => {
      other.checked = box.checked;
    });
  }
});

function watchProgress(panel) {
  const url = panel.dataset.progressUrl;
  const live = new Set(["scheduled", "sending", "paused"]);
  async function poll() {
    let data;
    try {
      const response = await fetch(url, { headers: { Accept: "application/json" }, credentials: "same-origin" });
      if (!response.ok) { throw new Error(String(response.status)); }
      data = await response.json();
    } catch (error) {
      panel.dataset.error = String(error);
      setTimeout(poll, 5000);
      return;
    }
    for (const element of panel.querySelectorAll("[data-field]")) {
      const value = data[element.dataset.field];
      if (value !== undefined && value !== null) { element.textContent = value; }
    }
    const bar = panel.querySelector("progress");
    if (bar) { bar.value = data.percent; }
    if (live.has(data.status)) {
      setTimeout(poll, 2000);
    } else if (panel.dataset.status !== data.status && live.has(panel.dataset.status)) {
      // Finished or cancelled while watching: reload once for the buttons that apply now.
      window.location.reload();
    }
  }
  poll();
}

document.querySelectorAll("[data-progress-url]").forEach(watchProgress);
