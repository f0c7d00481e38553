"""Graded tasks: the task notebook format, libraries of them, a task inside an episode,
grading in fresh kernels, review scoring, validation, the ``kernelenv tasks`` command and the
pytest plugin."""
