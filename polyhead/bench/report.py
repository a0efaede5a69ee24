"""What `polyhead bench serve` makes of its measurements: per-level statistics, the markdown table,
the JSON record and the plot. Pure functions of the recorded requests, so they are tested without
a server."""

import os
import platform
from dataclasses import dataclass
from datetime import UTC, datetime

PERCENTILES = (50, 90, 99)


@dataclass(slots=True)
class RequestResult:
    """One streamed request, as the client saw it."""

    e2e_s: float  # send to the end of the stream (or to the error), seconds
    ttft_s: float | None = None  # send to the first chunk with non-empty text; None if none came
    output_tokens: int = 0  # the server's usage.completion_tokens, else the number of text chunks
    prompt_tokens: int | None = None  # the server's usage.prompt_tokens, when it reports usage
    error: str | None = None  # "HTTP 500: ..." or the exception; None when the request succeeded

    @property
    def tpot_s(self) -> float | None:
        """Time per output token after the first; None when there is no second token to time."""
        if self.error is not None or self.ttft_s is None or self.output_tokens < 2:
            return None
        return (self.e2e_s - self.ttft_s) / (self.output_tokens - 1)


def percentile(values: list[float], q: float) -> float | None:
    """The q-th percentile (0..100), interpolating linearly between ranks as numpy's default does."""
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def summarize_level(results: list[RequestResult], wall_s: float, concurrency: int | None = None,
                    rate: float | None = None) -> dict:
    """One table row: throughput over the level's wall time, latency percentiles over the successes."""
    ok = [r for r in results if r.error is None]
    errors = [r.error for r in results if r.error is not None]
    output_tokens = sum(r.output_tokens for r in ok)
    prompt_tokens = [r.prompt_tokens for r in ok if r.prompt_tokens is not None]
    row = {"concurrency": concurrency, "rate": rate, "num_requests": len(results), "num_ok": len(ok),
           "num_errors": len(errors), "wall_s": wall_s,
           "requests_per_s": len(ok) / wall_s if wall_s > 0 else 0.0,
           "output_tok_s": output_tokens / wall_s if wall_s > 0 else 0.0,
           "mean_output_tokens": output_tokens / len(ok) if ok else None,
           "mean_prompt_tokens": sum(prompt_tokens) / len(prompt_tokens) if prompt_tokens else None}
    series = {"ttft": ([r.ttft_s for r in ok], "s", 1.0), "tpot": ([r.tpot_s for r in ok], "ms", 1000.0),
              "e2e": ([r.e2e_s for r in ok], "s", 1.0)}
    for name, (values, unit, scale) in series.items():
        present = [v * scale for v in values if v is not None]
        for q in PERCENTILES:
            row[f"{name}_p{q}_{unit}"] = percentile(present, q)
    row["error_samples"] = sorted(set(errors))[:3]  # distinct messages, enough to see what went wrong
    return row


def _fmt(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def markdown_table(rows: list[dict]) -> str:
    """The rows as a markdown table; the first column is concurrency (closed loop) or rate (open loop)."""
    open_loop = rows and rows[0]["rate"] is not None
    lines = [(f"| {'rate (req/s)' if open_loop else 'concurrency'} | requests/s | output tok/s "
              "| TTFT p50 / p90 / p99 (s) | TPOT p50 / p90 / p99 (ms) | e2e p50 / p90 / p99 (s) | errors |"),
             "|---|---|---|---|---|---|---|"]
    for row in rows:
        level = f"{row['rate']:g}" if open_loop else str(row["concurrency"])
        ttft = " / ".join(_fmt(row[f"ttft_p{q}_s"], 3) for q in PERCENTILES)
        tpot = " / ".join(_fmt(row[f"tpot_p{q}_ms"], 1) for q in PERCENTILES)
        e2e = " / ".join(_fmt(row[f"e2e_p{q}_s"], 2) for q in PERCENTILES)
        lines.append(f"| {level} | {row['requests_per_s']:.2f} | {row['output_tok_s']:.1f} | {ttft} | {tpot} "
                     f"| {e2e} | {row['num_errors']}/{row['num_requests']} |")
    return "\n".join(lines)


def machine_info() -> dict:
    """The client machine; with a local server it is the server's machine too."""
    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "python": platform.python_version(),
            "date": datetime.now(UTC).isoformat(timespec="seconds")}


def build_report(command: str, args: dict, label: str, model: str, rows: list[dict]) -> dict:
    """Everything needed to read (and rerun) one benchmark later, as JSON-ready data."""
    return {"command": command, "label": label, "model": model, "args": args, "machine": machine_info(),
            "rows": rows}


def plot_runs(runs: dict[str, list[dict]], path: str) -> None:
    """Output tok/s and TTFT p99 against the level, one line per labelled run, written as PNG."""
    from matplotlib.figure import Figure  # no pyplot: no global backend state, renders with Agg

    fig = Figure(figsize=(10, 4), layout="constrained")
    throughput, ttft = fig.subplots(1, 2)
    x_label = "concurrency (clients)"
    for label, rows in runs.items():
        x_key = "rate" if rows and rows[0]["rate"] is not None else "concurrency"
        x_label = "request rate (req/s, Poisson)" if x_key == "rate" else x_label
        xs = [row[x_key] for row in rows]
        throughput.plot(xs, [row["output_tok_s"] for row in rows], marker="o", label=label)
        ttft.plot(xs, [row["ttft_p99_s"] if row["ttft_p99_s"] is not None else float("nan") for row in rows],
                  marker="o", label=label)
        for ax in (throughput, ttft):
            if x_key == "concurrency":  # levels like 1, 4, 16, 32 spread evenly on a log axis
                ax.set_xscale("log", base=2)
            ax.set_xticks(xs, labels=[f"{x:g}" for x in xs])
    for ax, title, y_label in ((throughput, "output throughput", "output tokens/s"),
                               (ttft, "time to first token, p99", "seconds")):
        ax.set(title=title, xlabel=x_label, ylabel=y_label)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(" vs ".join(runs))
    fig.savefig(path, dpi=120)
