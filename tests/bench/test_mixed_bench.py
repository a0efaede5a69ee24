"""polyhead bench mixed: goodput against per-kind targets, and a short run against a live
multi-task server on tiny models (chat streams, classify and embed at fixed rates)."""

import argparse
import json

from polyhead.bench.mixed import Targets, add_mixed_parser, markdown_table, run_bench_mixed, summarize
from polyhead.bench.report import RequestResult
from tests.server.task_fixtures import bert, manifest_dir, running_task_server  # noqa: F401 - fixtures


def test_goodput_counts_only_requests_within_their_targets():
    targets = Targets(chat_ttft_s=1.0, chat_tpot_s=0.1, task_e2e_s=0.5)
    results = {
        "chat": [RequestResult(2.0, 0.5, 21), RequestResult(3.0, 1.5, 21),  # met; TTFT too slow
                 RequestResult(5.0, 0.5, 21), RequestResult(1.0, error="HTTP 500")],  # TPOT 225 ms; error
        "classify": [RequestResult(0.4), RequestResult(0.6)],
        "embed": [RequestResult(0.1), RequestResult(0.2, error="timeout")],
    }
    summary = summarize(results, wall_s=20.0, targets=targets, duration_s=10.0)  # goodput over the 10 s window
    assert [summary[k]["num_met"] for k in ("chat", "classify", "embed")] == [1, 1, 1]
    assert summary["goodput_per_s"] == 0.3 and summary["chat"]["num_errors"] == 1
    assert summary["chat"]["output_tok_s"] == (21 * 3) / 20.0  # tokens over the wall time
    assert "| polyhead | 0.30 | 1 / 4 |" in markdown_table({"polyhead": summary})


def parse(argv):
    parser = argparse.ArgumentParser()
    add_mixed_parser(parser.add_subparsers())
    return parser.parse_args(["mixed", *argv])


def test_a_short_mixed_run_against_a_live_server(manifest_dir, tiny_llama, tmp_path, capsys):  # noqa: F811
    with running_task_server(manifest_dir[1], tiny_llama[0]) as (url, _):
        args = parse(["--url", url, "--duration", "2", "--chat-streams", "2", "--output-len", "8", "--input-len", "6",
                      "--task-input-len", "6",
                      "--classify-rate", "5", "--embed-rate", "5", "--task-e2e", "5", "--chat-ttft", "5",
                      "--chat-tpot", "1", "--json", str(tmp_path / "run.json"), "--label", "tiny"])
        assert run_bench_mixed(args) == 0
    report = json.loads((tmp_path / "run.json").read_text())
    summary = report["summary"]
    for kind in ("chat", "classify", "embed"):
        assert summary[kind]["num_requests"] >= 1 and summary[kind]["num_errors"] == 0, summary[kind]
        assert summary[kind]["num_met"] == summary[kind]["num_requests"]  # generous targets on tiny models
    assert summary["chat"]["output_tok_s"] > 0 and report["targets"]["task_e2e_s"] == 5
    half = {**report, "label": "half", "summary": {**summary, "goodput_per_s": summary["goodput_per_s"] / 2}}
    (tmp_path / "half.json").write_text(json.dumps(half))
    compare = parse(["--compare", str(tmp_path / "run.json"), str(tmp_path / "half.json"),
                     "--plot", str(tmp_path / "mixed.png")])
    assert run_bench_mixed(compare) == 0
    assert "goodput ratio tiny / half: 2.00x" in capsys.readouterr().out
    assert (tmp_path / "mixed.png").stat().st_size > 1000
