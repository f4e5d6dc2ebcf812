"""Exception types of sglrp-onnx, one per kind of failure, each with its CLI exit code.

The command line turns any :class:`SglrpError` into one line on stderr (``error: ...``) and the
exit code of its class; no traceback is shown for these. The table of codes is in
``docs/errors.md`` and is printed by ``sglrp-onnx --help``.
"""

from __future__ import annotations


class SglrpError(Exception):
    """Base class of every error that sglrp-onnx reports to the user."""

    exit_code = 1


class InternalError(SglrpError):
    """Unexpected internal error (a bug: please report it with the traceback from --debug)."""

    exit_code = 1


class UsageError(SglrpError):
    """Wrong or contradictory options (e.g. ``--contrast`` with ``--method lrp``)."""

    exit_code = 2


class ModelLoadError(SglrpError):
    """A model file is missing, unreadable, truncated, not ONNX, or fails the ONNX checker."""

    exit_code = 3


class UnsafeModelError(SglrpError):
    """A model refers to data outside its own folder, or declares absurd sizes."""

    exit_code = 4


class UnsupportedModelError(SglrpError):
    """The model is valid ONNX but not something the engine can explain.

    Examples: an operator without a relevance rule on the path from the image to the logits, a
    quantised model, a dtype other than float32, no classifier output.
    """

    exit_code = 5


class RuleError(SglrpError):
    """A rule file or rule override is malformed, or a rule lacks its parameters (zbox bounds)."""

    exit_code = 6


class InputError(SglrpError):
    """Runtime input is wrong: image shape or dtype, a target out of range, an unreadable image."""

    exit_code = 7


class OutputError(SglrpError):
    """An output cannot be written (existing file without ``--force``, unwritable folder)."""

    exit_code = 8


#: The exception class of each exit code (1 is also what an unexpected exception gives).
ERROR_CLASSES = (InternalError, UsageError, ModelLoadError, UnsafeModelError, UnsupportedModelError, RuleError, InputError, OutputError)

EXIT_CODES = {
    0: "success",
    **{cls.exit_code: cls.__doc__.splitlines()[0].replace("``", "'") for cls in ERROR_CLASSES},
    130: "interrupted (Ctrl-C)",
    141: "the reader of the standard output went away (broken pipe)",
}
"""Exit code -> one-line meaning, as printed by ``sglrp-onnx --help`` and listed in docs/errors.md."""

__all__ = ["SglrpError", "EXIT_CODES", "ERROR_CLASSES"] + [cls.__name__ for cls in ERROR_CLASSES]
