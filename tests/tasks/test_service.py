"""multi_step services run on the host: agent code can neither read their data nor reset them."""

from __future__ import annotations

import pytest

from kernelenv import KernelEnv, KernelPool, StepStatus
from kernelenv.errors import TaskFormatError
from kernelenv.tasks.format import Task
from kernelenv.tasks.library import default_library
from kernelenv.tasks.service import TaskService

pytestmark = pytest.mark.anyio

MULTI_STEP = ["multi_step_easy_pagination", "multi_step_medium_ratelimit", "multi_step_hard_ledger"]
# Names the services keep their data and their rules in (on the host only).
PRIVATE_NAMES = ["api", "ledger", "_pages", "_cursors", "_events", "_throttled", "_batches",
                 "_served", "_last_call", "current_step", "_one_call_per_step"]

# Agent code hunting for the service: its names, anything reachable from the tool stubs, and
# every object in the kernel's memory that looks like the service's data.
HUNT = """
import gc, inspect
found = sorted(set(globals()) & set(NAMES))
for stub in [v for v in list(globals().values()) if inspect.isfunction(v)]:
    for cell in stub.__closure__ or ():
        try:
            value = cell.cell_contents
        except ValueError:
            continue
        if isinstance(value, dict) and set(value) & set(NAMES):
            found.append(f"closure of {stub.__name__}")
    if set(getattr(stub, "__globals__", {})) & set(NAMES) - set(globals()):
        found.append(f"globals of {stub.__name__}")
data = [o for o in gc.get_objects()
        if isinstance(o, dict) and str(o.get("id", o.get("tx", ""))).startswith(("ord-", "ev0", "t0"))]
found, len(data)
"""


@pytest.fixture(scope="module")
async def pool(anyio_backend):
    async with KernelPool(size=2) as pool:
        yield pool


@pytest.fixture
async def env(pool, no_leaks):
    async with KernelEnv(pool=pool) as env:
        yield env


@pytest.mark.parametrize("task_id", MULTI_STEP)
async def test_the_service_data_is_not_in_the_agents_kernel(env, task_id):
    await env.reset(task_id=task_id)
    hunt = await env.step(f"NAMES = {PRIVATE_NAMES!r}\n{HUNT}")
    assert hunt.status is StepStatus.OK, hunt.stderr
    assert hunt.return_value == "([], 0)"


async def test_reading_the_private_data_in_one_step_scores_nothing(env):
    # The shortcut that scored 1.0 when the service object lived in the kernel.
    shortcut = """
_orders = [o for page in api._pages for o in page]
answer = {"orders": len(_orders),
          "paid_total": round(sum(o["amount"] for o in _orders if o["status"] == "paid"), 2)}
"""
    await env.reset(task_id="multi_step_easy_pagination")
    obs = await env.step(shortcut)
    assert obs.error is not None and obs.error.ename == "NameError"
    assert (await env.grade()).score <= 0.05


@pytest.mark.parametrize("task_id", MULTI_STEP)
async def test_the_one_call_per_step_rule_cannot_be_reset_from_the_kernel(env, task_id):
    call = {"multi_step_easy_pagination": "fetch_orders()",
            "multi_step_medium_ratelimit": "get_events(1)",
            "multi_step_hard_ledger": "next_batch()"}[task_id]
    await env.reset(task_id=task_id)
    # Everything the old in-kernel limiter could be fooled with, then a second call.
    attack = f"""
{call}
current_step = lambda: -1
get_ipython().execution_count += 1
for name in {PRIVATE_NAMES!r}:
    globals().pop(name, None)
{call}
"""
    obs = await env.step(attack)
    assert obs.error is not None and obs.error.ename == "StepLimitError", obs.stderr
    assert [call["ok"] for call in obs.metadata["tool_calls"]] == [True, False]
    assert (await env.step(call)).status is StepStatus.OK  # the next step may call again


async def test_a_whole_walk_in_one_step_scores_nothing(env):
    loop = """
collected, page = [], fetch_orders()
collected.extend(page["orders"])
while page["next_cursor"]:
    page = fetch_orders(page["next_cursor"])
    collected.extend(page["orders"])
answer = {"orders": len(collected),
          "paid_total": round(sum(o["amount"] for o in collected if o["status"] == "paid"), 2)}
"""
    await env.reset(task_id="multi_step_easy_pagination")
    obs = await env.step(loop)
    assert obs.error is not None and obs.error.ename == "StepLimitError"
    assert (await env.grade()).score <= 0.05


async def test_the_rate_limit_holds_and_each_episode_gets_a_fresh_service(pool, no_leaks):
    async with KernelEnv(pool=pool) as first, KernelEnv(pool=pool) as second:
        await first.reset(task_id="multi_step_medium_ratelimit")
        await second.reset(task_id="multi_step_medium_ratelimit")
        # Refused once, and catchable by its name in agent code.
        caught = await first.step("try:\n    get_events(3)\nexcept RateLimited:\n    caught = 1\ncaught")
        assert caught.status is StepStatus.OK and caught.return_value == "1", caught.stderr
        served = await first.step("len(get_events(3))")
        assert served.status is StepStatus.OK and served.return_value == "7"
        # The other episode's service has its own state: its first request is refused too.
        other = await second.step("get_events(3)")
        assert other.error is not None and other.error.ename == "RateLimited"
        await first.reset(task_id="multi_step_medium_ratelimit")
        again = await first.step("get_events(3)")
        assert again.error is not None and again.error.ename == "RateLimited"


def test_a_service_must_say_what_it_exports():
    task = default_library().get("multi_step_easy_pagination")
    broken = Task(**{**task.model_dump(), "service": "def fetch():\n    return 1\n"})
    with pytest.raises(TaskFormatError, match="__all__"):
        TaskService(broken)
    hidden = Task(**{**task.model_dump(), "service": "__all__ = ['_data']\n_data = [1]\n"})
    with pytest.raises(TaskFormatError, match="not a function or an exception class"):
        TaskService(hidden)


async def test_a_forked_episode_goes_on_with_its_own_copy_of_the_service(no_leaks):
    task = default_library().get("multi_step_hard_ledger")  # the ledger serves each batch once
    async with KernelPool(size=0, sandbox="none") as pool, KernelEnv(pool=pool) as parent:
        await parent.reset(task_id=task.id)
        for cell in task.solution[:2]:  # the helpers, then the first batch
            assert (await parent.step(cell)).status is StepStatus.OK
        [child] = await parent.fork(1)
        async with child:
            for cell in task.solution[2:]:
                assert (await child.step(cell)).status is StepStatus.OK
            assert (await child.grade()).score == 1.0
        # The child's calls took nothing from the parent's ledger: it still gets every batch.
        for cell in task.solution[2:]:
            assert (await parent.step(cell)).status is StepStatus.OK
        assert (await parent.grade()).score == 1.0
