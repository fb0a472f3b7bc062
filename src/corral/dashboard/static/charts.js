// corral dashboard: the charts page. uPlot (vendored, static/vendor/) draws each chart on a
// canvas; samples arrive over the page's event stream (/ui/events/charts): the whole ring
// first ({reset: true}), then only new samples. app.js owns the stream and calls
// window.corralRender.charts(message) with each message.
"use strict";

(function () {
  const palette = ["#0969da", "#cf222e", "#1a7f37", "#9a6700", "#8250df", "#bf3989",
    "#0a3069", "#57606a", "#fb8500", "#2da44e"];
  // Each chart: which sample fields are its series (fixed), or a per-node map (dynamic).
  const fixed = {
    "chart-nodes": [["up", "UP", "#1a7f37"], ["down", "DOWN", "#cf222e"], ["left", "LEFT", "#57606a"]],
    "chart-queue": [["queued", "queued", "#0969da"], ["assigned", "assigned (prefetched)", "#9a6700"],
      ["running", "running", "#1a7f37"]],
    "chart-throughput": [["complete", "complete", "#1a7f37"], ["failed", "failed", "#cf222e"],
      ["cancelled", "cancelled", "#57606a"]],
    "chart-latency": [["run_p50", "run time, median", "#0969da"], ["run_p95", "run time, p95", "#8250df"],
      ["wait_p50", "queue wait, median", "#9a6700"]],
    "chart-commands": [["cmd_done", "done", "#1a7f37"], ["cmd_failed", "failed", "#cf222e"],
      ["cmd_expired", "expired", "#9a6700"]],
  };
  const perNode = { "chart-cpu": "cpu", "chart-mem": "mem" };
  let samples = [];
  let keep = 900;
  const plots = new Map(); // section id -> {plot, names}

  function width(box) {
    return Math.max(280, Math.floor(box.clientWidth) - 4);
  }

  function draw(id, series, data) {
    const box = document.getElementById(id);
    if (!box) return;
    const names = series.map((s) => s[1]).join("\u0000");
    let entry = plots.get(id);
    if (entry && entry.names !== names) {
      entry.plot.destroy();
      plots.delete(id);
      entry = undefined;
    }
    let empty = box.querySelector("p.nodata");
    if (!series.length) {
      if (entry) { entry.plot.destroy(); plots.delete(id); }
      if (!empty) {
        empty = document.createElement("p");
        empty.className = "nodata hint";
        empty.textContent = "no data: no node sends " + (perNode[id] === "cpu" ? "CPU" : "memory") +
          " stats in its heartbeats";
        box.appendChild(empty);
      }
      box.dataset.points = "0";
      box.dataset.total = "0";
      return;
    }
    if (empty) empty.remove();
    if (!entry) {
      const opts = {
        width: width(box),
        height: 200,
        scales: { x: { time: true } },
        series: [{}].concat(series.map((s) => ({ label: s[1], stroke: s[2], width: 1.5, spanGaps: false }))),
        axes: [{}, { size: 50 }],
        legend: { live: true },
      };
      entry = { plot: new window.uPlot(opts, data, box), names: names };
      plots.set(id, entry);
    } else {
      entry.plot.setData(data);
    }
    let total = 0;
    for (const col of data.slice(1)) for (const v of col) if (typeof v === "number") total += v;
    box.dataset.points = String(data[0].length);
    box.dataset.total = String(Math.round(total * 100) / 100);
  }

  function redraw() {
    const xs = samples.map((s) => s.t);
    for (const [id, series] of Object.entries(fixed)) {
      draw(id, series, [xs].concat(series.map((s) => samples.map((r) => r[s[0]]))));
    }
    for (const [id, field] of Object.entries(perNode)) {
      const nodes = new Set();
      for (const r of samples) for (const n of Object.keys(r[field] || {})) nodes.add(n);
      const names = Array.from(nodes).sort();
      const series = names.map((n, i) => [n, n, palette[i % palette.length]]);
      const data = [xs].concat(names.map((n) => samples.map((r) => {
        const v = (r[field] || {})[n];
        return typeof v === "number" ? v : null;
      })));
      draw(id, series, data);
    }
    document.body.dataset.samples = String(samples.length);
  }

  window.corralRender = window.corralRender || {};
  window.corralRender.charts = function (msg) {
    if (!window.uPlot) return;
    keep = msg.keep || keep;
    if (msg.reset) samples = [];
    const last = samples.length ? samples[samples.length - 1].seq : 0;
    for (const s of msg.samples) if (s.seq > last) samples.push(s);
    if (samples.length > keep) samples = samples.slice(samples.length - keep);
    redraw();
  };

  let resizing = 0;
  window.addEventListener("resize", () => {
    clearTimeout(resizing);
    resizing = setTimeout(() => {
      for (const [id, entry] of plots) {
        const box = document.getElementById(id);
        if (box) entry.plot.setSize({ width: width(box), height: 200 });
      }
    }, 200);
  });
})();
