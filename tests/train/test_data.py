import csv
import json

import pytest
import torch

from polyhead.train.config import DataFiles, TaskConfig
from polyhead.train.data import IGNORE_INDEX, DataError, TaskDataset, collate
from polyhead.train.encode import encode_row
from tests.conftest import tiny_tokenizer

LABELS = ["negative", "neutral", "positive"]
CLASSIFY_ROWS = [{"text": "I loved it", "label": "positive"}, {"text": "Not good at all", "label": "negative"},
                 {"text": "It arrived on Tuesday", "label": "neutral"}]
TAG_ROWS = [{"tokens": ["Ada", "Lovelace", "visited", "London"], "tags": ["B-PER", "I-PER", "O", "B-LOC"]},
            {"tokens": ["Acme", "Corp", "hired", "Bob"], "tags": ["B-ORG", "I-ORG", "O", "B-PER"]}]


def classify_task(path, **kw) -> TaskConfig:
    task = TaskConfig(name="sentiment", kind="classify", data=DataFiles(train=str(path)), labels=list(LABELS), **kw)
    task.validate("tasks[0]")
    return task


def tag_task(path, **kw) -> TaskConfig:
    task = TaskConfig(name="ner", kind="tag", data=DataFiles(train=str(path)), labels=["PER", "ORG", "LOC"], **kw)
    task.validate("tasks[0]")
    return task


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def write_csv(path, rows):
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        for row in rows:
            writer.writerow({k: json.dumps(v) if isinstance(v, list) else v for k, v in row.items()})
    return path


def as_plain(ds):
    return [vars(e) for e in ds.examples]


@pytest.mark.parametrize("make_task, rows", [(classify_task, CLASSIFY_ROWS), (tag_task, TAG_ROWS)])
def test_jsonl_csv_and_datasets_folder_yield_the_same_examples(tmp_path, byte_tokenizer, make_task, rows):
    from datasets import ClassLabel, Dataset, DatasetDict, Features, List, Value

    jsonl = write_jsonl(tmp_path / "d.jsonl", rows)
    csv_path = write_csv(tmp_path / "d.csv", rows)
    plain = Dataset.from_list(rows)
    plain.save_to_disk(str(tmp_path / "ds"))
    # ClassLabel ints in a DatasetDict come back as names (a label order unlike the task's)
    if "label" in rows[0]:
        features = Features({"text": Value("string"), "label": ClassLabel(names=["positive", "neutral", "negative"])})
    else:
        features = Features({"tokens": List(Value("string")),
                             "tags": List(ClassLabel(names=["O", "B-LOC", "B-PER", "I-PER", "B-ORG", "I-ORG"]))})
    DatasetDict({"train": Dataset.from_list(rows, features=features)}).save_to_disk(str(tmp_path / "dd"))
    loaded = [TaskDataset.load(make_task(p), "train", byte_tokenizer, tmp_path / "cache")
              for p in (jsonl, csv_path, tmp_path / "ds", tmp_path / "dd")]
    assert len(loaded[0]) == len(rows)
    for ds in loaded[1:]:
        assert as_plain(ds) == as_plain(loaded[0])


def test_classify_examples(tmp_path, byte_tokenizer):
    ds = TaskDataset.load(classify_task(write_jsonl(tmp_path / "d.jsonl", CLASSIFY_ROWS)), "train", byte_tokenizer,
                          tmp_path / "cache")
    assert [e.labels for e in ds] == [2, 0, 1]
    assert byte_tokenizer.decode(ds[0].input_ids) == "I loved it"


