// The page's wiring: views (tabs), the API key field, the notice line, and what the server serves.
import { apiKey, explain, getJSON, setApiKey } from "./api.js";
import { setUpChat } from "./chat.js";
import { setUpDashboard } from "./dashboard.js";
import { setUpTasks } from "./tasks.js";

const notice = document.getElementById("notice");

// One line that says what is wrong (or right) in plain words; screen readers hear it (role=status).
export function tell(message, kind = "error") {
  notice.textContent = message;
  notice.dataset.kind = kind;
  notice.hidden = !message;
}

function setUpTabs() {
  const tabs = [...document.querySelectorAll('[role="tab"]')];
  const select = (tab) => {
    for (const other of tabs) {
      const isSelected = other === tab;
      other.setAttribute("aria-selected", String(isSelected));
      other.tabIndex = isSelected ? 0 : -1;
      document.getElementById(other.getAttribute("aria-controls")).hidden = !isSelected;
    }
    tab.focus();
    history.replaceState(null, "", `#${tab.id.replace("tab-", "")}`);
  };
  tabs.forEach((tab, i) => {
    tab.addEventListener("click", () => select(tab));
    tab.addEventListener("keydown", (event) => { // arrow keys move between tabs, as the ARIA pattern says
      const step = { ArrowRight: 1, ArrowLeft: -1 }[event.key];
      if (step) select(tabs[(i + step + tabs.length) % tabs.length]);
    });
  });
  const fromHash = document.getElementById(`tab-${location.hash.slice(1)}`);
  if (fromHash) select(fromHash);
}

// What the server serves: the models, tasks and defaults every view builds its pickers from.
async function loadServer() {
  const config = await getJSON("web/config.json");
  const [models, tasks] = await Promise.all([getJSON("v1/models"), getJSON("v1/tasks")]);
  return { config, models: models.data, tasks: tasks.data };
}

function setUpKey(reload) {
  const form = document.getElementById("key-form");
  const field = document.getElementById("api-key");
  field.value = apiKey();
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    setApiKey(field.value.trim());
    reload();
  });
  document.getElementById("key-forget").addEventListener("click", () => {
    field.value = "";
    setApiKey("");
    reload();
  });
}

async function start() {
  setUpTabs();
  if (matchMedia("(max-width: 720px)").matches) { // a narrow window: the conversation first, settings on demand
    document.getElementById("chat-settings").open = false;
  }
  const views = {
    chat: setUpChat(tell),
    tasks: setUpTasks(tell),
  };
  setUpDashboard(tell);
  const reload = async () => {
    try {
      const server = await loadServer();
      views.chat.show(server);
      views.tasks.show(server);
      tell("", "info"); // /v1/models answered: the key, if one is needed, is right
    } catch (err) {
      tell(explain(err));
    }
  };
  setUpKey(reload);
  await reload();
  if (!document.getElementById("view-chat").hidden) document.getElementById("chat-input").focus();
  document.body.dataset.ready = "true";
}

start();
