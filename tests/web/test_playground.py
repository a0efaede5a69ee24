"""The playground in chromium against a live multi-task server on tiny random models: chat streams,
classify bars, tag spans, the embeddings heatmap, the dashboard under load, errors said plainly,
a narrow window. The text the random models write means nothing; what is checked is that the page
shows exactly what the API answered, as it arrives."""

import json
import threading

import httpx
import pytest

from tests.server.task_fixtures import TAGS
from tests.web.conftest import open_page, screenshot

TEXT = "Anna met Bob in Paris and Rome."


def test_chat_streams_tokens_incrementally_keyboard_only(page, task_server, tmp_path):
    url, _ = task_server
    open_page(page, url)
    page.fill("#chat-max_tokens", "48")
    page.check("#chat-ignore-eos")
    page.focus("#chat-input")
    page.evaluate("""() => {
        window.lengths = [];
        new MutationObserver(() => {
            const replies = document.querySelectorAll('.message.assistant .content');
            if (replies.length) window.lengths.push(replies[replies.length - 1].textContent.length);
        }).observe(document.getElementById('transcript'), {subtree: true, childList: true, characterData: true});
    }""")
    page.keyboard.type("Hello there")
    page.keyboard.press("Enter")
    page.wait_for_selector(".message.assistant .actions button")
    lengths = page.evaluate("window.lengths")
    growing = sorted({n for n in lengths if n > 0})
    assert len(growing) >= 3, f"the reply arrived in fewer than 3 pieces: {lengths}"
    assert lengths == sorted(lengths)  # it only ever grew
    meta = page.text_content(".message.assistant .meta")
    assert "48 tokens" in meta and "TTFT" in meta and "tokens/s" in meta
    assert page.evaluate("document.activeElement.id") == "chat-input"  # ready for the next message
    page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    page.click("text=Copy")
    page.wait_for_selector("text=Copied")
    assert page.evaluate("navigator.clipboard.readText()") == page.text_content(".message.assistant .content")
    screenshot(page, tmp_path, "chat")


def test_a_schema_goes_out_as_response_format_and_bad_json_is_refused(page, task_server):
    url, _ = task_server
    open_page(page, url)
    page.fill("#chat-max_tokens", "3")
    page.fill("#chat-schema", "{not json")
    page.fill("#chat-input", "hi")
    page.press("#chat-input", "Enter")
    assert "not valid JSON" in page.text_content("#schema-error")
    assert page.locator(".message").count() == 0  # nothing was sent
    schema = {"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"]}
    page.fill("#chat-schema", json.dumps(schema))
    page.fill("#chat-input", "hi")
    with page.expect_request("**/v1/chat/completions") as sent:
        page.press("#chat-input", "Enter")
    body = json.loads(sent.value.post_data)
    assert body["response_format"] == {"type": "json_schema",
                                       "json_schema": {"name": "schema", "schema": schema, "strict": True}}
    assert body["max_tokens"] == 3 and body["stream"] is True and body["messages"][-1] == {"role": "user",
                                                                                           "content": "hi"}
    page.wait_for_selector(".message.assistant .actions button")
    assert page.text_content("#schema-error") == ""


def test_regenerate_replaces_the_reply_and_a_task_shows_its_defaults(page, task_server):
    url, _ = task_server
    open_page(page, url)
    page.select_option("#chat-model", "shout")  # a generate task: its sampling defaults are the placeholders
    assert page.get_attribute("#chat-max_tokens", "placeholder") == "5"
    assert page.text_content("#chat-temperature-default") == "default 0"
    page.fill("#chat-input", "abc")
    page.press("#chat-input", "Enter")
    page.wait_for_selector(".message.assistant .actions button")
    first = page.text_content(".message.assistant .content")
    page.click("text=Regenerate")
    page.wait_for_selector(".message.assistant .actions button")
    assert page.locator(".message.assistant").count() == 1 and page.locator(".message.user").count() == 1
    assert page.text_content(".message.assistant .content") == first  # temperature 0: the same reply again


def test_classify_bars_and_tag_spans_show_what_the_api_answers(page, task_server, tmp_path):
    url, _ = task_server
    classify = httpx.post(f"{url}/v1/classify", json={"tasks": ["sentiment", "yesno"], "input": TEXT},
                          timeout=60).json()["data"]
    entities = httpx.post(f"{url}/v1/tag", json={"task": "ner", "input": TEXT}, timeout=60).json()["data"][0]
    assert entities["entities"], "the tiny tag head is scaled to be confident: it should find spans"
    open_page(page, f"{url}/#tasks")
    page.fill("#tasks-input", TEXT)
    with page.expect_request("**/v1/classify") as sent:
        page.click("#tasks-run")
    assert json.loads(sent.value.post_data)["tasks"] == ["sentiment", "yesno"]  # fan-out: one request
    page.wait_for_selector("figure.tag")
    for answer in classify:
        bars = page.locator(f'figure.classify[data-task="{answer["task"]}"] li')
        shown = {bars.nth(i).get_attribute("data-label"): float(bars.nth(i).get_attribute("data-prob"))
                 for i in range(bars.count())}
        # the same text in another batch: equal up to float32 rounding
        assert shown == pytest.approx(dict(zip(answer["labels"], answer["probs"])), abs=1e-5)
        best = page.locator(f'figure.classify[data-task="{answer["task"]}"] li.best')
        assert best.get_attribute("data-label") == answer["label"] == max(shown, key=shown.get)
        width = best.locator(".fill").evaluate("e => e.style.width")
        assert width == f"{100 * shown[answer['label']]:.1f}%"
    marks = page.locator("figure.tag mark.entity")
    assert marks.count() == len(entities["entities"])
    for i, entity in enumerate(entities["entities"]):
        assert marks.nth(i).get_attribute("data-label") == entity["label"] in {t[2:] for t in TAGS if t != "O"}
        assert marks.nth(i).evaluate("e => e.firstChild.textContent") == entity["text"]
    # the marked text, read back without its badges, is the input itself
    assert page.locator("figure.tag .tagged").evaluate(
        "e => { const c = e.cloneNode(true); c.querySelectorAll('.badge').forEach(b => b.remove());"
        " return c.textContent; }") == TEXT
    screenshot(page, tmp_path, "tasks")


