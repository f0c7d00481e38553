"""The template provisioner's seam: which configs it serves, the kernelspec that selects it, and
a tool that only knows kernelspecs (nbclient) getting forked kernels from it."""

from __future__ import annotations

import nbformat
import pytest
from jupyter_client import AsyncKernelManager
from nbclient import NotebookClient

from kernelenv import KernelPool, SandboxConfig
from kernelenv.sandbox.kernelspec import kernel_spec
from kernelenv.sandbox.template_provisioner import TEMPLATE_PROVISIONER_NAME, template_problem

# A level whose kernels come from a template (limits and bwrap start cold for now).
TEMPLATE_LIMITS = SandboxConfig(level="none")


def test_templates_serve_none_but_not_limits_or_bwrap_yet():
    assert template_problem(SandboxConfig(level="none")) is None
    assert "Landlock" in template_problem(SandboxConfig(level="limits"))
    assert "namespaces" in template_problem(SandboxConfig(level="bwrap"))


def test_the_kernelspec_selects_the_template_and_keeps_argv_as_the_cold_launch():
    spec = kernel_spec(sandbox=SandboxConfig(level="none"), template_socket="/run/t.sock")
    provisioner = spec["metadata"]["kernel_provisioner"]
    assert provisioner["provisioner_name"] == TEMPLATE_PROVISIONER_NAME
    assert provisioner["config"]["template_socket"] == "/run/t.sock"
    assert provisioner["config"]["sandbox"]["level"] == "none"
    assert "launch_new_instance" in " ".join(spec["argv"])
    bwrap = kernel_spec(sandbox=SandboxConfig(level="bwrap"), template_socket="/run/t.sock")
    assert bwrap["metadata"]["kernel_provisioner"]["provisioner_name"] == "kernelenv-sandbox"


@pytest.mark.anyio
async def test_nbclient_gets_forked_kernels_from_the_pools_kernelspec(tmp_path, no_leaks):
    async with KernelPool(size=0, sandbox=TEMPLATE_LIMITS, launch="template") as pool:
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
