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

// A scrolling box (a wide table on a phone, a long mail) must be reachable from the keyboard
// to scroll it: a Tab stop, a region named by the heading before it. Only while it scrolls.
function headingBefore(element) {
  for (let node = element; node && node !== document.body; node = node.parentElement) {
    for (let prev = node.previousElementSibling; prev; prev = prev.previousElementSibling) {
      if (/^H[1-6]$/.test(prev.tagName)) { return prev; }
    }
  }
  return document.querySelector("h1");
}

function markScrolling() {
  document.querySelectorAll(".table-wrap, pre").forEach((box, index) => {
    const scrolls = box.scrollWidth > box.clientWidth + 1 || box.scrollHeight > box.clientHeight + 1;
    if (!scrolls) {
      if (box.dataset.scrolling) { ["tabindex", "role", "aria-labelledby"].forEach((a) => box.removeAttribute(a)); }
      delete box.dataset.scrolling;
      return;
    }
    const heading = headingBefore(box);
    if (heading) {
      heading.id ||= "scroll-heading-" + index;
      box.setAttribute("aria-labelledby", heading.id);
    }
    box.dataset.scrolling = "1";
    box.setAttribute("tabindex", "0");
    box.setAttribute("role", "region");
  });
}
markScrolling();
window.addEventListener("resize", markScrolling);

// A message brought by the reload after an action (an error first) takes the focus, so a
// screen reader reads it at once and the keyboard goes on from there. Again after the load,
// as a #fragment's scroll (back to the row acted on) takes the focus away; then without
// scrolling, so that row stays in view.
const message = document.querySelector("#flash-errors") || document.querySelector(".flashes[data-focus]");
if (message) {
  const take = () => message.focus({ preventScroll: Boolean(window.location.hash) });
  take();
  window.addEventListener("load", () => setTimeout(take, 0));
}
