// Sparklines on a canvas: no library, one function.

/** Draws `values` (numbers, oldest first) as a line scaled to its maximum. */
export function sparkline(canvas, values, color = "#2b6cb0") {
  const ctx = canvas.getContext("2d");
  const w = canvas.width, h = canvas.height;
  ctx.clearRect(0, 0, w, h);
  if (!values.length) return;
  const max = Math.max(1, ...values);
  const step = values.length > 1 ? w / (values.length - 1) : w;
  ctx.beginPath();
  values.forEach((v, i) => {
    const x = i * step, y = h - 2 - (v / max) * (h - 4);
    if (i === 0) ctx.moveTo(x, y); else ctx.lineTo(x, y);
  });
  ctx.strokeStyle = color;
  ctx.lineWidth = 1.5;
  ctx.stroke();
}

/** A ring of per-second counts: `add(n)` to the current second, `series()` for the chart. */
export class Buckets {
  constructor(seconds = 60) { this.seconds = seconds; this.values = new Array(seconds).fill(0); this.at = Math.floor(Date.now() / 1000); }
  roll() {
    const now = Math.floor(Date.now() / 1000);
    const steps = Math.min(this.seconds, now - this.at);
    for (let i = 0; i < steps; i++) { this.values.shift(); this.values.push(0); }
    if (steps > 0) this.at = now;
  }
  add(n = 1) { this.roll(); this.values[this.values.length - 1] += n; }
  series() { this.roll(); return this.values.slice(); }
  /** The last complete second. */
  rate() { this.roll(); return this.values[this.values.length - 2] || 0; }
}
