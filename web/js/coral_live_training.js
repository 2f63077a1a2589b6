// CoralStyleCLIP: shows training live inside the "Train Edit (Coral)" node — the loss curve and
// the current per-layer masks — from events the server streams while the node runs.
import { app } from "../../../scripts/app.js";
import { api } from "../../../scripts/api.js";

const PANEL_HEIGHT = 130;
const runs = new Map(); // node id -> { losses: [], areas: [], masks: Image, step, total }

function runFor(nodeId) {
  const key = String(nodeId);
  if (!runs.has(key)) runs.set(key, { losses: [], clip: [], masks: null, step: 0, total: 0 });
  return runs.get(key);
}

function drawPanel(node, ctx, run) {
  const w = node.size[0];
  const top = node.size[1] - PANEL_HEIGHT;
  ctx.save();
  ctx.fillStyle = "rgba(0,0,0,0.35)";
  ctx.fillRect(6, top, w - 12, PANEL_HEIGHT - 6);
  ctx.fillStyle = "#ddd";
  ctx.font = "11px sans-serif";
  const last = run.losses[run.losses.length - 1];
  ctx.fillText(`step ${run.step}/${run.total}` + (last !== undefined ? `  loss ${last.toFixed(4)}` : ""), 12, top + 14);
  const plot = { x: 12, y: top + 20, w: w - 24, h: 50 };
  const series = [[run.losses, "#ffcc00"], [run.clip, "#44aaff"]];
  const all = run.losses.concat(run.clip);
  if (all.length > 1) {
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
  if (run.masks && run.masks.complete && run.masks.naturalWidth) {
    const h = 44, scale = h / run.masks.naturalHeight;
    ctx.imageSmoothingEnabled = false;
    ctx.drawImage(run.masks, 12, top + 76, Math.min(w - 24, run.masks.naturalWidth * scale), h);
  }
  ctx.restore();
}

app.registerExtension({
  name: "CoralStyleCLIP.LiveTraining",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData.name !== "CoralTrainEdit") return;
    const onDraw = nodeType.prototype.onDrawForeground;
    nodeType.prototype.onDrawForeground = function (ctx) {
      onDraw?.apply(this, arguments);
      const run = runs.get(String(this.id));
      if (run && !this.flags?.collapsed) drawPanel(this, ctx, run);
    };
  },
  async setup() {
    try {
      const templates = await (await api.fetchApi("/workflow_templates")).json();
      const ours = Object.entries(templates).find(([pack]) => pack.includes("CoralStyleCLIP"));
      console.log(`CoralStyleCLIP: live training ready; templates: ${ours ? ours[1].join(", ") : "none"}`);
    } catch (err) {
      console.warn("CoralStyleCLIP: could not list templates", err);
    }
    api.addEventListener("coralstyleclip.train", ({ detail }) => {
      if (!detail || detail.node == null) return;
      const run = runFor(detail.node);
      if (detail.step <= 1) { run.losses = []; run.clip = []; }
      run.step = detail.step;
      run.total = detail.total;
      if (detail.losses?.total !== undefined) run.losses.push(detail.losses.total);
      if (detail.losses?.clip !== undefined) run.clip.push(detail.losses.clip);
      if (detail.masks_png) {
        const img = new Image();
        img.onload = () => app.graph?.setDirtyCanvas(true, false);
        img.src = detail.masks_png;
        run.masks = img;
      }
      const node = app.graph?.getNodeById(Number(detail.node));
      if (node && !node.__coralPanel) {
        node.__coralPanel = true;
        node.setSize([Math.max(node.size[0], 280), node.size[1] + PANEL_HEIGHT]);
      }
      app.graph?.setDirtyCanvas(true, false);
    });
    // The end of a run: keep the summary (and any "empty edit" warning) on the run, so the
    // panel can show it, and so the front end has a handler (no "Unhandled message" log).
    api.addEventListener("coralstyleclip.done", ({ detail }) => {
      if (!detail || detail.node == null) return;
      const run = runFor(detail.node);
      run.done = true;
      run.warnings = detail.summary?.warnings || [];
      for (const w of run.warnings) console.warn(`CoralStyleCLIP: ${w}`);
      app.graph?.setDirtyCanvas(true, false);
    });
  },
});
