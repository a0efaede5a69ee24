"""Loss weightings under DDP (2 gloo processes): state that lives outside the DDP-wrapped model
(uncertainty's log-variances, DWA's epoch means, GradNorm's weights) stays identical on every rank."""

import json
import math
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from polyhead.train.weighting import DWAWeighting, GradNormWeighting, UncertaintyWeighting

LOCAL_LOSSES = [{"a": 1.0, "b": 3.0}, {"a": 2.0, "b": 5.0}]  # per rank


def _worker(rank: int, init_file: str, out_dir: str):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    torch.set_num_threads(1)
    try:
        uncertainty = UncertaintyWeighting(["a", "b"])
        with torch.no_grad():
            uncertainty.log_vars.copy_(torch.tensor([0.5, -0.5]))
        net = torch.ones(2, requires_grad=True)  # stands in for the model: its losses are local
        losses = {t: net[i] * v for i, (t, v) in enumerate(LOCAL_LOSSES[rank].items())}
        total = uncertainty.combine(losses)
        total.backward()
        dwa = DWAWeighting(["a", "b"])
        for _ in range(rank + 1):  # rank 0 sees one step, rank 1 two: means over all 3 losses
            dwa.combine({t: torch.tensor(v) for t, v in LOCAL_LOSSES[rank].items()})
        dwa.end_epoch()
        torch.manual_seed(rank)  # different data on each rank
        shared = torch.nn.Linear(4, 4)
        torch.manual_seed(0)
        x = torch.randn(8, 4) * (rank + 1)
        h = shared(x)
        gradnorm = GradNormWeighting(["a", "b"], alpha=1.0, lr=0.1)
        for _ in range(3):
            h = shared(x)
            gradnorm.update({"a": h[:, 0].pow(2).mean(), "b": (h[:, 1] * 5).pow(2).mean()}, shared.parameters())
        result = {"total": total.item(), "log_var_grad": uncertainty.log_vars.grad.tolist(),
                  "net_grad": net.grad.tolist(), "dwa": dwa.history[-1], "gradnorm": gradnorm.weights()}
        (Path(out_dir) / f"rank{rank}.json").write_text(json.dumps(result))
    finally:
        dist.destroy_process_group()


def test_weighting_state_is_the_same_on_every_rank(tmp_path):
    # fork: the children reuse this process's imports (spawn would re-import torch in each)
    mp.start_processes(_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True,
                       start_method="fork")
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2))
    s = [0.5, -0.5]
    mean = {"a": 1.5, "b": 4.0}
    expected = [1 - math.exp(-s[0]) * mean["a"], 1 - math.exp(-s[1]) * mean["b"]]
    for r in (r0, r1):
        assert r["log_var_grad"] == [pytest_approx(v) for v in expected]
    # the model's gradient and the loss value stay each rank's own (DDP averages the model's grads)
    assert r0["net_grad"] == [pytest_approx(math.exp(-0.5) * 1.0), pytest_approx(math.exp(0.5) * 3.0)]
    assert r0["total"] == pytest_approx(math.exp(-0.5) * 1 + 0.5 + math.exp(0.5) * 3 - 0.5)
    assert r1["net_grad"] == [pytest_approx(math.exp(-0.5) * 2.0), pytest_approx(math.exp(0.5) * 5.0)]
    # DWA: rank 0 summed one step, rank 1 two: (1 + 2 + 2) / 3 and (3 + 5 + 5) / 3 on both ranks
    for r in (r0, r1):
        assert r["dwa"] == {"a": pytest_approx(5 / 3), "b": pytest_approx(13 / 3)}
    assert r0["gradnorm"] == r1["gradnorm"] and r0["gradnorm"]["a"] > r0["gradnorm"]["b"]


def pytest_approx(value):
    import pytest

    return pytest.approx(value, rel=1e-5)
