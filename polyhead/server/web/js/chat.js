// Chat: streaming replies from /v1/chat/completions, with the sampling settings, a stop button, each
// reply's time to first token and tokens/s, copy and regenerate, and an optional JSON schema.
import { explain, streamJSON } from "./api.js";

const $ = (id) => document.getElementById(id);
const NUMBER_FIELDS = [ // [body field, label, step]
  ["temperature", "temperature", "0.05"], ["top_p", "top p", "0.05"], ["top_k", "top k", "1"],
  ["min_p", "min p", "0.01"], ["max_tokens", "max tokens", "1"], ["seed", "seed", "1"],
  ["presence_penalty", "presence penalty", "0.1"], ["frequency_penalty", "frequency penalty", "0.1"],
  ["repetition_penalty", "repetition penalty", "0.05"],
];

export function setUpChat(tell) {
  const messages = []; // {role, content}: the conversation sent with each request
  let server = null;
  let running = null; // the AbortController of the reply being streamed

  buildSamplingFields();
  $("chat-model").addEventListener("change", () => showDefaults(server));

  const input = $("chat-input");
  input.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      $("chat-form").requestSubmit();
    }
  });
  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape" && running) running.abort();
  });
  $("chat-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const text = input.value.trim();
    if (!text || running) return;
    input.value = "";
    messages.push({ role: "user", content: text });
    addMessage("user", text);
    reply();
  });
  $("chat-stop-button").addEventListener("click", () => running?.abort());
  $("chat-clear").addEventListener("click", () => {
    running?.abort();
    messages.length = 0;
    $("transcript").replaceChildren();
    input.focus();
  });

  async function reply() {
    let body;
    try {
      body = requestBody(messages);
    } catch (err) {
      $("schema-error").textContent = err.message;
      $("chat-settings").open = true;
      $("chat-schema").focus();
      messages.pop();
      $("transcript").lastElementChild?.remove();
      return;
    }
    $("schema-error").textContent = "";
    const view = addMessage("assistant", "");
    view.article.setAttribute("aria-busy", "true");
    running = new AbortController();
    setRunning(true);
    const sentAt = performance.now();
    let firstAt = null;
    let text = "";
    let numTokens = null;
    try {
      for await (const chunk of streamJSON("v1/chat/completions", body, running.signal)) {
        const delta = chunk.choices?.[0]?.delta?.content;
        if (delta) {
          firstAt ??= performance.now();
          text += delta;
          view.content.textContent = text;
          $("transcript").scrollTop = $("transcript").scrollHeight;
        }
        if (chunk.usage) numTokens = chunk.usage.completion_tokens;
      }
      messages.push({ role: "assistant", content: text });
      view.meta.textContent = replyFigures(sentAt, firstAt, performance.now(), numTokens);
      addReplyButtons(view, text);
      tell("", "info");
    } catch (err) {
      view.meta.textContent = explain(err);
      view.article.classList.add("failed");
      if (err.name !== "AbortError") tell(explain(err));
      if (text) messages.push({ role: "assistant", content: text }); // what arrived stays in the conversation
      addReplyButtons(view, text);
    } finally {
      view.article.setAttribute("aria-busy", "false");
      running = null;
      setRunning(false);
      input.focus();
    }
  }

  function addReplyButtons(view, text) {
    const copy = button("Copy", async () => {
      try {
        await navigator.clipboard.writeText(text);
        copy.textContent = "Copied";
      } catch {
        copy.textContent = "Copy failed";
      }
    });
    const regenerate = button("Regenerate", () => {
      if (running) return;
      if (messages.at(-1)?.role === "assistant") messages.pop(); // the user's message before it is asked again
      view.article.remove();
      reply();
    });
    view.actions.replaceChildren(copy, regenerate);
  }

  function requestBody(history) {
    const body = { model: $("chat-model").value, messages: [], stream: true,
                   stream_options: { include_usage: true } };
    const system = $("chat-system").value.trim();
    if (system) body.messages.push({ role: "system", content: system });
    body.messages.push(...history);
    for (const [name] of NUMBER_FIELDS) {
      const value = $(`chat-${name}`).value.trim();
      if (value !== "") body[name] = Number(value);
    }
    if ($("chat-ignore-eos").checked) body.ignore_eos = true;
    const stops = $("chat-stop").value.split("\n").filter((s) => s !== "");
    if (stops.length) body.stop = stops;
    const schema = $("chat-schema").value.trim();
    if (schema) {
      let parsed;
      try {
        parsed = JSON.parse(schema);
      } catch (err) {
        throw new Error(`The JSON schema is not valid JSON: ${err.message}`);
      }
      body.response_format = { type: "json_schema", json_schema: { name: "schema", schema: parsed, strict: true } };
    }
    return body;
  }

  function setRunning(isRunning) {
    $("chat-send").disabled = isRunning;
    $("chat-stop-button").disabled = !isRunning;
  }

  function showDefaults(current) {
    if (!current) return;
    const defaults = { ...current.config.sampling_defaults,
                       ...(current.config.task_sampling[$("chat-model").value] || {}) };
    for (const [name] of NUMBER_FIELDS) {
      const shown = defaults[name] ?? (name === "seed" ? "random" : "");
      $(`chat-${name}`).placeholder = String(shown);
      $(`chat-${name}-default`).textContent = `default ${shown}`;
    }
  }

  return {
    show(loaded) {
      server = loaded;
      const select = $("chat-model");
      const previous = select.value;
      select.replaceChildren(...modelGroups(loaded));
      if ([...select.options].some((o) => o.value === previous)) select.value = previous;
      showDefaults(loaded);
    },
  };
}

