"""`polyhead bench structured` runs on tiny arguments and reports both figures; its 20-field schema
and the document that drives matchers through it agree."""

import json

import jsonschema_rs

from polyhead.bench.structured import twenty_field_instance, twenty_field_schema
from polyhead.cli import main


def test_the_twenty_field_instance_follows_the_schema():
    schema = twenty_field_schema()
    assert len(schema["properties"]) == 20
    assert jsonschema_rs.validator_for(schema).is_valid(twenty_field_instance())


def test_structured_bench_reports_constrained_and_free_rates_and_compile_time(tiny_llama, tmp_path, capsys):
    out = tmp_path / "structured.json"
    assert main(["bench", "structured", "--model", str(tiny_llama[0]), "--dtype", "float32", "--concurrency", "1,3",
                 "--input-len", "8", "--output-len", "6", "--compile-trials", "2", "--kv-cache-memory", "16MiB",
                 "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert [row["sequences"] for row in report["rows"]] == [1, 3]
    assert all(row["free_tok_s"] > 0 and row["constrained_tok_s"] > 0 for row in report["rows"])
    assert 0 < report["compile_s"] <= report["compile_and_first_mask_s"]
    printed = capsys.readouterr().out
    assert "| sequences | free tok/s | constrained tok/s | constrained / free |" in printed
    assert "20-field JSON schema: compile" in printed
