"""The ingress's engine client for one backbone: its requests go to replicas on Ray Serve.

To the FastAPI app a `ReplicaPool` is one more EngineClient, beside AsyncEngine and ProcessEngine:
it tokenizes and checks a request by the backbone's rules here (as ProcessEngine does before its
child sees it), queues it against the same admission limits, then streams it from one replica
through a DeploymentHandle; Ray's router, polyhead's (ray_router.py), picks the replica. Deltas come
back and are rebuilt into RequestOutputs by the same `Progress` the process mode uses. A replica
that dies mid-request ends that request with EngineDeadError (a 503-shaped error, retryable); Ray
starts a replacement and new requests go to live replicas meanwhile.
"""

import asyncio
import logging
import time
from dataclasses import replace

from polyhead.deploy import reports
from polyhead.engine.client.engine_client import EngineClient, EngineDeadError
from polyhead.engine.client.supervision import Progress
from polyhead.engine.core.engine import prepare_request
from polyhead.engine.core.outputs import EngineStats
from polyhead.engine.core.params import PoolingParams, SamplingParams
from polyhead.engine.core.request import PreparedRequest, Routing
from polyhead.models.text_tokenizer import TextTokenizer

logger = logging.getLogger(__name__)


class ReplicaPool(EngineClient):
    def __init__(self, handle, backbone: str):
        super().__init__()
        self.handle = handle  # the backbone's EngineReplica deployment
        self.backbone = backbone
        self.heads: dict = {}  # task -> head (the replicas registered their own from the same plan)
        self.adapters: set[str] = set()
        self._progress: dict[str, Progress] = {}  # unfinished requests: what was delivered so far
        self._tasks: dict[str, asyncio.Task] = {}  # req_id -> the task streaming it from its replica
        self._connected = False

    async def connect(self) -> "ReplicaPool":
        """Ask a replica what the backbone is (they are all alike), then take requests."""
        description = await self.handle.describe.remote()
        self.info, self.rules = description.info, description.rules
        self.adapters = set(description.adapters)
        self.tokenizer = TextTokenizer(self.info.tokenizer_folder)  # the model folder is on every node
        self._connected = True
        return self

    def start(self) -> "ReplicaPool":
        return self  # connect() started it; the replicas' engines run in their own processes

    def stop(self, timeout: float = 10.0) -> None:
        self._connected = False
        for task in list(self._tasks.values()):
            task.cancel()

    @property
    def is_running(self) -> bool:
        return self._connected and bool(self.replica_reports())

    @property
    def is_restarting(self) -> bool:
        """No live replica right now (Ray is replacing them): requests wait at the router, /health says so."""
        return self._connected and not self.replica_reports()

    def seconds_since_last_step(self) -> float:
        # the replicas' engines check in with Ray's health checks, which replace a stuck or dead
        # one; the fleet is as fresh as its live replicas
        if self.replica_reports():
            self.last_step_at = time.monotonic()
        return super().seconds_since_last_step()

    def check_fits(self, num_prompt_tokens: int, max_tokens: int) -> None:
        self.rules.check_fits(num_prompt_tokens, max_tokens)

    def register_head(self, task: str, head) -> None:
        self.heads[task] = head  # for the checks here; each replica registered it from the plan

    def register_adapter(self, name: str, folder: str) -> None:
        self.adapters.add(name)  # likewise: the replicas registered and checked it

    # --- what the replicas report (through polyhead's router) ------------------------------------------
    def replica_reports(self) -> dict[str, reports.ReplicaReport]:
        return reports.reports_for(self.handle.deployment_name)

    def stats(self) -> EngineStats:
        """The fleet's figures: every replica's summed, as of its last report."""
        total = EngineStats(0, 0, 0, 0, 0, 0, 0, {})
        for stats in (report.stats for report in self.replica_reports().values()):
            total.num_unfinished += stats.num_unfinished
            total.num_running += stats.num_running
            total.num_free_blocks += stats.num_free_blocks
            total.num_blocks += stats.num_blocks
            total.num_prefix_hit_tokens += stats.num_prefix_hit_tokens
            total.num_preemptions += stats.num_preemptions
            total.last_step_num_tokens += stats.last_step_num_tokens
            for kind, count in stats.last_step_rows.items():
                total.last_step_rows[kind] = total.last_step_rows.get(kind, 0) + count
        return total

    # --- requests (event loop thread) ------------------------------------------------------------
    def _new_request(self, prompt: str | list[int], params: SamplingParams | PoolingParams, req_id: str,
                     **routing) -> PreparedRequest:
        return prepare_request(self.rules, self.tokenizer, self.heads, self.adapters, prompt, params, req_id,
                               Routing(**routing))

    def _send_add(self, prepared: PreparedRequest) -> None:
        wants_logprobs = getattr(prepared.params, "logprobs", None) is not None  # PoolingParams have none
        self._progress[prepared.req_id] = Progress(prepared, logprobs=[] if wants_logprobs else None)
        self._tasks[prepared.req_id] = asyncio.get_running_loop().create_task(self._forward(prepared))

    def _send_abort(self, req_id: str) -> None:
        self._progress.pop(req_id, None)
        self._streams.pop(req_id, None)
        task = self._tasks.pop(req_id, None)
        if task is not None:
            task.cancel()  # cancels the replica's generator, which aborts the request there

    async def _forward(self, prepared: PreparedRequest) -> None:
        req_id = prepared.req_id
        responses = self.handle.options(stream=True).generate.remote(replace(prepared, prompt=None))
        try:
            async for delta in responses:
                progress = self._progress.get(req_id)
                if progress is None:
                    break  # aborted here
                self.last_step_at = time.monotonic()
                if delta.finished:
                    del self._progress[req_id]
                self._deliver([progress.apply(delta)])
        except asyncio.CancelledError:
            responses.cancel()
            raise
        except Exception as err:  # noqa: BLE001 - any failure ends this request alone, never the pool
            self._progress.pop(req_id, None)
            self._fail(req_id, _request_error(err, self.backbone))
        finally:
            self._tasks.pop(req_id, None)


def _request_error(err: Exception, backbone: str) -> Exception:
    """What a request's caller sees when its replica call failed."""
    from ray import exceptions

    if isinstance(err, exceptions.RayActorError | exceptions.ActorUnavailableError):
        return EngineDeadError(f"the {backbone} replica serving this request died; retry (Ray starts a new one)")
    if isinstance(err, ValueError):  # the replica's engine refused it (a RayTaskError is also its cause's type)
        return ValueError(str(err).splitlines()[-1])
    logger.error("replica call failed: %s", err)
    return RuntimeError(f"{type(err).__name__}: {err}")
