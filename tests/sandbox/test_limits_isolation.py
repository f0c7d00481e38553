"""At level ``limits`` one episode cannot listen in on another's kernel.

Found by an outside red team: Landlock does not cover ``connect()`` on a socket file, so a
kernel that found another episode's ``run`` folder (in ``/proc/self/mountinfo``) subscribed to
its IOPub and read its code and outputs as they ran. Kernels at ``limits`` now bind abstract
sockets, which Landlock's scoping (ABI 6) keeps other sandboxes from connecting to.
"""

from __future__ import annotations

import anyio
import pytest

from kernelenv import KernelEnv, KernelPool
from kernelenv.models import StepStatus
from kernelenv.sandbox.config import SandboxConfig
from kernelenv.sandbox.landlock import landlock_abi

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.skipif(landlock_abi() < 6, reason="Landlock ABI 6 (scoped sockets) is needed"),
]

SNOOP = r'''
import os, socket, time, zmq
mine = os.path.dirname(os.path.dirname(os.getcwd()))
paths = []
for line in open('/proc/self/mountinfo'):
    point = line.split()[4]
    if point.endswith('/fs') and os.path.dirname(point) != mine:
        run = os.path.join(os.path.dirname(point), 'run')
        paths += [f'{run}/kernel-{port}' for port in range(1, 6)]
abstract = sorted({line.split()[-1][1:] for line in open('/proc/net/unix')
                   if line.split()[-1].startswith('@kernelenv-')})
refused = 0
for name in abstract:
    try:
        with socket.socket(socket.AF_UNIX) as s:
            s.connect('\0' + name)
    except PermissionError:
        refused += 1
context = zmq.Context.instance()
subs = []
for endpoint in [f'ipc://{p}' for p in paths] + [f'ipc://@{n}' for n in abstract]:
    sub = context.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b'')
    sub.connect(endpoint)
    subs.append(sub)
poller = zmq.Poller()
for sub in subs:
    poller.register(sub, zmq.POLLIN)
heard = b''
deadline = time.time() + 6
while time.time() < deadline:
    for sub, _ in poller.poll(200):
        heard += b'|'.join(sub.recv_multipart())
print(len(abstract), refused, b'VICTIM-SECRET' in heard)
'''


async def test_a_kernel_cannot_subscribe_to_another_episodes_output(no_leaks):
    config = SandboxConfig(level="limits")
    async with KernelPool(size=0, sandbox=config) as pool, \
            KernelEnv(pool=pool) as victim, KernelEnv(pool=pool) as attacker:
        await victim.reset()
        await attacker.reset()

        async def victim_works() -> None:
            for number in range(8):
                await anyio.sleep(0.5)
                await victim.step(f"print('VICTIM-SECRET-{number}')")

        async with anyio.create_task_group() as group:
            group.start_soon(victim_works)
            snooped = await attacker.step(SNOOP, timeout_s=30)
        assert snooped.status is StepStatus.OK, snooped.stderr
        found, refused, heard = snooped.stdout.split()
        # The victim's five sockets are there to find (beside the attacker's own five), and
        # none can be reached.
        assert int(found) >= 10 and int(refused) == int(found) - 5
        assert heard == "False"
        assert (await victim.step("1 + 1")).return_value == "2"
