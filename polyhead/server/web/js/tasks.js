// Tasks: one text through several tasks at once (classify as probability bars, all classify tasks
// fanned out in one /v1/classify request; tag as highlighted spans), and embeddings of several texts
// as a cosine-similarity heatmap.
import { explain, postJSON } from "./api.js";

const $ = (id) => document.getElementById(id);

export function setUpTasks(tell) {
  let tasks = [];

  $("tasks-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const text = $("tasks-input").value;
    const chosen = [...document.querySelectorAll("#tasks-list input:checked")].map((box) => box.value);
    const classify = tasks.filter((t) => t.kind === "classify" && chosen.includes(t.id)).map((t) => t.id);
    const tag = tasks.filter((t) => t.kind === "tag" && chosen.includes(t.id)).map((t) => t.id);
    const results = $("tasks-results");
    if (!classify.length && !tag.length) {
      results.textContent = "Pick at least one task.";
      return;
    }
    results.setAttribute("aria-busy", "true");
    $("tasks-run").disabled = true;
    try {
      const requests = [];
      if (classify.length) requests.push(postJSON("v1/classify", { tasks: classify, input: text }));
      for (const name of tag) requests.push(postJSON("v1/tag", { task: name, input: text }));
      const answers = await Promise.all(requests);
      const views = [];
      if (classify.length) views.push(...answers.shift().data.map(classifyView));
      answers.forEach((answer, i) => views.push(tagView(tag[i], text, answer.data[0].entities)));
      results.replaceChildren(...views);
      tell("", "info");
    } catch (err) {
      results.textContent = explain(err);
      tell(explain(err));
    } finally {
      results.setAttribute("aria-busy", "false");
      $("tasks-run").disabled = false;
    }
  });

  $("embed-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const texts = $("embed-input").value.split("\n").map((s) => s.trim()).filter(Boolean);
    const results = $("embed-results");
    results.setAttribute("aria-busy", "true");
    try {
      const answer = await postJSON("v1/embeddings", { model: $("embed-model").value, input: texts });
      const vectors = answer.data.sort((a, b) => a.index - b.index).map((d) => d.embedding);
      results.replaceChildren(heatmap(texts, vectors));
      tell("", "info");
    } catch (err) {
      results.textContent = explain(err);
      tell(explain(err));
    } finally {
      results.setAttribute("aria-busy", "false");
    }
  });

  return {
    show(loaded) {
      tasks = loaded.tasks;
      const list = $("tasks-list");
      const legend = list.querySelector("legend");
      const boxes = tasks.filter((t) => t.kind === "classify" || t.kind === "tag").map((task) => {
        const label = document.createElement("label");
        label.className = "check";
        label.innerHTML = `<input type="checkbox" checked> <span></span>`;
        label.querySelector("input").value = task.id;
        label.querySelector("span").textContent = `${task.id} (${task.kind}${task.zero_shot ? ", zero-shot" : ""}, `
          + `${task.backbone})`;
        return label;
      });
      list.replaceChildren(legend, ...(boxes.length ? boxes : [note("No classify or tag tasks: start the "
        + "server with --tasks.")]));
      // embeddings: the embed tasks, then every backbone by name (its default pooling)
      const names = [...tasks.filter((t) => t.kind === "embed").map((t) => t.id), ...Object.keys(loaded.config.backbones)];
      $("embed-model").replaceChildren(...names.map((name) => new Option(name, name)));
    },
  };
}

// One classify answer: a bar per label, in the task's own label order.
function classifyView(answer) {
  const figure = document.createElement("figure");
  figure.className = "classify";
  figure.dataset.task = answer.task;
  const caption = document.createElement("figcaption");
  caption.textContent = `${answer.task}: ${answer.label} (${percent(answer.score)})`;
  const list = document.createElement("ul");
  list.className = "bars";
  list.setAttribute("aria-label", `${answer.task} label probabilities`);
  answer.labels.forEach((label, i) => {
    const item = document.createElement("li");
    item.dataset.label = label;
    item.dataset.prob = String(answer.probs[i]);
    item.innerHTML = `<span class="label"></span><span class="track"><span class="fill"></span></span>
      <span class="value"></span>`;
    item.querySelector(".label").textContent = label;
    item.querySelector(".fill").style.width = percent(answer.probs[i]);
    item.querySelector(".value").textContent = percent(answer.probs[i]);
    item.classList.toggle("best", label === answer.label);
    list.append(item);
  });
  figure.append(caption, list);
  return figure;
}

// One tag answer: the text with each entity span marked, its label and score beside it.
function tagView(task, text, entities) {
  const figure = document.createElement("figure");
  figure.className = "tag";
  figure.dataset.task = task;
  const caption = document.createElement("figcaption");
  caption.textContent = `${task}: ${entities.length} span${entities.length === 1 ? "" : "s"}`;
  const body = document.createElement("p");
  body.className = "tagged";
  let at = 0;
  for (const entity of [...entities].sort((a, b) => a.start - b.start)) {
    if (entity.start < at) continue; // overlapping spans do not come from BIO tags; skip any defensively
    body.append(text.slice(at, entity.start));
    const mark = document.createElement("mark");
    mark.dataset.label = entity.label;
    mark.dataset.score = String(entity.score);
    mark.className = `entity hue-${hue(entity.label)}`;
    mark.textContent = text.slice(entity.start, entity.end);
    const badge = document.createElement("span");
    badge.className = "badge";
    badge.textContent = `${entity.label} ${entity.score.toFixed(2)}`;
    mark.append(badge);
    body.append(mark);
    at = entity.end;
  }
  body.append(text.slice(at));
  figure.append(caption, body);
  return figure;
}

// Cosine similarity of every pair of texts, as a table whose cells are shaded by the value.
function heatmap(texts, vectors) {
  const norms = vectors.map((v) => Math.hypot(...v) || 1);
  const table = document.createElement("table");
  table.className = "heatmap";
  const caption = table.createCaption();
  caption.textContent = "Cosine similarity";
  const head = table.createTHead().insertRow();
  head.append(document.createElement("td"));
  texts.forEach((_, j) => head.append(cell("th", `#${j + 1}`, "col")));
  const body = table.createTBody();
  texts.forEach((text, i) => {
    const row = body.insertRow();
    row.append(cell("th", `#${i + 1} ${text}`, "row"));
    texts.forEach((_, j) => {
      const similarity = dot(vectors[i], vectors[j]) / (norms[i] * norms[j]);
      const td = cell("td", similarity.toFixed(2));
      td.dataset.similarity = String(similarity);
      td.style.setProperty("--shade", String(Math.max(0, similarity)));
      row.append(td);
    });
  });
  return table;
}

function cell(tag, text, scope) {
  const element = document.createElement(tag);
  element.textContent = text;
  if (scope) element.scope = scope;
  return element;
}

function dot(a, b) {
  let sum = 0;
  for (let i = 0; i < a.length; i++) sum += a[i] * b[i];
  return sum;
}

function hue(label) {
  let sum = 0;
  for (const ch of label) sum += ch.charCodeAt(0);
  return sum % 6;
}

function percent(p) {
  return `${(100 * p).toFixed(1)}%`;
}

function note(text) {
  const p = document.createElement("p");
  p.className = "note";
  p.textContent = text;
  return p;
}
