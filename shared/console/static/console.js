// The console's few live parts that htmx does not cover: the usage charts, the upload progress and a
// job's events (long-polled from the console's own session-authenticated route).
// Loaded from this app only (the CSP allows no inline script); every value shown is set as text.
"use strict";

function chartData() {
  const node = document.getElementById("chart-data");
  return node ? JSON.parse(node.textContent) : null;
}

function drawCharts() {
  const data = chartData();
  if (!data || typeof uPlot === "undefined") return;
  document.querySelectorAll(".chart").forEach((box) => {
    const width = Math.max(280, box.clientWidth);
    const label = box.dataset.label;
    const bars = uPlot.paths.bars({ size: [0.6, 60] });
    if (box.dataset.chart === "daily") {
      if (!data.days.length) return;
      new uPlot({ width, height: 260, series: [{}, { label, stroke: "#0b5cad", fill: "rgba(11,92,173,0.35)", paths: bars, points: { show: false } }],
                  axes: [{}, { size: 70 }], scales: { x: { time: true } } }, [data.days, data.day_tokens], box);
    } else if (box.dataset.chart === "tenants") {
      if (!data.tenants.length) return;
      const xs = data.tenants.map((_, i) => i);
      new uPlot({
        width, height: 260,
        scales: { x: { time: false, range: [-0.5, xs.length - 0.5] } },
        axes: [{ values: (u, splits) => splits.map((i) => (Number.isInteger(i) ? data.tenants[i] || "" : "")), splits: () => xs }, { size: 80 }],
        series: [{},
          { label, stroke: "#0b5cad", fill: "rgba(11,92,173,0.35)", paths: bars, points: { show: false } },
          { label: box.dataset.budget, stroke: "#57606a", dash: [6, 4], points: { show: true } },
          { label: box.dataset.warning, stroke: "#b42318", dash: [3, 3], points: { show: true } }],
      }, [xs, data.tenant_tokens, data.tenant_budgets, data.tenant_warnings], box);
    }
  });
}

function uploadForm() {
  const form = document.getElementById("upload-form");
  if (!form) return;
  const input = form.querySelector("input[type=file]");
  const bar = document.getElementById("upload-progress");
  const result = document.getElementById("upload-result");
  const send = (files) => {
    const body = new FormData();
    body.append("csrf", form.querySelector("input[name=csrf]").value);
    for (const f of files) body.append("file", f);
    const xhr = new XMLHttpRequest();
    xhr.open("POST", form.action);
    bar.hidden = false;
    bar.value = 0;
    xhr.upload.addEventListener("progress", (e) => { if (e.lengthComputable) bar.value = (100 * e.loaded) / e.total; });
    xhr.addEventListener("load", () => {
      bar.value = 100;
      if (xhr.status === 200) {
        const indexed = JSON.parse(xhr.responseText).indexed.map((d) => d.id + " (" + d.chunks + ")");
        result.textContent = result.dataset.done + indexed.join(", ");
        setTimeout(() => window.location.reload(), 800);
      } else {
        const doc = new DOMParser().parseFromString(xhr.responseText, "text/html");
        const alert = doc.querySelector("[role=alert]");
        result.textContent = alert ? alert.textContent : "HTTP " + xhr.status;
      }
    });
    xhr.send(body);
  };
  form.addEventListener("submit", (e) => { e.preventDefault(); if (input.files.length) send(input.files); });
  ["dragenter", "dragover"].forEach((t) => form.addEventListener(t, (e) => { e.preventDefault(); form.classList.add("over"); }));
  ["dragleave", "drop"].forEach((t) => form.addEventListener(t, (e) => { e.preventDefault(); form.classList.remove("over"); }));
  form.addEventListener("drop", (e) => { if (e.dataTransfer.files.length) send(e.dataTransfer.files); });
}

function followEvents() {
  // Each new event is listed, then the job's facts are re-read (one request at a time, so the last
  // refresh always follows the last event); the stream's cursor (?after=) makes a retry after an
  // error resume exactly where it stopped.
  const list = document.getElementById("job-events");
  if (!list) return;
  let after = 0;
  const refresh = () => {
    const live = document.getElementById("job-live");
    if (!live || typeof htmx === "undefined") return Promise.resolve();
    return htmx.ajax("GET", live.dataset.src, { target: "#job-live", swap: "outerHTML" });
  };
  const next = () => {
    fetch(list.dataset.src + "?after=" + after + "&wait=20", { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then((r) => { if (!r.ok) throw new Error("HTTP " + r.status); return r.json(); })
      .then((page) => {
        for (const e of page.events) {
          const item = document.createElement("li");
          item.value = e.id;
          item.dataset.type = e.type;
          const detail = e.type === "step" ? ": " + (e.data.kind || "") + " " + (e.data.summary || "") : "";
          item.textContent = e.type + " · " + new Date(e.at).toISOString().slice(11, 19) + detail;
          list.appendChild(item);
        }
        const changed = page.events.length > 0;
        after = page.next_after;
        return (changed ? refresh() : Promise.resolve()).then(() => {
          if (page.ended) list.dataset.ended = "true"; else next();
        });
      })
      .catch(() => setTimeout(next, 3000));
  };
  next();
}

document.addEventListener("DOMContentLoaded", () => { drawCharts(); uploadForm(); followEvents(); });
