"""Scheduling policies: which waiting request goes next, which running one gives its blocks back.

The Scheduler keeps its own rule (running requests first, then waiting ones, within one token
budget); a policy only orders. It hears about every request that joins or leaves the waiting
queue and about every token scheduled, so a policy that counts service (fair) sees it as it
happens: prefill chunks, decode tokens and pooling rows alike.

- fcfs: arrival order; the newest running request is preempted (the scheduler's original order).
- priority: lower `priority` first (vLLM's convention), then the earliest deadline, then arrival;
  the lowest-priority running request is preempted.
- fair: the Virtual Token Counter (Sheng et al., OSDI'24) across tenants, and across tasks within
  a tenant. See docs/scheduling.md.
"""

import math
from collections import defaultdict
from collections.abc import Iterator, Sequence

from polyhead.engine.core.request import Request

POLICIES = ("fcfs", "priority", "fair")


def urgency(request: Request) -> tuple:
    """Lower runs first: priority, then the earliest deadline (none: last), then arrival."""
    deadline = math.inf if request.deadline is None else request.deadline
    return request.priority, deadline, request.arrival_time


class SchedulingPolicy:
    """First come, first served. The base of the others: every hook is a no-op here."""

    name = "fcfs"

    def on_enqueue(self, request: Request) -> None:
        """The request joined the waiting queue (new, or preempted and back)."""

    def on_dequeue(self, request: Request, scheduled: bool) -> None:
        """The request left the waiting queue: scheduled, or finished (aborted, timed out) there."""

    def on_scheduled(self, request: Request, num_tokens: int) -> None:
        """The request got `num_tokens` of this step (called before its computed count advances)."""

    def order_running(self, running: list[Request]) -> None:
        """Sort, in place, the order in which running requests get this step's budget and blocks."""

    def waiting_order(self, waiting: Sequence[Request]) -> Iterator[Request]:
        """The order in which to try waiting requests this step. A generator may look at state that
        `on_scheduled` changes between the requests it yields; the scheduler removes a request it
        admits from `waiting` before asking for the next."""
        i = 0  # arrival order, without copying the queue: the head is admitted, or stays and is skipped
        while i < len(waiting):
            request = waiting[i]
            yield request
            if i < len(waiting) and waiting[i] is request:
                i += 1

    def choose_victim(self, candidates: list[Request]) -> Request:
        """The request to preempt when blocks run short. `candidates` are the running requests not
        scheduled yet this step, in running order; the first is the one that needs the blocks."""
        return candidates[-1]


class PriorityPolicy(SchedulingPolicy):
    name = "priority"

    def order_running(self, running: list[Request]) -> None:
        running.sort(key=urgency)

    def waiting_order(self, waiting: Sequence[Request]) -> Iterator[Request]:
        return iter(sorted(waiting, key=urgency))

    def choose_victim(self, candidates: list[Request]) -> Request:
        return max(candidates, key=urgency)


class VirtualCounters:
    """VTC's counters over one set of clients: weighted service received, and which clients are
    backlogged (have waiting requests). The rule it keeps: a client that becomes backlogged is
    lifted to the smallest counter among the backlogged (or, when none is, to the counter of the
    last client served), so service it did not ask for while idle is not banked for later."""

    def __init__(self, weights: dict[str, float]):
        self.weights = weights  # client -> share weight; absent: 1.0
        self.counters: dict[str, float] = defaultdict(float)  # client -> service / weight
        self.num_waiting: dict[str, int] = defaultdict(int)  # client -> its waiting requests
        self.last_served = 0.0  # the counter of the last client a waiting request was taken from

    def enqueue(self, client: str) -> None:
        if self.num_waiting[client] == 0:
            backlogged = [self.counters[c] for c, n in self.num_waiting.items() if n > 0]
            floor = min(backlogged) if backlogged else self.last_served
            self.counters[client] = max(self.counters[client], floor)
        self.num_waiting[client] += 1

    def dequeue(self, client: str, scheduled: bool) -> None:
        self.num_waiting[client] -= 1
        if self.num_waiting[client] == 0:
            del self.num_waiting[client]
        if scheduled:
            self.last_served = self.counters[client]

    def charge(self, client: str, cost: float) -> None:
        self.counters[client] += cost / self.weights.get(client, 1.0)


