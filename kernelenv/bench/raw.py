"""The floor: a cell run through plain async jupyter_client, with nothing of kernelenv in the way."""

from __future__ import annotations

from typing import Any

from jupyter_client.asynchronous.client import AsyncKernelClient


async def raw_execute(client: AsyncKernelClient, code: str) -> dict[str, Any]:
    """Run ``code`` as a jupyter_client user would, waiting for the reply and the idle status.

    Returns:
        The IOPub ``stream`` texts joined under ``"stdout"`` and the reply's ``"status"``
        (enough for the load test to check what the cell printed).
    """
    msg_id = client.execute(code)
    reply: dict[str, Any] | None = None
    idle = False
    stdout: list[str] = []
    while reply is None or not idle:
        if reply is None:
            msg = await client.get_shell_msg()
            if msg["parent_header"].get("msg_id") == msg_id:
                reply = msg
        if not idle:
            msg = await client.get_iopub_msg()
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            if msg["msg_type"] == "stream" and msg["content"].get("name") == "stdout":
                stdout.append(msg["content"]["text"])
            idle = msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle"
    return {"stdout": "".join(stdout), "status": reply["content"]["status"]}
