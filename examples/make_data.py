"""Write polyhead's example training data (seeded, so the committed files are reproducible).

    python examples/make_data.py [OUT]      # -> examples/data/{sentiment,topic,ner}/{train,validation,test}.*

Sentences are composed from hand-written templates and vocabulary (examples/vocab.py): reviews
for sentiment (negative / neutral / positive, with negation, hedges and "X, but Y" reviews that are
labelled by the clause after "but"), news lines for topic (world, sports, business, science,
entertainment, health; some vocabulary crosses topics, and a quarter of the lines put a short
topic story in a frame all topics share), and news sentences with PER / ORG / LOC /
MISC entities in BIO tags (some names are both a person and a place); paraphrase pairs for embed
(two phrasings of one news line with the same names and numbers); and extraction instructions for
generate ("List the people mentioned in this sentence: ..." -> "Ada Lovelace, John Smith" or "None.").
Every text is unique and the splits share no text.
"""

import csv
import json
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import vocab as V

OUT = Path(__file__).parent / "data"
SIZES = {"sentiment": (720, 120, 120), "topic": (720, 120, 120), "ner": (480, 80, 80),  # train, val, test
         "paraphrase": (400, 60, 60), "extract": (360, 60, 60)}


def fill(rng: random.Random, template: str, slots: dict[str, list[str]], chosen: dict | None = None) -> str:
    """Replace each {slot} with a random choice; a slot used twice ({aspect} {aspect2}) draws a different
    value each time while it can. Filled values may hold slots themselves ({fact} -> "... on {day}.").
    `chosen` (slot -> value) is reused and extended, so two templates can share their values."""
    out, used = template, {}
    chosen = {} if chosen is None else chosen
    while "{" in out:
        start = out.index("{")
        end = out.index("}", start)
        name = out[start + 1: end]
        base = name.rstrip("0123456789")
        if name not in chosen:
            fresh = [v for v in slots[base] if v not in used.get(base, ())] or slots[base]
            chosen[name] = rng.choice(fresh)
        used.setdefault(base, set()).add(chosen[name])
        out = out[:start] + chosen[name] + out[end + 1:]
    return out


def sentence_case(text: str) -> str:
    """Capitalize the first letter of the text and of every sentence after . ! ?"""
    chars = list(text)
    start = True
    for i, ch in enumerate(chars):
        if start and ch.isalpha():
            chars[i] = ch.upper()
            start = False
        elif ch in ".!?" and (i + 1 == len(chars) or chars[i + 1] == " "):
            start = True
        elif not ch.isspace():
            start = False
    return "".join(chars)


SENTIMENT_LABELS = ["negative", "neutral", "positive"]


def sentiment_example(rng: random.Random, label: str) -> dict:
    domain = rng.choice(list(V.DOMAINS))
    slots = {**V.SENTIMENT_WORDS, **V.DOMAINS[domain]}
    kind = rng.random()
    if label == "neutral":
        text = fill(rng, rng.choice(V.NEUTRAL_TEMPLATES), slots)
    elif kind < 0.25:  # a mixed review: the clause after "but" decides
        first = "neg" if label == "positive" else "pos"
        second = "pos" if label == "positive" else "neg"
        template = rng.choice(V.BUT_TEMPLATES).replace("{A}", "{" + first + "}").replace("{B}", "{" + second + "}")
        text = fill(rng, template, slots)
    elif kind < 0.45:  # negation flips the polar word
        text = fill(rng, rng.choice(V.NEGATED_TEMPLATES[label]), slots)
    else:
        text = fill(rng, rng.choice(V.POLAR_TEMPLATES[label]), slots)
    text = sentence_case(text)
    if rng.random() < 0.3:
        keep = text.startswith(("I ", "I'"))
        text = rng.choice(V.OPENERS) + " " + (text if keep else text[0].lower() + text[1:])
    if rng.random() < 0.2:
        text += " " + sentence_case(fill(rng, rng.choice(V.CLOSERS), slots))
    return {"text": text, "label": label}


def topic_example(rng: random.Random, label: str) -> dict:
    if rng.random() < 0.25:  # a frame every topic shares around a short topic-specific story
        text = fill(rng, rng.choice(V.TOPIC_FRAMES), {**V.TOPIC_WORDS, "story": V.TOPIC_STORIES[label]})
    else:
        text = fill(rng, rng.choice(V.TOPIC_TEMPLATES[label]), V.TOPIC_WORDS)
    return {"text": sentence_case(text), "label": label}