@pytest.mark.parametrize("content, message", [
    ('{"text": "fine", "label": "neutral"}\n{"text": "ok", "label": "neutral"\n', "d.jsonl:2: bad JSON"),
    ('{"text": "fine", "label": "neutral"}\n\n"a string"\n', "d.jsonl:3: a row must be a JSON object"),
    ('[{"text": "fine", "label": "neutral"}]\n', "d.jsonl:1: a JSON array; polyhead reads JSON Lines"),
    ('{"text": "fine", "label": "neutral"}\n{"txt": "x", "label": "neutral"}\n', "d.jsonl:2: missing column 'text'"),
    ('{"text": 5, "label": "neutral"}\n', "d.jsonl:1: column 'text' must be a string"),
    ('{"text": "  ", "label": "neutral"}\n', "d.jsonl:1: column 'text' is empty"),
    ('{"text": "fine", "label": "neutral"}\n{"text": "x", "label": "angry"}\n', "d.jsonl:2: label 'angry'"),
    ('{"text": "fine", "label": 7}\n', "d.jsonl:1: label index 7 is out of range"),
    ('{"text": "fine", "label": null}\n', "d.jsonl:1: column 'label' must be a label name"),
])
def test_malformed_jsonl_rows_name_file_and_line(tmp_path, byte_tokenizer, content, message):
    path = tmp_path / "d.jsonl"
    path.write_text(content)
    with pytest.raises(DataError) as err:
        TaskDataset.load(classify_task(path), "train", byte_tokenizer, tmp_path / "cache")
    assert message in str(err.value)
    assert not list((tmp_path / "cache").glob("*.pt")) if (tmp_path / "cache").exists() else True


def test_byte_order_mark_is_not_data(tmp_path, byte_tokenizer):
    (tmp_path / "d.jsonl").write_bytes(b"\xef\xbb\xbf" + json.dumps(CLASSIFY_ROWS[0]).encode() + b"\n")
    (tmp_path / "d.csv").write_bytes(b"\xef\xbb\xbftext,label\nI loved it,positive\n")
    for name in ("d.jsonl", "d.csv"):
        ds = TaskDataset.load(classify_task(tmp_path / name), "train", byte_tokenizer, tmp_path / "cache")
        assert ds[0].labels == 2


def test_malformed_csv_rows_name_the_physical_line(tmp_path, byte_tokenizer):
    path = tmp_path / "d.csv"
    path.write_text('text,label\n"multi\nline text",neutral\nshort\n')  # row 2 starts on line 4
    with pytest.raises(DataError, match=r"d.csv:4: too few fields"):
        TaskDataset.load(classify_task(path), "train", byte_tokenizer, tmp_path / "cache")
    path.write_text('text,label\nfine,neutral\nbad,joyful\n')
    with pytest.raises(DataError, match=r"d.csv:3: label 'joyful' is not one of task 'sentiment'"):
        TaskDataset.load(classify_task(path), "train", byte_tokenizer, tmp_path / "cache")


@pytest.mark.parametrize("row, message", [
    ({"tokens": ["a", "b"], "tags": ["O"]}, "2 tokens but 1 tags"),
    ({"tokens": ["a"], "tags": ["B-DATE"]}, "tag 'B-DATE' is not one of task 'ner'"),
    ({"tokens": "a b", "tags": ["O", 3]}, "column 'tags' must be a list of non-empty strings"),
    ({"tokens": [], "tags": []}, "column 'tokens' is empty"),
    ({"tokens": ["a b"], "tags": ["O"]}, "column 'tokens' has a word containing whitespace"),
])
def test_malformed_tag_rows(tmp_path, byte_tokenizer, row, message):
    path = write_jsonl(tmp_path / "t.jsonl", [TAG_ROWS[0], row])
    with pytest.raises(DataError) as err:
        TaskDataset.load(tag_task(path), "train", byte_tokenizer, tmp_path / "cache")
    assert f"t.jsonl:2: {message}" in str(err.value)


def test_bio_labels_go_on_the_first_subword(smol_tokenizer, tmp_path):
    task = tag_task(tmp_path / "unused.jsonl")
    row = {"tokens": ["Zbigniew", "Brzezinski", "joined", "Novartis", "in", "Basel", "."],
           "tags": ["B-PER", "I-PER", "O", "B-ORG", "O", "B-LOC", "O"]}
    ex = encode_row(task, smol_tokenizer, row, "x:1")
    # SmolLM2 splits it as Z|b|ign|iew| Br|ze|z|inski| joined| Nov|art|is| in| Basel| .
    assert smol_tokenizer.convert_ids_to_tokens(ex.input_ids)[:5] == ["Z", "b", "ign", "iew", "ĠBr"]
    o, b_per, i_per, b_org, b_loc = 0, 1, 2, 3, 5  # labels: O, B-PER, I-PER, B-ORG, I-ORG, B-LOC, I-LOC
    x = IGNORE_INDEX
    assert ex.labels == [b_per, x, x, x, i_per, x, x, x, o, b_org, x, x, o, b_loc, o]
    assert ex.word_ids == [0, 0, 0, 0, 1, 1, 1, 1, 2, 3, 3, 3, 4, 5, 6]
    text = " ".join(row["tokens"])
    assert [text[s:e] for s, e in ex.word_spans] == row["tokens"]


