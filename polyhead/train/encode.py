"""One raw row -> one tokenized Example, per task kind. Errors name the row's file and line.

Texts are tokenized as the serving engines do: without the tokenizer's specials for decoder models
(polyhead's LLM engine encodes prompts with add_special_tokens=False), with them for encoders whose
pooling needs [CLS] ... [SEP]; data.py decides per tokenizer (`uses_special_tokens`).

- classify: `text_column` (rendered through prompt_template) -> input_ids; `label_column` -> the
  label's index in `labels` (a name, or an int index in JSONL / datasets).
- tag: `tokens_column` (words) joined by single spaces is the text the model sees (as at serving
  time); each word's BIO tag goes on its first subword, other subwords and specials get -100
  (the Hugging Face token-classification convention). Word -> char spans are kept in the example.
- generate: `prompt_column` / `response_column`. With a chat template (task.chat_template, or by
  default when the tokenizer has one) the prompt is the template applied to one user message with
  the generation prompt added (the template's own system prompt included); the response is its
  tokens followed by the tokenizer's eos token (SmolLM2-Instruct: `<|im_end|>`, where the engine
  stops). labels = -100 on the prompt, the token ids on the response; labels line up with
  input_ids (the causal-LM loss shifts them by one, as Hugging Face models do). An example longer
  than max_length loses prompt tokens from the left first, then response tokens from the right.
- embed: (`text_column`, `positive_column`) pairs, each side tokenized to max_length.
"""

from dataclasses import dataclass, field

from polyhead.train.config import TaskConfig
from polyhead.train.readers import DataError

IGNORE_INDEX = -100  # labels at this value carry no loss (torch cross_entropy's ignore_index)


@dataclass
class Example:
    input_ids: list[int]  # [T] token ids, T <= max_length
    labels: int | list[int] | None = None  # classify: label index; tag / generate: [T] ids or -100; embed: None
    positive_ids: list[int] | None = None  # embed: the positive text's token ids
    word_spans: list[tuple[int, int]] = field(default_factory=list)  # tag: (start, end) char span per word
    word_ids: list[int] = field(default_factory=list)  # tag: [T] word index per token, -1 = none


def encode_row(task: TaskConfig, tokenizer, row: dict, where: str, add_special_tokens: bool = False) -> Example:
    """add_special_tokens: whether the tokenizer's own specials (BOS, or BERT's [CLS] ... [SEP]) wrap
    the text; it must match how the serving engine tokenizes (data.py picks it per tokenizer)."""
    if task.kind == "classify":
        return _encode_classify(task, tokenizer, row, where, add_special_tokens)
    if task.kind == "tag":
        return _encode_tag(task, tokenizer, row, where, add_special_tokens)
    if task.kind == "generate":
        return _encode_generate(task, tokenizer, row, where, add_special_tokens)
    return _encode_embed(task, tokenizer, row, where, add_special_tokens)


def _text(row: dict, column: str, where: str) -> str:
    if column not in row:
        raise DataError(f"{where}: missing column {column!r}; the row has {sorted(row)}")
    value = row[column]
    if not isinstance(value, str):
        raise DataError(f"{where}: column {column!r} must be a string, got {type(value).__name__} {value!r}")
    if not value.strip():
        raise DataError(f"{where}: column {column!r} is empty")
    return value


def _ids(tokenizer, text: str, max_length: int, specials: bool) -> list[int]:
    return tokenizer(text, truncation=True, max_length=max_length, add_special_tokens=specials)["input_ids"]


def _encode_classify(task: TaskConfig, tokenizer, row: dict, where: str, specials: bool) -> Example:
    text = _text(row, task.text_column, where)
    if task.prompt_template is not None:
        text = task.prompt_template.replace("{input}", text)
    if task.label_column not in row:
        raise DataError(f"{where}: missing column {task.label_column!r}; the row has {sorted(row)}")
    label = row[task.label_column]
    if isinstance(label, int) and not isinstance(label, bool):
        if not 0 <= label < len(task.labels):
            raise DataError(f"{where}: label index {label} is out of range for {len(task.labels)} labels")
        index = label
    elif isinstance(label, str):
        if label not in task.labels:
            raise DataError(f"{where}: label {label!r} is not one of task {task.name!r}'s labels {task.labels}")
        index = task.labels.index(label)
    else:
        raise DataError(f"{where}: column {task.label_column!r} must be a label name, got {label!r}")
    return Example(input_ids=_ids(tokenizer, text, task.max_length, specials), labels=index)