def ner_example(rng: random.Random, label: None) -> dict:
    """Templates hold {PER} {ORG} {LOC} {MISC} slots (entities) and lowercase slots (plain words)."""
    template = rng.choice(V.NER_TEMPLATES)
    tokens, tags = [], []
    for piece in template.split():
        if piece.startswith("{") and piece.endswith("}"):
            name = piece[1:-1]
            if name in V.ENTITIES:
                kind, names = V.ENTITIES[name]
                words = rng.choice(names).split()
                tokens += words
                tags += [f"B-{kind}"] + [f"I-{kind}"] * (len(words) - 1)
                continue
            words = rng.choice(V.NER_WORDS[name]).split()
        else:
            words = [piece]
        tokens += words
        tags += ["O"] * len(words)
    return {"tokens": tokens, "tags": tags}


def paraphrase_example(rng: random.Random, label: None) -> dict:
    first, second = rng.choice(V.PARAPHRASES)
    if rng.random() < 0.5:
        first, second = second, first
    chosen = {}
    text = sentence_case(fill(rng, first, V.TOPIC_WORDS, chosen))
    return {"text": text, "positive": sentence_case(fill(rng, second, V.TOPIC_WORDS, chosen))}


def detokenize(tokens: list[str]) -> str:
    text = " ".join(tokens)
    for mark in (" ,", " .", " '"):
        text = text.replace(mark, mark.strip())
    return text.replace(" - ", "-")


def extract_example(rng: random.Random, label: str) -> dict:
    """An instruction to list one entity type of a NER sentence; the response lists them in order."""
    row = ner_example(rng, None)
    names, current = [], None
    for token, tag in zip(row["tokens"], row["tags"]):
        if tag == f"B-{label}":
            current = [token]
            names.append(current)
        elif tag == f"I-{label}" and current is not None:
            current.append(token)
        else:
            current = None
    found = list(dict.fromkeys(" ".join(n) for n in names))
    prompt = rng.choice(V.EXTRACT_PROMPTS[label]).replace("{text}", detokenize(row["tokens"]))
    return {"prompt": prompt, "response": ", ".join(found) if found else "None."}


def generate(make, labels: list, total: int, rng: random.Random, key) -> list[dict]:
    """`total` unique rows, labels in turn (balanced classes), shuffled."""
    seen, rows = set(), []
    for _ in range(total * 200):
        label = labels[len(rows) % len(labels)]
        row = make(rng, label)
        if key(row) not in seen:
            seen.add(key(row))
            rows.append(row)
            if len(rows) == total:
                rng.shuffle(rows)
                return rows
    raise RuntimeError(f"only {len(rows)} unique rows of {total}: add templates or vocabulary")


def write_jsonl(path: Path, rows: list[dict]):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def write_csv(path: Path, rows: list[dict]):
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def main(out: Path = OUT):
    rng = random.Random(20261125)
    makers = {"sentiment": (sentiment_example, SENTIMENT_LABELS, lambda r: r["text"].lower()),
              "topic": (topic_example, list(V.TOPIC_TEMPLATES), lambda r: r["text"].lower()),
              "ner": (ner_example, [None], lambda r: " ".join(r["tokens"]).lower()),
              "paraphrase": (paraphrase_example, [None], lambda r: r["text"].lower()),
              "extract": (extract_example, list(V.EXTRACT_PROMPTS), lambda r: r["prompt"].lower())}
    for name, (make, labels, key) in makers.items():
        sizes = SIZES[name]
        rows = generate(make, labels, sum(sizes), rng, key)
        folder = out / name
        folder.mkdir(parents=True, exist_ok=True)
        start = 0
        for split, size in zip(("train", "validation", "test"), sizes):
            part = rows[start: start + size]
            start += size
            write_jsonl(folder / f"{split}.jsonl", part)
            if name == "sentiment":
                write_csv(folder / f"{split}.csv", part)
            if name in ("sentiment", "topic", "ner"):
                labels = [r.get("label") for r in part] if name != "ner" else [t for r in part for t in r["tags"]]
                counts = {label: labels.count(label) for label in sorted(set(labels))}
                print(f"{name}/{split}: {len(part)} rows {counts}")
            else:
                print(f"{name}/{split}: {len(part)} rows")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else OUT)
