// The attention explorer without a kernel: draws helpers/viz/explorer_data.py's JSON as SVG in the browser.
// Every element with the attribute data-llama3-explorer gets ordinary <select> / <input type=range> controls
// for model, prompt, layer, head and view; hovering a cell shows the token pair and its value.
const SVG = "http://www.w3.org/2000/svg";
const DATA_URL = new URL("explorer/attention.json", import.meta.url);   // relative: works on any static host
const VIEWS = { probs: "attention probabilities", scores: "scores q·k/√d (visible pairs)", types: "head types (all heads)" };
const TYPE_COLOURS = { bos: "#8da0cb", prev: "#fc8d62", self: "#66c2a5", spread: "#e5c494", mixed: "#d9d9d9" };
const VIRIDIS = [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]];   // as the notebooks' maps
const RDBU = [[33, 102, 172], [146, 197, 222], [247, 247, 247], [244, 165, 130], [178, 24, 43]];

function ramp(stops, x) {            // x in [0, 1] -> "rgb(...)" along the colour stops
  const f = Math.min(Math.max(x, 0), 1) * (stops.length - 1), i = Math.min(Math.floor(f), stops.length - 2);
  const a = stops[i], b = stops[i + 1], t = f - i;
  return `rgb(${a.map((v, k) => Math.round(v + (b[k] - v) * t)).join(",")})`;
}

function el(tag, attrs = {}, ns = null, text = null) {
  const e = ns ? document.createElementNS(ns, tag) : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  if (text !== null) e.textContent = text;
  return e;
}

function control(label, input) {
  const wrap = el("label", { class: "llx-control" });
  wrap.append(el("span", {}, null, label), input);
  return wrap;
}

function select(name, options) {      // options: [[value, text], ...]
  const s = el("select", { name });
  for (const [v, t] of options) s.append(el("option", { value: String(v) }, null, t));
  return s;
}

function range(name, max) {
  return el("input", { type: "range", name, min: "0", max: String(max), step: "1", value: "0" });
}

// value of query t, key s (s <= t) of one head: the lower triangle is stored row by row
const at = (flat, t, s) => flat[(t * (t + 1)) / 2 + s];

