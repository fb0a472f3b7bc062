// corral dashboard: live updates by server-sent events. No build step; the charts and the
// guardian graphs use the libraries vendored in static/vendor/ (charts.js, graph.js).
// Every value from the server is put into the page with textContent (never innerHTML), so
// whatever a node, task or guardian calls itself is shown, never run.
"use strict";

(function () {
  const body = document.body;
  const page = body.dataset.live;
  const csrf = (document.querySelector('meta[name="csrf"]') || {}).content || "";

  function el(tag, text, cls) {
    const e = document.createElement(tag);
    if (text !== undefined && text !== null) e.textContent = String(text);
    if (cls) e.className = cls;
    return e;
  }
  function link(href, text) {
    const a = el("a", text);
    a.href = href;
    return a;
  }
  function when(at) {
    if (!at) return "-";
    return new Date(at * 1000).toLocaleString();
  }
  function ago(at) {
    if (!at) return "-";
    const s = Math.max(0, Date.now() / 1000 - at);
    if (s < 60) return Math.round(s) + "s ago";
    if (s < 3600) return Math.round(s / 60) + "m ago";
    return (s / 3600).toFixed(1) + "h ago";
  }
  function json(v) {
    return v === null || v === undefined ? "" : JSON.stringify(v);
  }
  // Replace a table body's rows: each row is a list of cells (a string or a Node).
  function fill(table, rows, empty, cols) {
    const tbody = document.querySelector(table + " tbody");
    if (!tbody) return;
    const out = [];
    for (const r of rows) {
      const tr = el("tr");
      for (const [k, v] of Object.entries(r.data || {})) tr.dataset[k] = v;
      for (const c of r.cells) {
        const td = el("td");
        if (c instanceof Node) td.appendChild(c);
        else if (c && typeof c === "object" && "text" in c) {
          td.textContent = String(c.text);
          if (c.cls) td.className = c.cls;
        } else td.textContent = c === null || c === undefined ? "" : String(c);
        tr.appendChild(td);
      }
      out.push(tr);
    }
    if (!out.length && empty) {
      const tr = el("tr");
      const td = el("td", empty);
      td.colSpan = cols || 1;
      tr.appendChild(td);
      out.push(tr);
    }
    tbody.replaceChildren(...out);
  }
  function postButton(action, label, cls) {
    const f = el("form");
    f.method = "post";
    f.action = action;
    const i = el("input");
    i.type = "hidden";
    i.name = "csrf";
    i.value = csrf;
    const b = el("button", label, cls);
    b.type = "submit";
    f.append(i, b);
    return f;
  }

  // A node's host stats from its heartbeats ("" until the first one brings them).
  function hostStats(st) {
    if (!st) return "";
    const pc = (v) => Math.round(v) + "%";
    return [pc(st.cpu_percent), pc(st.mem_percent), pc(st.disk_percent), st.load1.toFixed(2)]
      .join(" / ");
  }

  const render = {
    fleet(nodes) {
      fill("#nodes", nodes.map((n) => ({
        data: { node: n.name },
        cells: [link("/ui/nodes/" + encodeURIComponent(n.name), n.name),
          { text: n.status, cls: "status status-" + n.status },
          { text: ago(n.since), cls: "since" },
          n.labels.join(", "), n.interfaces.join(", "), n.sink ? "yes" : "",
          n.last_serial, { text: n.behind, cls: n.behind ? "behind" : "" },
          n.busy + "/" + n.slots, { text: hostStats(n.stats), cls: "stats" }],
      })), "no nodes", 10);
      const count = document.getElementById("count");
      if (count) count.textContent = nodes.length + " nodes";
    },
    node(d) {
      const s = document.getElementById("node-status");
      if (s && d.node.length) {
        s.textContent = d.node[0].status;
        s.className = "status status-" + d.node[0].status;
      }
      // Only a node that is not UP can be forgotten: the button follows its status.
      const forget = document.getElementById("forget-form");
      if (forget && d.node.length) forget.hidden = d.node[0].status === "UP";
      fill("#node-reports", d.reports.map((r) => ({
        cells: [r.topic, json(r.value), when(r.at), spark(series(r))],
      })), "no reports", 4);
    },
    commands(history) {
      fill("#history", history.map((c) => ({
        data: { serial: c.serial },
        cells: [link("/ui/commands/" + c.serial, c.serial), when(c.created), c.actor, c.kind,
          c.name, c.targets.join(" "),
          Object.entries(c.counts).sort().map(([k, v]) => k + " " + v).join(", ")],
      })));
    },
    command(cmd) {
      if (!cmd || !cmd.outcomes) return;
      const set = (id, v) => { const e = document.getElementById(id); if (e && v !== undefined) e.textContent = v; };
      set("cmd-kind", cmd.kind);
      set("cmd-name", cmd.name);
      set("cmd-actor", cmd.actor);
      set("cmd-targets", cmd.targets ? cmd.targets.join(" ") : undefined);
      if (cmd.created) set("cmd-created", when(cmd.created));
      fill("#outcomes", cmd.outcomes.map((o) => {
        const pre = el("pre", (o.stdout || "") + (o.stderr || ""));
        return {
          data: { node: o.node },
          cells: [o.node, { text: o.state, cls: "state state-" + o.state }, when(o.at),
            json(o.result), o.exit_code === null ? "" : o.exit_code, pre, o.error],
        };
      }));
    },
    tasks(live) {
      const canCancel = !!document.getElementById("queue-form");
      fill("#running", live.running.map((t) => {
        // A prefetched instance waits in its node's worker pipe: not running, no progress yet.
        const assigned = t.status === "assigned";
        let bar = { text: "prefetched: waits for a free worker", cls: "assigned" };
        if (!assigned) {
          bar = el("progress");
          bar.max = 100;
          bar.value = t.progress;
        }
        return {
          data: { task: t.id, status: t.status },
          cells: [link("/ui/tasks/" + t.id, t.id), t.key, t.node,
            { text: t.status, cls: "state state-" + t.status }, bar, t.message,
            canCancel ? postButton("/ui/tasks/" + t.id + "/cancel", "Cancel", "cancel") : ""],
        };
      }));
      fill("#queue", live.queue.map((t) => ({
        cells: [link("/ui/tasks/" + t.id, t.id), t.key, t.priority, when(t.queued_at)],
      })));
      const q = document.getElementById("queued");
      if (q) q.textContent = live.queued;
    },
    task(t) {
      const status = document.getElementById("task-status");
      if (status && status.textContent !== t.status) {
        status.textContent = t.status;
      }
      const bar = document.getElementById("task-progress");
      if (bar) bar.value = t.progress;
      const msg = document.getElementById("task-message");
      if (msg) msg.textContent = t.message;
    },
    groups(d) {
      fill("#groups", d.groups.map((g) => ({
        cells: [g.name, g.run, g.phase, g.size,
          g.members.map((m) => m.id + "#" + m.rank + (m.alive ? "" : " (dead)")).join(", "),
          g.barrier ? g.barrier.kind + " " + g.barrier.seq + " (" + g.barrier.arrived + " arrived)" : "",
          g.missing.join(", ")],
      })), "no live groups", 7);
      fill("#agents", d.agents.map((a) => ({
        cells: [a.name, a.host, a.pid, a.handlers.join(", "), a.handled, a.waiting, a.last_error],
      })), "no agents answered", 7);
    },
    guardians(views) {
      fill("#guardians", views.map((g) => ({
        data: { guardian: g.name },
        cells: [link("/ui/guardians/" + encodeURIComponent(g.name), g.name),
          { text: g.state, cls: "state" }, g.request, g.nominal || "-", g.mode, g.status,
          g.ok ? "OK" : "not OK", g.manager, g.notifications.join("; ")],
      })), "no guardian has published yet", 9);
      const box = document.getElementById("guardian");
      if (!box) return;
      const g = views.find((v) => v.name === box.dataset.name);
      if (!g) return;
      const set = (id, v) => { const e = document.getElementById(id); if (e) e.textContent = v; };
      set("g-state", g.state);
      set("g-request", g.request);
      set("g-mode", g.mode);
      set("g-status", g.status);
      set("g-nominal", g.nominal || "-");
      set("g-ok", g.ok ? "OK" : "not OK");
      set("g-log", (g.log || []).join("\n"));
      set("g-path", g.path.join(" → "));
      set("g-manager", g.manager);
      set("g-notifications", g.notifications.join("; "));
      if (window.corralGraph) window.corralGraph.update(g);
    },
    reports(snap) {
      fill("#reports", snap.reports.map((r) => ({
        cells: [r.topic, r.node, json(r.value), when(r.at), spark(series(r))],
      })), "no reports yet", 5);
      const agg = document.getElementById("aggregates");
      if (agg) agg.textContent = JSON.stringify(snap.aggregates, null, 2);
    },
  };

  // The numeric values of one node's topic seen since the page opened (the last 60).
  const allSeries = new Map();
  function series(r) {
    const key = r.node + "\u0000" + r.topic;
    let s = allSeries.get(key);
    if (!s) allSeries.set(key, (s = []));
    if (typeof r.value === "number" && (!s.length || s[s.length - 1][0] !== r.at)) {
      s.push([r.at, r.value]);
      if (s.length > 60) s.shift();
    }
    return s;
  }

  // A small SVG line of a series of [at, value] points.
  function spark(points) {
    const ns = "http://www.w3.org/2000/svg";
    const svg = document.createElementNS(ns, "svg");
    svg.setAttribute("width", "120");
    svg.setAttribute("height", "24");
    svg.setAttribute("class", "spark");
    if (points.length < 2) return svg;
    const vs = points.map((p) => p[1]);
    const lo = Math.min(...vs), hi = Math.max(...vs);
    const span = hi - lo || 1;
    const d = points.map((p, i) =>
      (i ? "L" : "M") + ((i / (points.length - 1)) * 118 + 1).toFixed(1) + " " +
      (22 - ((p[1] - lo) / span) * 20 + 1).toFixed(1)).join(" ");
    const path = document.createElementNS(ns, "path");
    path.setAttribute("d", d);
    svg.appendChild(path);
    return svg;
  }

  // Relative times tick on their own between updates.
  setInterval(() => {
    for (const e of document.querySelectorAll("td.since[data-at]")) e.textContent = ago(+e.dataset.at);
  }, 1000);

  // Forms that ask first (forget a node): data-confirm holds the question.
  document.addEventListener("submit", (ev) => {
    const form = ev.target;
    if (form instanceof HTMLFormElement && form.dataset.confirm && !window.confirm(form.dataset.confirm)) {
      ev.preventDefault();
    }
  });

  Object.assign(render, window.corralRender || {}); // charts.js adds the charts page
  if (!page || !render[page] || !window.EventSource) return;
  const state = document.getElementById("live-state");
  const query = body.dataset.query ? "?" + body.dataset.query : "";
  const source = new EventSource("/ui/events/" + page + query);
  source.onopen = () => { if (state) state.className = "live-state live-on"; };
  source.onerror = () => { if (state) state.className = "live-state live-off"; };
  source.addEventListener("signout", () => {
    source.close();
    window.location.href = "/ui/login";
  });
  source.onmessage = (ev) => {
    const value = JSON.parse(ev.data);
    if (value && value.error && !Array.isArray(value)) return;
    render[page](value);
    body.dataset.updates = String((+body.dataset.updates || 0) + 1);
  };
})();