def _word_list(row: dict, column: str, where: str) -> list[str]:
    if column not in row:
        raise DataError(f"{where}: missing column {column!r}; the row has {sorted(row)}")
    value = row[column]
    if isinstance(value, str):  # CSV: a JSON list or space-separated words
        text = value.strip()
        if text.startswith("["):
            import json

            try:
                value = json.loads(text)
            except json.JSONDecodeError as err:
                raise DataError(f"{where}: column {column!r} is not a JSON list: {err.msg}") from None
        else:
            value = text.split()
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise DataError(f"{where}: column {column!r} must be a list of non-empty strings, got {value!r}")
    if not value:
        raise DataError(f"{where}: column {column!r} is empty")
    return value


def _encode_tag(task: TaskConfig, tokenizer, row: dict, where: str, specials: bool) -> Example:
    words = _word_list(row, task.tokens_column, where)
    tags = _word_list(row, task.tags_column, where)
    if len(words) != len(tags):
        raise DataError(f"{where}: {len(words)} {task.tokens_column} but {len(tags)} {task.tags_column}")
    for tag in tags:
        if tag not in task.labels:
            raise DataError(f"{where}: tag {tag!r} is not one of task {task.name!r}'s labels {task.labels}")
    if any(any(ch.isspace() for ch in w) for w in words):
        raise DataError(f"{where}: column {task.tokens_column!r} has a word containing whitespace")
    spans, text, char_word = [], "", []
    for i, word in enumerate(words):
        if i:
            text += " "
            char_word.append(-1)
        spans.append((len(text), len(text) + len(word)))
        text += word
        char_word.extend([i] * len(word))
    enc = tokenizer(text, truncation=True, max_length=task.max_length, return_offsets_mapping=True,
                    add_special_tokens=specials)
    word_ids, labels, seen = [], [], set()
    for start, end in enc["offset_mapping"]:
        # a token's word is the first word character it covers (byte-level BPE puts the space before
        # a word into the word's first token, so its span starts one character early)
        word = next((char_word[c] for c in range(start, end) if char_word[c] >= 0), -1)
        word_ids.append(word)
        if word >= 0 and word not in seen:
            seen.add(word)
            labels.append(task.labels.index(tags[word]))
        else:
            labels.append(IGNORE_INDEX)
    return Example(input_ids=enc["input_ids"], labels=labels, word_spans=spans, word_ids=word_ids)


def _encode_generate(task: TaskConfig, tokenizer, row: dict, where: str, specials: bool) -> Example:
    prompt = _text(row, task.prompt_column, where)
    response = _text(row, task.response_column, where)
    use_template = task.chat_template if task.chat_template is not None else bool(tokenizer.chat_template)
    if use_template:
        if not tokenizer.chat_template:
            raise DataError(f"task {task.name!r}: chat_template is true but the tokenizer has none")
        prompt = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                               add_generation_prompt=True)
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    else:
        prompt_ids = tokenizer(prompt, add_special_tokens=specials)["input_ids"]
    response_ids = tokenizer(response, add_special_tokens=False)["input_ids"]
    if tokenizer.eos_token_id is not None:
        response_ids = response_ids + [tokenizer.eos_token_id]
    room = task.max_length - len(response_ids)
    if room < 1:  # keep one prompt token and cut the response
        prompt_ids, response_ids = prompt_ids[-1:], response_ids[: task.max_length - 1]
    elif len(prompt_ids) > room:
        prompt_ids = prompt_ids[-room:]
    return Example(input_ids=prompt_ids + response_ids,
                   labels=[IGNORE_INDEX] * len(prompt_ids) + response_ids)


def _encode_embed(task: TaskConfig, tokenizer, row: dict, where: str, specials: bool) -> Example:
    anchor = _text(row, task.text_column, where)
    positive = _text(row, task.positive_column, where)
    if task.prompt_template is not None:
        anchor = task.prompt_template.replace("{input}", anchor)
        positive = task.prompt_template.replace("{input}", positive)
    return Example(input_ids=_ids(tokenizer, anchor, task.max_length, specials),
                   positive_ids=_ids(tokenizer, positive, task.max_length, specials))
