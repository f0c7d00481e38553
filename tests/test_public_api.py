"""The public API is exactly what kernelenv.__all__ lists, and every name imports."""

from __future__ import annotations

import kernelenv


def test_every_exported_name_resolves():
    for name in kernelenv.__all__:
        assert getattr(kernelenv, name) is not None, name


def test_exception_tree_is_rooted_and_matches_builtins():
    from kernelenv import errors

    for name in dir(errors):
        obj = getattr(errors, name)
        if isinstance(obj, type) and issubclass(obj, Exception) and obj.__module__ == errors.__name__:
            assert issubclass(obj, kernelenv.KernelEnvError), name
    assert issubclass(kernelenv.PoolExhaustedError, TimeoutError)
    assert issubclass(kernelenv.UnknownTaskError, LookupError)
    assert issubclass(kernelenv.InvalidActionError, ValueError)


def test_unknown_task_error_suggests_close_names():
    err = kernelenv.UnknownTaskError("task_esy_1", ["task_easy_1", "task_hard_1", "fn_easy"])
    assert "task_easy_1" in str(err) and "Did you mean" in str(err)


def test_unknown_attribute_is_an_attribute_error():
    import pytest

    with pytest.raises(AttributeError):
        kernelenv.NoSuchThing  # noqa: B018
