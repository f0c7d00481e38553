"""Which test module of tests/docs/ runs the blocks of which documentation pages.

A module a few pages, so that pytest-xdist (``--dist loadfile``) spreads them over its workers;
the pages of a module share one working directory, in this order.
"""

from __future__ import annotations

GROUPS = {
    "getting_started": ["docs/index.md", "docs/getting-started.md", "docs/cli.md"],
    "episodes": ["docs/episodes.md", "docs/template-kernels.md", "docs/live-fork.md"],
    "tasks": ["docs/tasks.md", "docs/datasets.md"],
    "notebooks": ["docs/notebooks.md"],
    "server": ["docs/server.md", "docs/playground.md"],
    "tools": ["docs/tools.md"],
    "integrations": ["docs/integrations.md"],
    "scale": ["docs/scale.md"],
    "in_depth": ["docs/security.md", "docs/benchmarks.md", "docs/architecture.md",
                 "docs/development.md", "docs/troubleshooting.md"],
}
# At most this many blocks of the whole site may be skipped, each saying why: TRL's training
# script (it needs torch and downloads a model; the next block runs the same calls).
MAX_SKIPPED = 1