class FairPolicy(SchedulingPolicy):
    """VTC in two levels: the backlogged tenant with the least weighted service goes first, and
    within it the task with the least; a tenant's requests of one task go by urgency (priority,
    deadline, arrival), and equal counters are broken by the earliest deadline.

    Cost of a scheduled row: `prefill_weight` per prompt token computed (pooling rows and
    recomputation after preemption included), `decode_weight` per decode token (VTC's w_p, w_q)."""

    name = "fair"

    def __init__(self, tenant_weights: dict[str, float] | None = None, task_weights: dict[str, float] | None = None,
                 prefill_weight: float = 1.0, decode_weight: float = 2.0):
        self.tenants = VirtualCounters(dict(tenant_weights or {}))
        self.task_weights = dict(task_weights or {})
        self.tasks: dict[str, VirtualCounters] = {}  # tenant -> counters over its tasks
        self.prefill_weight = prefill_weight
        self.decode_weight = decode_weight

    def _tasks(self, tenant: str) -> VirtualCounters:
        if tenant not in self.tasks:
            self.tasks[tenant] = VirtualCounters(self.task_weights)
        return self.tasks[tenant]

    def cost(self, request: Request, num_tokens: int) -> float:
        is_decode = request.num_output_tokens > 0 and request.num_computed_tokens == request.num_tokens - 1
        return num_tokens * (self.decode_weight if is_decode else self.prefill_weight)

    def on_enqueue(self, request: Request) -> None:
        self.tenants.enqueue(request.tenant)
        self._tasks(request.tenant).enqueue(request.task)

    def on_dequeue(self, request: Request, scheduled: bool) -> None:
        self.tenants.dequeue(request.tenant, scheduled)
        self._tasks(request.tenant).dequeue(request.task, scheduled)

    def on_scheduled(self, request: Request, num_tokens: int) -> None:
        cost = self.cost(request, num_tokens)
        self.tenants.charge(request.tenant, cost)
        self._tasks(request.tenant).charge(request.task, cost)

    def rank(self, request: Request) -> tuple:
        """Lower is served first: tenant counter, task counter, then urgency."""
        return (self.tenants.counters[request.tenant], self._tasks(request.tenant).counters[request.task],
                *_edf(request))

    def order_running(self, running: list[Request]) -> None:
        running.sort(key=self.rank)

    def choose_victim(self, candidates: list[Request]) -> Request:
        return max(candidates, key=self.rank)

    def waiting_order(self, waiting: Sequence[Request]) -> Iterator[Request]:
        queues: dict[str, dict[str, list[Request]]] = defaultdict(lambda: defaultdict(list))
        for request in waiting:
            queues[request.tenant][request.task].append(request)
        for tasks in queues.values():
            for queue in tasks.values():
                queue.sort(key=urgency, reverse=True)  # the most urgent last, to pop
        # Counters move as yielded requests are scheduled, so the least-served client is found anew
        # for every request; a request the scheduler skips leaves the counters as they were.
        while queues:
            tenant = min(queues, key=lambda t: (self.tenants.counters[t],
                                                min(_edf(q[-1]) for q in queues[t].values())))
            tasks, task_counters = queues[tenant], self._tasks(tenant).counters
            task = min(tasks, key=lambda k: (task_counters[k], _edf(tasks[k][-1])))
            yield tasks[task].pop()
            if not tasks[task]:
                del tasks[task]
                if not tasks:
                    del queues[tenant]


def _edf(request: Request) -> tuple:
    """Earliest deadline first, then priority, then arrival: the tie-break among equal counters."""
    deadline = math.inf if request.deadline is None else request.deadline
    return deadline, request.priority, request.arrival_time


def make_policy(name: str, tenant_weights: dict[str, float] | None = None,
                task_weights: dict[str, float] | None = None) -> SchedulingPolicy:
    if name == "fcfs":
        return SchedulingPolicy()
    if name == "priority":
        return PriorityPolicy()
    if name == "fair":
        return FairPolicy(tenant_weights, task_weights)
    raise ValueError(f"policy must be one of {', '.join(POLICIES)}, got {name!r}")