def test_bio_alignment_with_one_token_per_byte_and_truncation(byte_tokenizer, tmp_path):
    task = tag_task(tmp_path / "unused.jsonl", max_length=6)
    ex = encode_row(task, byte_tokenizer, TAG_ROWS[0], "x:1")  # "Ada Lovelace ..." cut to 6 bytes
    assert ex.input_ids == byte_tokenizer("Ada Lo")["input_ids"]
    x = IGNORE_INDEX
    assert ex.labels == [1, x, x, x, 2, x]  # the space token belongs to no word


def test_generate_loss_is_on_the_response_only(byte_tokenizer, tmp_path):
    task = TaskConfig(name="chat", kind="generate", data=DataFiles(train="x"), max_length=128)
    ex = encode_row(task, byte_tokenizer, {"prompt": "Hi", "response": "Yo"}, "x:1")
    prompt = "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    assert byte_tokenizer.decode(ex.input_ids) == prompt + "Yo<|im_end|>"
    n_prompt = len(byte_tokenizer(prompt, add_special_tokens=False)["input_ids"])
    response = ex.input_ids[n_prompt:]
    assert ex.labels == [IGNORE_INDEX] * n_prompt + response
    assert byte_tokenizer.decode(response) == "Yo<|im_end|>"
    plain = TaskConfig(name="chat", kind="generate", data=DataFiles(train="x"), chat_template=False, max_length=5)
    ex = encode_row(plain, byte_tokenizer, {"prompt": "Hello", "response": "Yo"}, "x:1")
    assert byte_tokenizer.decode(ex.input_ids) == "lo" + "Yo<|im_end|>"  # prompt cut from the left
    assert ex.labels[:2] == [IGNORE_INDEX] * 2 and ex.labels[2:] == ex.input_ids[2:]


def test_embed_pairs_and_collate_pads_right(byte_tokenizer, tmp_path):
    task = TaskConfig(name="pairs", kind="embed", data=DataFiles(train="x"), max_length=16)
    rows = [{"text": "a cat", "positive": "a small cat"}, {"text": "dog", "positive": "hound"}]
    examples = [encode_row(task, byte_tokenizer, r, f"x:{i}") for i, r in enumerate(rows)]
    batch = collate(examples, pad_token_id=0, task="pairs")
    assert batch.task == "pairs" and batch.labels is None
    assert batch.input_ids.shape == (2, 5) and batch.positive_ids.shape == (2, 11)
    assert batch.attention_mask.tolist() == [[1] * 5, [1, 1, 1, 0, 0]]
    assert batch.input_ids[1, 3:].tolist() == [0, 0]
    assert batch.positive_mask.sum(1).tolist() == [11, 5]
    tags = [encode_row(tag_task("x"), byte_tokenizer, r, "x:1") for r in TAG_ROWS]
    batch = collate(tags, pad_token_id=0, task="ner")
    assert batch.labels.shape == batch.input_ids.shape
    assert (batch.labels[batch.attention_mask == 0] == IGNORE_INDEX).all()
    classify = collate([encode_row(classify_task("x"), byte_tokenizer, r, "x:1") for r in CLASSIFY_ROWS], 0)
    assert classify.labels.tolist() == [2, 0, 1] and classify.labels.dtype == torch.long


