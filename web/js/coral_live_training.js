// CoralStyleCLIP front end: the live view of "Train Edit (Coral)" and "Invert Images (Coral)"
// (loss curves, current per-layer masks, step, phase, "cancelled at step N"), and the file names
// written by the Save nodes.
//
// The live view is a DOM widget, not a drawing on the canvas: the node's layout reserves its
// height (so ComfyUI's own progress preview goes below it and nothing below is overdrawn), and
// both the classic canvas and the "Nodes 2.0" (Vue) front end show DOM widgets.
import { app } from "../../../scripts/app.js";
import { api } from "../../../scripts/api.js";

const PANEL_HEIGHT = 130;
const LIVE_VIEW_NODES = ["CoralTrainEdit", "CoralTrainEditSimple", "CoralInvert"];
const runs = new Map(); // node id -> { losses, clip, masks, step, total, done, warnings }

function runFor(nodeId) {
  const key = String(nodeId);
  if (!runs.has(key)) runs.set(key, { losses: [], clip: [], masks: null, step: 0, total: 0 });
  return runs.get(key);
}

function drawCurves(ctx, plot, run) {
  const series = [[run.losses, "#ffcc00"], [run.clip, "#44aaff"]];
  const all = run.losses.concat(run.clip);
  if (all.length < 2) return;
  const lo = Math.min(...all), hi = Math.max(...all), span = hi - lo || 1;
  for (const [values, colour] of series) {
    if (values.length < 2) continue;
    ctx.strokeStyle = colour;
    ctx.beginPath();
    values.forEach((v, i) => {
      const x = plot.x + (plot.w * i) / (values.length - 1);
      const y = plot.y + plot.h - (plot.h * (v - lo)) / span;
      i ? ctx.lineTo(x, y) : ctx.moveTo(x, y);
    });
    ctx.stroke();
  }
}

function drawPanel(node, panel, run) {
  const { canvas, element } = panel;
  element.dataset.node = String(node.id); // ids are given after onNodeCreated
  const width = Math.max(200, Math.round(element.clientWidth || 280));
  if (canvas.width !== width) canvas.width = width;
  const ctx = canvas.getContext("2d");
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  ctx.fillStyle = "rgba(0,0,0,0.35)";
  ctx.fillRect(0, 0, canvas.width, canvas.height);
  ctx.fillStyle = "#ddd";
  ctx.font = "11px sans-serif";
  const last = run.losses[run.losses.length - 1];
  let status = !run.total ? "live view: waiting for a run"
    : run.cancelled ? `cancelled at step ${run.step}/${run.total}` : `step ${run.step}/${run.total}`;
  if (last !== undefined) status += `  loss ${last.toFixed(4)}`;
  if (run.phase && !run.done && !run.cancelled) status += `  (${run.phase})`;
  if (run.done && !run.cancelled) status += run.warnings?.length ? "  done (see warning)" : "  done";
  ctx.fillText(status, 6, 14);
  drawCurves(ctx, { x: 6, y: 20, w: canvas.width - 12, h: 50 }, run);
  if (run.masks && run.masks.complete && run.masks.naturalWidth) {
    const h = 44, scale = h / run.masks.naturalHeight;
    ctx.imageSmoothingEnabled = false;
    ctx.drawImage(run.masks, 6, 76, Math.min(canvas.width - 12, run.masks.naturalWidth * scale), h);
  }
  if (run.warnings?.length) {
    ctx.fillStyle = "#ff9966";
    ctx.fillText(run.warnings[0].slice(0, 60), 6, 126);
  }
  // state for tests and for users inspecting the page
  element.dataset.step = String(run.step);
  element.dataset.total = String(run.total);
  element.dataset.points = String(run.losses.length);
  element.dataset.masks = run.masks ? "1" : "0";
  element.dataset.done = run.done ? "1" : "0";
  element.dataset.cancelled = run.cancelled ? "1" : "0";
  element.dataset.phase = run.phase || "";
  element.dataset.status = status;
}

function addPanel(node) {
  if (node.__coralPanel) return node.__coralPanel;
  const element = document.createElement("div");
  element.className = "coral-live-training";
  element.style.cssText = `width:100%;height:${PANEL_HEIGHT}px;overflow:hidden;`;
  const canvas = document.createElement("canvas");
  canvas.width = 280;
  canvas.height = PANEL_HEIGHT;
  canvas.style.cssText = `width:100%;height:${PANEL_HEIGHT}px;display:block;`;
  element.appendChild(canvas);
  const widget = node.addDOMWidget("coral_live_training", "coral_live_training", element, {
    serialize: false,
    hideOnZoom: false,
    getMinHeight: () => PANEL_HEIGHT,
    getMaxHeight: () => PANEL_HEIGHT,
    getHeight: () => PANEL_HEIGHT,
  });
  node.__coralPanel = { widget, element, canvas };
  node.setSize([Math.max(node.size[0], 280), node.computeSize()[1]]);
  drawPanel(node, node.__coralPanel, runFor(node.id));
  return node.__coralPanel;
}

