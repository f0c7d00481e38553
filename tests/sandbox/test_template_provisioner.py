"""The template provisioner's seam: which configs it serves, the kernelspec that selects it, and
a tool that only knows kernelspecs (nbclient) getting forked kernels from it."""

from __future__ import annotations

import nbformat
import pytest
from jupyter_client import AsyncKernelManager
from nbclient import NotebookClient

from kernelenv import KernelPool, SandboxConfig
from kernelenv.sandbox.config import bwrap_problem, limits_problem
from kernelenv.sandbox.kernelspec import kernel_spec
from kernelenv.sandbox.template_provisioner import TEMPLATE_PROVISIONER_NAME, template_problem



def test_templates_serve_every_level():
    for level in ("none", "limits", "bwrap"):
        assert template_problem(SandboxConfig(level=level)) is None


def test_the_kernelspec_selects_the_template_and_keeps_argv_as_the_cold_launch():
    spec = kernel_spec(sandbox=SandboxConfig(level="none"), template_socket="/run/t.sock")
    provisioner = spec["metadata"]["kernel_provisioner"]
    assert provisioner["provisioner_name"] == TEMPLATE_PROVISIONER_NAME
    assert provisioner["config"]["template_socket"] == "/run/t.sock"
    assert provisioner["config"]["sandbox"]["level"] == "none"
    assert "launch_new_instance" in " ".join(spec["argv"])
    bwrap = kernel_spec(sandbox=SandboxConfig(level="bwrap"), template_socket="/run/t.sock",
                        template_root="/run")  # fmt: skip
    assert bwrap["metadata"]["kernel_provisioner"]["provisioner_name"] == TEMPLATE_PROVISIONER_NAME
    assert bwrap["metadata"]["kernel_provisioner"]["config"]["template_root"] == "/run"
    assert bwrap["interrupt_mode"] == "message"  # a cold fallback's signal would hit bwrap


@pytest.mark.anyio
@pytest.mark.parametrize("level", ["none", "limits"])
async def test_nbclient_gets_forked_kernels_from_the_pools_kernelspec(level, tmp_path, no_leaks):
    if level == "limits" and limits_problem() is not None:
        pytest.skip(limits_problem())
    async with KernelPool(size=0, sandbox=level, launch="template") as pool:
        pool.release(await pool.acquire())  # the template is up

        class Client(NotebookClient):
            def create_kernel_manager(self) -> AsyncKernelManager:
                self.km = AsyncKernelManager(
                    kernel_name=self.kernel_name, kernel_spec_manager=pool.spec_manager,
                    transport="ipc", ip=str(tmp_path / "kernel"),
                    connection_file=str(tmp_path / "connection.json"),
                )  # fmt: skip
                return self.km

        notebook = nbformat.v4.new_notebook()
        notebook.cells = [nbformat.v4.new_code_cell("import os\nprint(6 * 7, os.getppid())")]
        client = Client(notebook, kernel_name=pool.kernel_name,
                        resources={"metadata": {"path": str(tmp_path)}},
                        shutdown_kernel="immediate")  # fmt: skip
        done = await client.async_execute()
        answer, parent = done.cells[0].outputs[0]["text"].split()
        assert answer == "42"
        assert int(parent) == pool.template.pid  # forked by the template, not started cold


@pytest.mark.anyio
async def test_a_bwrap_kernel_outside_the_pools_directory_starts_cold_and_says_so(
    tmp_path, caplog, no_leaks
):
    """A bwrap template sees only its pool's directory: nbclient's own paths are elsewhere."""
    if bwrap_problem() is not None:
        pytest.skip(bwrap_problem())
    async with KernelPool(size=0, sandbox="bwrap", launch="template") as pool:
        pool.release(await pool.acquire())  # the template is up
        km = AsyncKernelManager(
            kernel_name=pool.kernel_name, kernel_spec_manager=pool.spec_manager,
            transport="ipc", ip=str(tmp_path / "kernel"),
            connection_file=str(tmp_path / "connection.json"),
        )  # fmt: skip
        await km.start_kernel(cwd=str(tmp_path))
        try:
            assert not km.provisioner.forked
            assert "not in the template's view" in caplog.text and "cold" in caplog.text
            client = km.client()
            client.start_channels()
            try:
                await client.wait_for_ready(timeout=60)  # a live kernel all the same
            finally:
                client.stop_channels()
        finally:
            await km.shutdown_kernel(now=True)
