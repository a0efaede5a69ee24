// The live dashboard: GET /stats once a second, charted per backbone with uPlot (vendored, MIT).
import uPlot from "../vendor/uPlot.esm.js";
import { explain, getJSON } from "./api.js";

const POLL_MS = 1000;
const HISTORY = 120; // points kept per chart: two minutes at one a second
const ROW_KINDS = ["generate", "classify", "tag", "embed", "score"];
const COLORS = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2"];

// Per backbone, the charts and what each series reads from the backbone's figures.
const CHARTS = [
  { title: "tokens/s (computed: prefill + decode)", series: [["tokens/s", (b) => b.tokens_per_s]] },
  { title: "requests", series: [["running", (b) => b.running], ["waiting", (b) => b.waiting]] },
  { title: "KV cache and prefix cache", range: [0, 1],
    series: [["KV cache use", (b) => b.kv_cache_usage], ["prefix-hit rate", (b) => b.prefix_hit_rate]] },
  { title: "rows per step, by kind", series: ROW_KINDS.map((kind) => [kind, (b) => b.rows_per_step[kind]]) },
  { title: "share of mixed steps (generate + pooling rows)", range: [0, 1],
    series: [["mixed steps", (b) => b.mixed_step_share]] },
];
const CARD_FIGURES = [ // [figure, label, format]
  ["status", "engine", (v) => v], ["tokens_per_s", "tokens/s", (v) => v.toFixed(1)],
  ["running", "running", String], ["waiting", "waiting", String],
  ["kv_cache_usage", "KV cache", percent], ["prefix_hit_rate", "prefix hits", percent],
  ["mixed_step_share", "mixed steps", percent], ["restarts", "restarts", String],
];

export function setUpDashboard(tell) {
  const panel = document.getElementById("view-dashboard");
  const boards = new Map(); // backbone -> {card, charts: [{plot, data}]}
  let isWarning = false; // the notice line is ours: clear it once the engines are well again

  new ResizeObserver(() => {
    for (const board of boards.values()) for (const chart of board.charts) fit(chart.plot);
  }).observe(panel);

  async function poll() {
    try {
      const stats = await getJSON("stats");
      const now = Date.now() / 1000;
      for (const [name, figures] of Object.entries(stats.backbones)) {
        if (!boards.has(name)) boards.set(name, createBoard(name));
        updateBoard(boards.get(name), figures, now);
      }
      updateLatency(stats.tasks);
      const unwell = Object.entries(stats.backbones).filter(([, b]) => b.status !== "running");
      if (unwell.length) {
        tell(unwell.map(([name, b]) => b.status === "restarting"
          ? `The engine of ${name} is restarting: requests wait for it.`
          : `The engine of ${name} is not running.`).join(" "), "warn");
        isWarning = true;
      } else if (isWarning) {
        tell("", "info");
        isWarning = false;
      }
    } catch (err) {
      tell(`The dashboard lost the server: ${explain(err)}`, "warn");
      isWarning = true;
    } finally {
      setTimeout(poll, POLL_MS);
    }
  }
  poll();
}

function createBoard(name) {
  const section = document.createElement("section");
  section.className = "board";
  section.dataset.backbone = name;
  section.setAttribute("aria-label", `backbone ${name}`);
  const heading = document.createElement("h2");
  heading.textContent = `backbone ${name}`;
  const card = document.createElement("dl");
  card.className = "figures";
  for (const [figure, label] of CARD_FIGURES) {
    const term = document.createElement("dt");
    term.textContent = label;
    const value = document.createElement("dd");
    value.dataset.figure = figure;
    card.append(term, value);
  }
  const grid = document.createElement("div");
  grid.className = "chart-grid";
  const charts = CHARTS.map((spec) => {
    const holder = document.createElement("div");
    holder.className = "chart";
    holder.setAttribute("role", "img");
    holder.setAttribute("aria-label", `${spec.title}, backbone ${name}`);
    grid.append(holder);
    const data = [[], ...spec.series.map(() => [])];
    const plot = new uPlot({
      width: 320, height: 160, title: spec.title, legend: { live: false },
      scales: { x: { time: true }, y: spec.range ? { range: spec.range } : { range: (u, min, max) => [0, Math.max(1, max)] } },
      series: [{}, ...spec.series.map(([label], i) => ({ label, stroke: COLORS[i % COLORS.length], width: 2 }))],
      axes: [{}, { size: 48 }],
    }, data, holder);
    return { spec, plot, data, holder };
  });
  section.append(heading, card, grid);
  document.getElementById("charts").append(section);
  for (const chart of charts) fit(chart.plot);
  return { card, charts };
}

function updateBoard(board, figures, now) {
  for (const [figure, , format] of CARD_FIGURES) {
    const value = board.card.querySelector(`[data-figure="${figure}"]`);
    value.textContent = format(figures[figure]);
    value.dataset.value = String(figures[figure]);
  }
  for (const chart of board.charts) {
    chart.data[0].push(now);
    chart.spec.series.forEach(([, read], i) => chart.data[i + 1].push(read(figures)));
    if (chart.data[0].length > HISTORY) for (const column of chart.data) column.shift();
    chart.plot.setData(chart.data);
  }
}

function updateLatency(tasks) {
  const rows = Object.entries(tasks).map(([task, t]) => {
    const row = document.createElement("tr");
    row.dataset.task = task;
    const cells = [task, String(t.requests), ms(t.ttft_p50), ms(t.ttft_p99), ms(t.tpot_p50), ms(t.tpot_p99),
                   t.output_tokens_per_s.toFixed(1)];
    cells.forEach((text, i) => {
      const cell = document.createElement(i === 0 ? "th" : "td");
      if (i === 0) cell.scope = "row";
      cell.textContent = text;
      row.append(cell);
    });
    return row;
  });
  document.querySelector("#latency-table tbody").replaceChildren(...rows);
}

function fit(plot) {
  const width = plot.root.parentElement.clientWidth;
  if (width > 0 && width !== plot.width) plot.setSize({ width, height: 160 });
}

function percent(value) {
  return `${(100 * value).toFixed(0)}%`;
}

function ms(seconds) {
  return seconds === null ? "–" : `${(1000 * seconds).toFixed(0)} ms`;
}
