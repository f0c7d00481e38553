"""A cell that forges its own ``execute_reply`` (the host cannot tell it from a real one: agent
code holds the kernel's session key) ends its step early and runs on. What it cannot do is eat
the next step quietly: that step says the kernel never started it, the kernel is replaced, and
the episode goes on."""

from __future__ import annotations

import pytest

from kernelenv import KernelEnv, KernelPool
from kernelenv.models import StepStatus
from kernelenv.sandbox.config import bwrap_problem

pytestmark = pytest.mark.anyio

FORGER = '''
import threading, time
kernel = get_ipython().kernel
parent = kernel.get_parent()

def forge():
    time.sleep(0.3)
    kernel.session.send(kernel.iopub_socket, "stream", {"name": "stdout", "text": "forged\\n"},
                        parent=parent, ident=kernel._topic("stream"))
    kernel.session.send(kernel.shell_stream, "execute_reply",
                        {"status": "ok", "execution_count": 1, "user_expressions": {},
                         "payload": []},
                        parent=parent, ident=kernel._parent_ident["shell"])
    kernel.session.send(kernel.iopub_socket, "status", {"execution_state": "idle"},
                        parent=parent, ident=kernel._topic("status"))

threading.Thread(target=forge).start()
while True:  # runs on after the forged reply
    time.sleep(0.05)
'''


@pytest.mark.parametrize("level", [
    "none",
    pytest.param("bwrap", marks=pytest.mark.skipif(bwrap_problem() is not None,
                                                    reason="no bubblewrap")),
])
async def test_a_forged_reply_cannot_hide_a_cell_that_runs_on(level, no_leaks):
    async with KernelPool(size=0, sandbox=level) as pool, KernelEnv(pool=pool) as env:
        await env.reset()
        await env.step("x = 1")
        forged = await env.step(FORGER, timeout_s=30)
        assert forged.status is StepStatus.OK and forged.stdout == "forged\n"  # it fooled itself
        eaten = await env.step("x + 1", timeout_s=3)
        assert eaten.status is StepStatus.TIMEOUT
        assert eaten.metadata["earlier_cell_ran_on"] is True
        assert eaten.metadata["kernel_replaced"] is True
        assert "still running an earlier cell" in eaten.error.evalue
        after = await env.step("1 + 1")
        assert after.status is StepStatus.OK and after.return_value == "2"
