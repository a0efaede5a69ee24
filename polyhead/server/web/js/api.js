// Talking to the server: every URL is relative to the page, so a path prefix (--root-path) just works.
// The API key lives in this tab's sessionStorage only: never in localStorage, cookies or the URL.

const KEY_NAME = "polyhead.apiKey";

export function apiKey() {
  return sessionStorage.getItem(KEY_NAME) || "";
}

export function setApiKey(key) {
  if (key) sessionStorage.setItem(KEY_NAME, key);
  else sessionStorage.removeItem(KEY_NAME);
}

export class ApiError extends Error {
  constructor(status, error) {
    super(error?.message || `HTTP ${status}`);
    this.status = status; // 0: no HTTP status (a stream's error event, or no connection)
    this.code = error?.code || null; // OpenAI's error.code: queue_full, engine_dead, invalid_api_key...
  }
}

function headers() {
  const key = apiKey();
  return { "Content-Type": "application/json", ...(key ? { Authorization: `Bearer ${key}` } : {}) };
}

async function failure(response) {
  let body = null;
  try { body = await response.json(); } catch { /* not JSON: the status says enough */ }
  return new ApiError(response.status, body?.error);
}

export async function getJSON(path) {
  const response = await fetch(path, { headers: headers() });
  if (!response.ok) throw await failure(response);
  return response.json();
}

export async function postJSON(path, body, signal) {
  const response = await fetch(path, { method: "POST", headers: headers(), body: JSON.stringify(body), signal });
  if (!response.ok) throw await failure(response);
  return response.json();
}

// POST with stream: true; yields each server-sent event's parsed JSON until [DONE].
export async function* streamJSON(path, body, signal) {
  const response = await fetch(path, { method: "POST", headers: headers(), body: JSON.stringify(body), signal });
  if (!response.ok) throw await failure(response);
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffered = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffered += value;
    let end;
    while ((end = buffered.indexOf("\n\n")) >= 0) {
      const event = buffered.slice(0, end);
      buffered = buffered.slice(end + 2);
      for (const line of event.split("\n")) {
        if (!line.startsWith("data:")) continue;
        const data = line.slice(5).trim();
        if (data === "[DONE]") return;
        const chunk = JSON.parse(data);
        if (chunk.error) throw new ApiError(0, chunk.error);
        yield chunk;
      }
    }
  }
}

// What a person should read for an error, in plain words.
export function explain(err) {
  if (err.name === "AbortError") return "Stopped.";
  if (!(err instanceof ApiError)) return `Could not reach the server: ${err.message}`;
  if (err.status === 401) return "The server wants an API key: type it in the API key field above and press Use key.";
  if (err.status === 429) return `The queue is full (429): the server is busy, retry in a moment. (${err.message})`;
  if (err.code === "engine_dead" || err.code === "engine_restarted" || err.status === 503) {
    return `The engine is restarting or unavailable: retry in a moment. (${err.message})`;
  }
  if (err.status === 408 || err.code === "timeout") return `The request ran past its deadline. (${err.message})`;
  return err.status ? `Error ${err.status}: ${err.message}` : `Error: ${err.message}`;
}
