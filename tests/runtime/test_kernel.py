"""decode_message: the hot path's decoding of kernel messages, checked against jupyter_client's."""

from __future__ import annotations

import logging

import pytest
from jupyter_client.session import Session

from kernelenv.runtime.kernel import decode_message


def frames_of(session: Session, content: dict) -> list[bytes]:
    parent = session.msg_header("execute_request")
    return list(session.serialize(session.msg("execute_result", content=content, parent=parent)))


def test_decodes_like_session_deserialize():
    sender = Session(key=b"secret")
    frames = frames_of(sender, {"data": {"text/plain": "2"}, "execution_count": 1})
    ours = decode_message(Session(key=b"secret"), list(frames))
    theirs = Session(key=b"secret").deserialize(Session().feed_identities(list(frames))[1])
    for key in ("msg_id", "msg_type", "content", "metadata"):
        assert ours[key] == theirs[key]
    assert ours["parent_header"]["msg_id"] == theirs["parent_header"]["msg_id"]
    assert ours["header"]["session"] == theirs["header"]["session"]


def test_rejects_a_forged_or_replayed_message():
    sender = Session(key=b"secret")
    frames = frames_of(sender, {"data": {}})
    receiver = Session(key=b"secret")
    decode_message(receiver, list(frames))
    with pytest.raises(ValueError, match="duplicate signature"):
        decode_message(receiver, list(frames))
    forged = frames_of(sender, {"data": {}})
    forged[-1] = b'{"data": {"text/plain": "forged"}}'
    with pytest.raises(ValueError, match="invalid signature"):
        decode_message(Session(key=b"secret"), forged)
    with pytest.raises(ValueError, match="invalid signature"):
        decode_message(Session(key=b"other key"), frames_of(sender, {"data": {}}))


@pytest.mark.anyio
async def test_interrupt_and_kill_of_a_gone_kernel_are_logged_not_raised(caplog, no_leaks):
    from kernelenv import KernelPool

    async with KernelPool(size=0) as pool:
        kernel = await pool.acquire(timeout_s=60)
        try:
            # The kernel is shut down under the caller (as a close during a step does).
            await kernel.manager.shutdown_kernel(now=True)
            with caplog.at_level(logging.WARNING, logger="kernelenv.runtime.kernel"):
                await kernel.interrupt()
                await kernel.kill()
        finally:
            pool.release(kernel)
    messages = [r.getMessage() for r in caplog.records if r.name == "kernelenv.runtime.kernel"]
    assert any(f"interrupting kernel {kernel.kernel_id} failed" in m for m in messages), messages
    assert any(f"killing kernel {kernel.kernel_id} failed" in m for m in messages), messages


@pytest.mark.anyio
async def test_an_interrupt_that_beats_the_cell_is_sent_again(no_leaks):
    from kernelenv import KernelPool
    from kernelenv.models import StepStatus

    async with KernelPool(size=0) as pool:
        kernel = await pool.acquire(timeout_s=60)
        try:
            await kernel.execute("x = 1", timeout_s=60)
            # A budget so short that the interrupt leaves before the kernel has read the
            # request: an idle ipykernel ignores it, so only a second one stops the cell
            # (else the grace runs out and the kernel is replaced).
            outcome = await kernel.execute(
                "import time; time.sleep(30)", timeout_s=0.0001, interrupt_grace_s=15
            )
            assert outcome.observation.status is StepStatus.TIMEOUT
            assert outcome.observation.metadata["kernel_replaced"] is False
            assert (await kernel.execute("x", timeout_s=60)).observation.return_value == "1"
        finally:
            pool.release(kernel)