def test_cache_is_reused_and_invalidated(tmp_path, byte_tokenizer):
    path = write_jsonl(tmp_path / "d.jsonl", CLASSIFY_ROWS)
    cache = tmp_path / "cache"
    first = TaskDataset.load(classify_task(path), "train", byte_tokenizer, cache)
    assert first.num_tokenized == 3 and len(list(cache.glob("*.pt"))) == 1
    second = TaskDataset.load(classify_task(path), "train", byte_tokenizer, cache)
    assert second.num_tokenized == 0 and as_plain(second) == as_plain(first)
    write_jsonl(path, CLASSIFY_ROWS + [{"text": "meh", "label": "neutral"}])  # the file changed
    third = TaskDataset.load(classify_task(path), "train", byte_tokenizer, cache)
    assert third.num_tokenized == 4 and len(third) == 4
    shorter = TaskDataset.load(classify_task(path, max_length=5), "train", byte_tokenizer, cache)
    assert shorter.num_tokenized == 4 and max(len(e.input_ids) for e in shorter) == 5  # settings changed
    for file in cache.glob("*.pt"):
        file.write_bytes(b"damaged")  # a damaged cache is rebuilt, then reused
    assert TaskDataset.load(classify_task(path), "train", byte_tokenizer, cache).num_tokenized == 4
    assert TaskDataset.load(classify_task(path), "train", byte_tokenizer, cache).num_tokenized == 0


def test_encoder_tokenizers_keep_cls_and_sep_like_the_encoder_engine(minilm_tokenizer, smol_tokenizer, tmp_path):
    from polyhead.train.data import uses_special_tokens

    assert uses_special_tokens(minilm_tokenizer) and not uses_special_tokens(smol_tokenizer)
    path = write_jsonl(tmp_path / "t.jsonl", TAG_ROWS[:1])
    ex = TaskDataset.load(tag_task(path), "train", minilm_tokenizer, tmp_path / "cache")[0]
    assert minilm_tokenizer.convert_ids_to_tokens(ex.input_ids) == [
        "[CLS]", "ada", "love", "##lace", "visited", "london", "[SEP]"]
    x = IGNORE_INDEX
    assert ex.labels == [x, 1, 2, x, 0, 5, x]  # B-PER, I-PER, (##lace), O, B-LOC; specials carry no label
    assert ex.word_ids == [-1, 0, 1, 1, 2, 3, -1]
    classify = TaskDataset.load(classify_task(write_jsonl(tmp_path / "c.jsonl", CLASSIFY_ROWS)), "train",
                                minilm_tokenizer, tmp_path / "cache")[0]
    assert classify.input_ids == minilm_tokenizer("I loved it")["input_ids"]  # with [CLS] and [SEP]
    smol = TaskDataset.load(classify_task(tmp_path / "c.jsonl"), "train", smol_tokenizer, tmp_path / "cache")[0]
    assert smol.input_ids == smol_tokenizer.encode("I loved it", add_special_tokens=False)


def test_cache_format_round_trips_every_kind(byte_tokenizer):
    from polyhead.train.example_store import pack_examples, unpack_examples

    cases = [(classify_task("x"), CLASSIFY_ROWS), (tag_task("x"), TAG_ROWS),
             (TaskConfig(name="chat", kind="generate", data=DataFiles(train="x")),
              [{"prompt": "Hi", "response": "Yo"}, {"prompt": "Name one", "response": "Ada"}]),
             (TaskConfig(name="pairs", kind="embed", data=DataFiles(train="x")),
              [{"text": "a cat", "positive": "a small cat"}, {"text": "dog", "positive": "hound"}])]
    for task, rows in cases:
        examples = [encode_row(task, byte_tokenizer, r, "x:1") for r in rows]
        restored = unpack_examples(pack_examples(examples))
        assert [vars(e) for e in restored] == [vars(e) for e in examples], task.kind


def test_fingerprint_ignores_and_keeps_the_truncation_state(smol_tokenizer):
    from polyhead.train.data import tokenizer_fingerprint

    smol_tokenizer("some text", truncation=True, max_length=7)
    truncation = smol_tokenizer.backend_tokenizer.truncation
    assert truncation is not None and truncation["max_length"] == 7
    first = tokenizer_fingerprint(smol_tokenizer)
    assert smol_tokenizer.backend_tokenizer.truncation == truncation  # restored
    smol_tokenizer("some text")  # no truncation now
    assert tokenizer_fingerprint(smol_tokenizer) == first
    assert tokenizer_fingerprint(tiny_tokenizer()) != first