function redraw(nodeId) {
  const node = app.graph?.getNodeById(Number(nodeId));
  if (!node) return;
  drawPanel(node, addPanel(node), runFor(nodeId));
}

function showNote(node, text, className = "coral-saved-name", maxHeight = 44) {
  if (!node.__coralSaved) {
    const element = document.createElement("div");
    element.className = className;
    element.style.cssText = "font:11px monospace;color:#ccc;padding:2px 4px;" +
      "white-space:pre-wrap;overflow-y:auto;";
    node.__coralSaved = node.addDOMWidget("coral_saved", "coral_saved", element, {
      serialize: false, hideOnZoom: false, getMinHeight: () => 22, getMaxHeight: () => maxHeight,
    });
    node.__coralSaved.element = element;
  }
  node.__coralSaved.element.textContent = text;
}

function addSavedName(node, names) {
  showNote(node, `saved: ${names.join(", ")}`);
}

app.registerExtension({
  name: "CoralStyleCLIP.LiveTraining",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (LIVE_VIEW_NODES.includes(nodeData.name)) {
      const onCreated = nodeType.prototype.onNodeCreated;
      nodeType.prototype.onNodeCreated = function () {
        const result = onCreated?.apply(this, arguments);
        addPanel(this);
        return result;
      };
    }
    if (nodeData.name === "CoralSaveEdit" || nodeData.name === "CoralSaveLatents") {
      const onExecuted = nodeType.prototype.onExecuted;
      nodeType.prototype.onExecuted = function (message) {
        onExecuted?.apply(this, arguments);
        if (message?.text?.length) addSavedName(this, message.text);
        // a new edit or latent file: refresh the loaders' lists without a page reload
        app.refreshComboInNodes?.();
      };
    }
    if (nodeData.name === "CoralApplyEdit") {
      // what the scene check left unchanged, and why, on the node (not only the console)
      const onExecuted = nodeType.prototype.onExecuted;
      nodeType.prototype.onExecuted = function (message) {
        onExecuted?.apply(this, arguments);
        const notes = message?.text || [];
        if (notes.length || this.__coralSaved) {
          showNote(this, notes.join("\n"), "coral-scene-notes", 66);
        }
      };
    }
  },
  async setup() {
    try {
      const templates = await (await api.fetchApi("/workflow_templates")).json();
      const ours = Object.entries(templates).find(([pack]) => pack.includes("CoralStyleCLIP"));
      console.log(`CoralStyleCLIP: live training ready; templates: ${ours ? ours[1].join(", ") : "none"}`);
    } catch (err) {
      console.warn("CoralStyleCLIP: could not list templates", err);
    }
    // A new run starts clean: the node says so (a "start" event) before its first step, so
    // after a Cancel the old run's curve, preview and "done" do not carry over.
    const reset = (run) => {
      run.losses = []; run.clip = []; run.masks = null; run.done = false; run.cancelled = false;
      run.warnings = []; run.phase = ""; run.step = 0;
    };
    api.addEventListener("coralstyleclip.start", ({ detail }) => {
      if (!detail || detail.node == null) return;
      const run = runFor(detail.node);
      reset(run);
      run.total = detail.total || 0;
      redraw(detail.node);
    });
    api.addEventListener("execution_interrupted", () => {
      for (const [node, run] of runs) {
        if (!run.done && run.total) { run.cancelled = true; redraw(node); }
      }
    });
    // Inversion reports its steps too: the node's panel (if any) shows them, and the event is
    // handled (no "Unhandled message" in the console).
    api.addEventListener("coralstyleclip.invert", ({ detail }) => {
      if (!detail || detail.node == null) return;
      const run = runFor(detail.node);
      if (detail.step < run.step || run.done || run.cancelled) reset(run);
      run.step = detail.step;
      run.total = detail.total;
      if (detail.losses?.total !== undefined) run.losses.push(detail.losses.total);
      redraw(detail.node);
    });
    api.addEventListener("coralstyleclip.train", ({ detail }) => {
      if (!detail || detail.node == null) return;
      const run = runFor(detail.node);
      if (detail.step < run.step || run.done || run.cancelled) reset(run);
      run.phase = detail.phase || "";
      if (detail.warning) run.warnings = [detail.warning];  // said before the run (a long prompt)
      run.step = detail.step;
      run.total = detail.total;
      if (detail.losses?.total !== undefined) run.losses.push(detail.losses.total);
      if (detail.losses?.clip !== undefined) run.clip.push(detail.losses.clip);
      if (detail.masks_png) {
        const img = new Image();
        img.onload = () => redraw(detail.node);
        img.src = detail.masks_png;
        run.masks = img;
      }
      redraw(detail.node);
    });
    // The end of a run: keep the summary (and any "empty edit" warning) on the panel, and give
    // the front end a handler (no "Unhandled message" log).
    api.addEventListener("coralstyleclip.done", ({ detail }) => {
      if (!detail || detail.node == null) return;
      const run = runFor(detail.node);
      run.done = true;
      run.warnings = detail.summary?.warnings || [];
      for (const w of run.warnings) console.warn(`CoralStyleCLIP: ${w}`);
      redraw(detail.node);
    });
  },
});