export function mount(root, data) {
  root.replaceChildren();
  root.classList.add("llx");
  const st = { model: 0, prompt: 0, layer: 0, head: 0, view: "probs" };
  const bar = el("div", { class: "llx-controls" });
  const modelSel = select("model", data.models.map((m, i) => [i, m.label]));
  const promptSel = select("prompt", []);
  const layerIn = range("layer", 0), headIn = range("head", 0);
  const layerOut = el("output", {}, null, "0"), headOut = el("output", {}, null, "0");
  const viewSel = select("view", Object.entries(VIEWS));
  const what = el("div", { class: "llx-row" }), where = el("div", { class: "llx-row" });
  what.append(control("model", modelSel), control("prompt", promptSel));
  where.append(control("layer", layerIn), layerOut, control("head", headIn), headOut, control("view", viewSel));
  bar.append(what, where);
  const caption = el("p", { class: "llx-caption" });
  const figure = el("div", { class: "llx-figure" });
  const tip = el("div", { class: "llx-tip", role: "tooltip", hidden: "" });
  root.append(bar, caption, figure, tip);

  const model = () => data.models[st.model];
  const prompt = () => model().prompts[st.prompt];

  function setModel(i) {
    st.model = i;
    const m = model();
    promptSel.replaceChildren(...m.prompts.map((p, j) => el("option", { value: String(j) }, null,
      p.text.replace(/\n/g, " ⏎ ").slice(0, 70))));
    st.prompt = 0;
    layerIn.max = String(m.n_layers - 1);
    headIn.max = String(m.n_heads - 1);
    st.layer = Math.min(st.layer, m.n_layers - 1);
    st.head = Math.min(st.head, m.n_heads - 1);
  }

  function sync() {                    // controls <- state
    modelSel.value = String(st.model);
    promptSel.value = String(st.prompt);
    layerIn.value = String(st.layer); layerOut.textContent = String(st.layer);
    headIn.value = String(st.head); headOut.textContent = String(st.head);
    viewSel.value = st.view;
  }

  function showTip(ev) {
    const cell = ev.target.closest("[data-tip]");
    if (!cell) { tip.hidden = true; return; }
    tip.textContent = cell.getAttribute("data-tip");
    const box = root.getBoundingClientRect();
    tip.style.left = `${ev.clientX - box.left + 14}px`;
    tip.style.top = `${ev.clientY - box.top + 14}px`;
    tip.hidden = false;
  }

  function heatmap() {
    const p = prompt(), T = p.tokens.length, m = model();
    const scores = st.view === "scores";
    const flat = (scores ? p.scores : p.probs)[st.layer][st.head];
    const scale = scores ? data.score_scale : data.prob_scale;
    const big = Math.max(1, ...flat.map(Math.abs)) / scale;
    const colour = (v) => scores ? ramp(RDBU, 0.5 + v / (2 * big)) : ramp(VIRIDIS, v);
    const left = 110, top = 8, width = Math.max(320, (figure.clientWidth || 900) - left - 120);
    const c = Math.max(8, Math.min(28, Math.floor(width / T)));
    const bottom = 92, W = left + T * c + 110, H = top + T * c + bottom;
    const svg = el("svg", { width: W, height: H, viewBox: `0 0 ${W} ${H}`, class: "llx-map",
      "data-view": `${st.view}/${st.prompt}/${st.layer}/${st.head}` }, SVG);
    const g = el("g", {}, SVG);
    for (let t = 0; t < T; t++) {
      for (let s = 0; s < T; s++) {
        const x = left + s * c, y = top + t * c;
        if (s > t) {                  // hidden by the causal mask
          g.append(el("rect", { x, y, width: c, height: c, class: "llx-masked" }, SVG));
          continue;
        }
        const v = at(flat, t, s) / scale;
        const name = scores ? "score" : "p";
        g.append(el("rect", { x, y, width: c, height: c, fill: colour(v), class: "llx-cell",
          "data-tip": `query ${t} ${p.tokens[t]} → key ${s} ${p.tokens[s]}: ${name} = ${v.toFixed(scores ? 2 : 3)}` }, SVG));
      }
    }
    svg.append(g);
    const fs = Math.min(12, c * 0.8);
    for (let t = 0; t < T; t++) {
      svg.append(el("text", { x: left - 6, y: top + t * c + c / 2, class: "llx-tick", "text-anchor": "end",
        "dominant-baseline": "middle", "font-size": fs }, SVG, p.tokens[t]));
      const x = left + t * c + c / 2, y = top + T * c + 6;
      svg.append(el("text", { x, y, class: "llx-tick", "text-anchor": "end", "dominant-baseline": "middle",
        "font-size": fs, transform: `rotate(-60 ${x} ${y})` }, SVG, p.tokens[t]));
    }
    svg.append(el("text", { x: left + (T * c) / 2, y: H - 4, class: "llx-axis", "text-anchor": "middle" }, SVG,
      "key (the token attended to)"));
    svg.append(el("text", { x: 12, y: top + (T * c) / 2, class: "llx-axis", "text-anchor": "middle",
      transform: `rotate(-90 12 ${top + (T * c) / 2})` }, SVG, "query"));
    legend(svg, left + T * c + 24, top, Math.min(T * c, 220), scores ? -big : 0, scores ? big : 1,
      scores ? RDBU : VIRIDIS);
    const [bos, prev, self, ent] = p.stats[st.layer][st.head];
    caption.textContent = `${m.label} · layer ${st.layer}, head ${st.head} (kv head ` +
      `${Math.floor(st.head / (m.n_heads / m.n_kv_heads))}) · type ${p.types[st.layer][st.head]} (mass on bos ` +
      `${bos.toFixed(3)}, prev ${prev.toFixed(3)}, self ${self.toFixed(3)}; entropy ${ent.toFixed(3)})`;
    return svg;
  }

  function legend(svg, x, y, h, lo, hi, stops) {
    const n = 24, step = h / n;
    for (let i = 0; i < n; i++) {
      svg.append(el("rect", { x, y: y + i * step, width: 14, height: step + 0.5,
        fill: ramp(stops, 1 - (i + 0.5) / n) }, SVG));
    }
    const fmt = (v) => (Math.abs(v) < 10 ? v.toFixed(2) : v.toFixed(0));
    svg.append(el("text", { x: x + 20, y: y + 8, class: "llx-tick" }, SVG, fmt(hi)));
    svg.append(el("text", { x: x + 20, y: y + h, class: "llx-tick" }, SVG, fmt(lo)));
  }

  function types() {
    const p = prompt(), m = model(), L = m.n_layers, Hn = m.n_heads;
    const cw = Math.max(34, Math.min(64, Math.floor(((figure.clientWidth || 900) - 200) / Hn)));
    const ch = Math.max(16, Math.min(30, Math.floor(560 / L))), left = 70, top = 24;
    const W = left + Hn * cw + 150, H = top + L * ch + 10;
    const svg = el("svg", { width: W, height: H, viewBox: `0 0 ${W} ${H}`, class: "llx-map",
      "data-view": `types/${st.prompt}/${st.layer}/${st.head}` }, SVG);
    for (let h = 0; h < Hn; h++) {
      svg.append(el("text", { x: left + h * cw + cw / 2, y: top - 8, class: "llx-tick", "text-anchor": "middle" },
        SVG, `h${h}`));
    }
    for (let i = 0; i < L; i++) {
      svg.append(el("text", { x: left - 8, y: top + i * ch + ch / 2, class: "llx-tick", "text-anchor": "end",
        "dominant-baseline": "middle" }, SVG, `layer ${i}`));
      for (let h = 0; h < Hn; h++) {
        const kind = p.types[i][h], [bos, prev, self, ent] = p.stats[i][h];
        const chosen = i === st.layer && h === st.head;
        const r = el("rect", { x: left + h * cw + 1, y: top + i * ch + 1, width: cw - 2, height: ch - 2,
          fill: TYPE_COLOURS[kind] || "#ccc", class: chosen ? "llx-cell llx-chosen" : "llx-cell",
          "data-layer": i, "data-head": h,
          "data-tip": `layer ${i}, head ${h}: ${kind} · bos ${bos.toFixed(3)} · prev ${prev.toFixed(3)} · ` +
            `self ${self.toFixed(3)} · entropy ${ent.toFixed(3)} (click to open)` }, SVG);
        svg.append(r);
        if (cw >= 40 && ch >= 16) {
          svg.append(el("text", { x: left + h * cw + cw / 2, y: top + i * ch + ch / 2, class: "llx-label",
            "text-anchor": "middle", "dominant-baseline": "middle", "pointer-events": "none" }, SVG, kind));
        }
      }
    }
    Object.entries(TYPE_COLOURS).forEach(([k, col], j) => {
      const x = left + Hn * cw + 20, y = top + j * 20;
      svg.append(el("rect", { x, y, width: 14, height: 14, fill: col }, SVG));
      svg.append(el("text", { x: x + 20, y: y + 11, class: "llx-tick" }, SVG, k));
    });
    caption.textContent = `${m.label} · every head on this prompt, named by head_types (mass > 0.5 on bos / prev / ` +
      `self, or normalised entropy > 0.8 = spread); selected: layer ${st.layer}, head ${st.head}`;
    return svg;
  }

  function draw() {
    sync();
    figure.replaceChildren(st.view === "types" ? types() : heatmap());
    tip.hidden = true;
  }

  modelSel.addEventListener("change", () => { setModel(Number(modelSel.value)); draw(); });
  promptSel.addEventListener("change", () => { st.prompt = Number(promptSel.value); draw(); });
  layerIn.addEventListener("input", () => { st.layer = Number(layerIn.value); draw(); });
  headIn.addEventListener("input", () => { st.head = Number(headIn.value); draw(); });
  viewSel.addEventListener("change", () => { st.view = viewSel.value; draw(); });
  figure.addEventListener("mousemove", showTip);
  figure.addEventListener("mouseleave", () => { tip.hidden = true; });
  figure.addEventListener("click", (ev) => {
    const cell = ev.target.closest("[data-layer]");
    if (!cell) return;
    st.layer = Number(cell.getAttribute("data-layer"));
    st.head = Number(cell.getAttribute("data-head"));
    st.view = "probs";
    draw();
  });
  if (data.models.length < 2) modelSel.closest("label").style.display = "none";   // one model: nothing to pick
  setModel(0);
  draw();
  root.setAttribute("data-ready", "");
}

export async function mountAll(doc = document) {
  const roots = [...doc.querySelectorAll("[data-llama3-explorer]")];
  if (!roots.length) return;
  let data;
  try {
    const r = await fetch(DATA_URL);
    if (!r.ok) throw new Error(`HTTP ${r.status}`);
    data = await r.json();
  } catch (e) {
    for (const root of roots) {
      root.textContent = `The explorer's data (${DATA_URL}) did not load: ${e.message}. ` +
        "Open the site through a web server, e.g. python -m http.server -d _build/site.";
    }
    return;
  }
  for (const root of roots) mount(root, data);
}

mountAll();