// The <optgroup>s of the model picker: generative backbones, generate tasks, LoRA adapters.
function modelGroups({ config, models, tasks }) {
  const generateTasks = new Set(tasks.filter((t) => t.kind === "generate").map((t) => t.id));
  const embedTasks = new Set(tasks.filter((t) => t.kind === "embed").map((t) => t.id));
  const groups = { Backbones: [], "Generate tasks": [], Adapters: [] };
  for (const model of models) {
    if (embedTasks.has(model.id) || config.backbones[model.id]?.generative === false) continue;
    const group = model.parent ? "Adapters" : generateTasks.has(model.id) ? "Generate tasks" : "Backbones";
    const option = new Option(model.parent ? `${model.id} (adapter on ${model.parent})` : model.id, model.id);
    groups[group].push(option);
  }
  return Object.entries(groups).filter(([, options]) => options.length).map(([label, options]) => {
    const group = document.createElement("optgroup");
    group.label = label;
    group.append(...options);
    return group;
  });
}

function buildSamplingFields() {
  const fields = $("sampling-fields");
  for (const [name, label, step] of NUMBER_FIELDS) {
    const wrapper = document.createElement("div");
    wrapper.innerHTML = `<label for="chat-${name}">${label}</label>
      <input id="chat-${name}" type="number" step="${step}" inputmode="decimal"
             aria-describedby="chat-${name}-default"><span class="note" id="chat-${name}-default"></span>`;
    fields.append(wrapper);
  }
}

function addMessage(role, text) {
  const article = document.createElement("article");
  article.className = `message ${role}`;
  article.innerHTML = `<h3 class="who"></h3><div class="content"></div><p class="meta note"></p>
    <div class="actions"></div>`;
  article.querySelector(".who").textContent = role === "user" ? "You" : "Assistant";
  const content = article.querySelector(".content");
  content.textContent = text;
  $("transcript").append(article);
  article.scrollIntoView({ block: "end" });
  return { article, content, meta: article.querySelector(".meta"), actions: article.querySelector(".actions") };
}

function replyFigures(sentAt, firstAt, endAt, numTokens) {
  if (firstAt === null) return "no tokens";
  const ttft = `TTFT ${Math.round(firstAt - sentAt)} ms`;
  if (!numTokens) return ttft;
  const seconds = (endAt - firstAt) / 1000;
  const rate = numTokens > 1 && seconds > 0 ? `${((numTokens - 1) / seconds).toFixed(1)} tokens/s` : "";
  return [`${numTokens} tokens`, ttft, rate].filter(Boolean).join(" · ");
}

function button(label, onClick) {
  const element = document.createElement("button");
  element.type = "button";
  element.textContent = label;
  element.addEventListener("click", onClick);
  return element;
}
