"""Episodes beyond the live env: the notebook export, the crash-safe journal, replay, and the
``kernelenv replay`` and ``recover`` commands."""
