// corral dashboard: a guardian's state graph, laid out in the browser by dagre (vendored,
// static/vendor/) and drawn as SVG: no Graphviz on the controller's host. The graph's shape
// comes once from /ui/guardians/<name>/graph.json; the guardians event stream (app.js) then
// calls window.corralGraph.update(view) to move the highlight: the current state filled, the
// requested state outlined, and the path between them in blue (dashed where the path takes a
// goto state's implicit edge). Names go in with textContent / setAttribute, never as markup.
"use strict";

(function () {
  const NS = "http://www.w3.org/2000/svg";
  const box = document.getElementById("graph");
  if (!box || !window.dagre) return;
  let nodes = new Map(); // state name -> {g, x, y}
  let edges = new Map(); // "a\u0000b" -> path element
  let overlay = null; // the group of implicit path edges
  let pending = null; // a view that arrived before the graph

  function svgEl(tag, attrs) {
    const e = document.createElementNS(NS, tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
    return e;
  }

  function textWidth(text) {
    const c = textWidth.canvas || (textWidth.canvas = document.createElement("canvas"));
    const ctx = c.getContext("2d");
    ctx.font = "13px system-ui, sans-serif";
    return ctx.measureText(text).width;
  }

  function draw(graph) {
    const g = new window.dagre.graphlib.Graph();
    g.setGraph({ rankdir: "LR", nodesep: 18, ranksep: 46, marginx: 12, marginy: 12 });
    g.setDefaultEdgeLabel(() => ({}));
    for (const s of graph.states) {
      g.setNode(s.name, { width: Math.ceil(textWidth(s.name)) + 28, height: 30, state: s });
    }
    for (const [a, b] of graph.edges) if (a !== b) g.setEdge(a, b);
    window.dagre.layout(g);
    const size = g.graph();
    const svg = svgEl("svg", {
      width: Math.ceil(size.width), height: Math.ceil(size.height),
      viewBox: "0 0 " + Math.ceil(size.width) + " " + Math.ceil(size.height),
      role: "img", "aria-label": "state graph of " + graph.name, class: "state-graph",
    });
    const defs = svgEl("defs");
    for (const [id, cls] of [["arrow", "arrow"], ["arrow-path", "arrow arrow-path"]]) {
      const m = svgEl("marker", { id: id, viewBox: "0 0 10 10", refX: 9, refY: 5,
        markerWidth: 7, markerHeight: 7, orient: "auto-start-reverse" });
      m.appendChild(svgEl("path", { d: "M0,0 L10,5 L0,10 z", class: cls }));
      defs.appendChild(m);
    }
    svg.appendChild(defs);
    const edgeGroup = svgEl("g", { class: "edges" });
    edges = new Map();
    for (const e of g.edges()) {
      const pts = g.edge(e).points;
      const d = pts.map((p, i) => (i ? "L" : "M") + p.x.toFixed(1) + "," + p.y.toFixed(1)).join(" ");
      const path = svgEl("path", { d: d, class: "gedge", "marker-end": "url(#arrow)" });
      path.dataset.from = e.v;
      path.dataset.to = e.w;
      edgeGroup.appendChild(path);
      edges.set(e.v + "\u0000" + e.w, path);
    }
    svg.appendChild(edgeGroup);
    overlay = svgEl("g", { class: "implicit" });
    svg.appendChild(overlay);
    nodes = new Map();
    for (const name of g.nodes()) {
      const n = g.node(name);
      const grp = svgEl("g", { class: "gnode" + (n.state.goto ? " goto" : "") +
        (n.state.request ? "" : " unrequestable") });
      grp.dataset.state = name;
      grp.appendChild(svgEl("rect", { x: n.x - n.width / 2, y: n.y - n.height / 2,
        width: n.width, height: n.height, rx: 8, ry: 8 }));
      if (n.state.goto) {
        grp.appendChild(svgEl("rect", { class: "outer", x: n.x - n.width / 2 - 3,
          y: n.y - n.height / 2 - 3, width: n.width + 6, height: n.height + 6, rx: 10, ry: 10 }));
      }
      const label = svgEl("text", { x: n.x, y: n.y + 4.5, "text-anchor": "middle" });
      label.textContent = name;
      grp.appendChild(label);
      const title = svgEl("title");
      title.textContent = name + (n.state.goto ? " (goto: reachable from every state)" : "");
      grp.appendChild(title);
      svg.appendChild(grp);
      nodes.set(name, { g: grp, x: n.x, y: n.y });
    }
    box.replaceChildren(svg);
  }

  function update(view) {
    if (!nodes.size) { pending = view; return; }
    const walk = view.state ? [view.state].concat(view.path || []) : (view.path || []);
    const onPath = new Set(walk);
    for (const [name, n] of nodes) {
      n.g.classList.toggle("current", name === view.state);
      n.g.classList.toggle("requested", name === view.request);
      n.g.classList.toggle("on-path", onPath.has(name) && name !== view.state);
    }
    for (const path of edges.values()) {
      path.classList.remove("on-path");
      path.setAttribute("marker-end", "url(#arrow)");
    }
    overlay.replaceChildren();
    for (let i = 0; i + 1 < walk.length; i++) {
      const a = walk[i], b = walk[i + 1];
      const path = edges.get(a + "\u0000" + b);
      if (path) {
        path.classList.add("on-path");
        path.setAttribute("marker-end", "url(#arrow-path)");
      } else if (nodes.has(a) && nodes.has(b)) { // a goto state's implicit edge
        const na = nodes.get(a), nb = nodes.get(b);
        overlay.appendChild(svgEl("path", { d: "M" + na.x + "," + na.y + " L" + nb.x + "," + nb.y,
          class: "gedge on-path implicit-edge", "marker-end": "url(#arrow-path)" }));
      }
    }
    box.dataset.state = view.state || "";
    box.dataset.request = view.request || "";
  }

  window.corralGraph = { update: update };
  fetch(box.dataset.src, { credentials: "same-origin", headers: { Accept: "application/json" } })
    .then((r) => r.json().then((body) => ({ ok: r.ok, body: body })))
    .then(({ ok, body }) => {
      if (!ok) throw new Error(body.error || "the graph could not be read");
      draw(body);
      update(pending || body.view);
      box.dataset.drawn = "1";
    })
    .catch((err) => {
      const p = document.createElement("p");
      p.className = "error";
      p.textContent = "state graph unavailable: " + err.message;
      box.replaceChildren(p);
    });
})();