def test_embeddings_heatmap_is_the_cosine_matrix(page, task_server):
    url, _ = task_server
    texts = ["the cat sat", "a dog runs", "hello world"]
    open_page(page, f"{url}/#tasks")
    page.select_option("#embed-model", "embed")
    page.fill("#embed-input", "\n".join(texts))
    page.click("#embed-run")
    page.wait_for_selector("table.heatmap")
    vectors = [d["embedding"] for d in httpx.post(f"{url}/v1/embeddings", json={"model": "embed", "input": texts},
                                                  timeout=60).json()["data"]]
    cells = page.locator("table.heatmap tbody td")
    assert cells.count() == 9
    for i in range(3):
        for j in range(3):
            expected = sum(a * b for a, b in zip(vectors[i], vectors[j]))  # normalized: the dot is the cosine
            assert abs(float(cells.nth(3 * i + j).get_attribute("data-similarity")) - expected) < 1e-4


def test_dashboard_tokens_per_second_rise_while_a_load_runs(page, task_server, tmp_path):
    url, _ = task_server
    open_page(page, f"{url}/#dashboard")
    page.wait_for_selector('[data-backbone="tiny"] [data-figure="status"]:text("running")')
    stop = threading.Event()

    def load():
        with httpx.Client(timeout=60) as client:
            while not stop.is_set():
                client.post(f"{url}/v1/chat/completions", json={
                    "model": "tiny", "messages": [{"role": "user", "content": "load"}], "max_tokens": 24,
                    "ignore_eos": True})
                client.post(f"{url}/v1/classify", json={"tasks": ["sentiment"], "input": "fine"})

    threads = [threading.Thread(target=load) for _ in range(2)]
    for thread in threads:
        thread.start()
    try:
        page.wait_for_function("""() => {
            const figure = document.querySelector('[data-backbone="tiny"] [data-figure="tokens_per_s"]');
            return figure && Number(figure.dataset.value) > 0;
        }""")
        page.wait_for_selector('#latency-table tr[data-task="chat"]')
        assert page.locator('[data-backbone="tiny"] .chart canvas').count() == 5
        page.wait_for_timeout(2500)  # a few more points, for the screenshot's lines
        screenshot(page, tmp_path, "dashboard")
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
    running = page.locator('[data-backbone="tiny"] [data-figure="running"]').get_attribute("data-value")
    assert int(running) >= 0


def test_a_full_queue_is_said_plainly(page, task_server):
    url, app = task_server
    open_page(page, url)
    settings = app.state.server.settings
    limit, settings.max_queued_requests = settings.max_queued_requests, 0  # every new request: 429
    try:
        page.fill("#chat-input", "hi")
        page.press("#chat-input", "Enter")
        page.wait_for_selector(".message.assistant.failed")
    finally:
        settings.max_queued_requests = limit
    assert "The queue is full (429)" in page.text_content("#notice")
    assert "The queue is full (429)" in page.text_content(".message.assistant .meta")


def test_tabs_labels_and_a_narrow_window(page, task_server, tmp_path):
    url, _ = task_server
    page.set_viewport_size({"width": 390, "height": 844})
    open_page(page, url)
    unlabeled = page.evaluate("""() => [...document.querySelectorAll('input, select, textarea')]
        .filter(e => !e.labels?.length && !e.getAttribute('aria-label')).map(e => e.id)""")
    assert unlabeled == []
    assert page.get_attribute("#transcript", "aria-live") == "polite"
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")  # no sideways scrolling
    settings, conversation = page.locator(".settings").bounding_box(), page.locator(".conversation").bounding_box()
    assert conversation["y"] >= settings["y"] + settings["height"]  # one column
    assert not page.is_visible("#chat-model") and conversation["y"] < 844 / 2  # settings folded: chat comes first
    page.click("#chat-settings summary")
    assert page.is_visible("#chat-model")
    page.focus("#tab-chat")
    page.keyboard.press("ArrowRight")
    assert page.get_attribute("#tab-tasks", "aria-selected") == "true" and page.is_visible("#view-tasks")
    assert not page.is_visible("#view-chat")
    page.keyboard.press("ArrowRight")
    assert page.evaluate("document.activeElement.id") == "tab-dashboard" and page.is_visible("#view-dashboard")
    page.keyboard.press("ArrowLeft")
    page.keyboard.press("ArrowLeft")
    page.fill("#chat-input", "hi")
    page.press("#chat-input", "Enter")
    page.wait_for_selector(".message.assistant .actions button")
    screenshot(page, tmp_path, "narrow")
