"""The one root of every error agman raises on purpose, and its two kinds.

Anything agman raises for a reason a user can act on derives from :class:`AgmanError`; the
command line catches that class once (``agman.cli.main``), prints the message without a
traceback and exits with the error's ``exit_code``.  Any other exception is a bug and keeps its
traceback.

* :class:`UsageError` (exit 2): the request cannot be carried out as asked — an unknown option,
  config key, model, attribute, item or split; a path argument that does not exist; an output that
  already exists without ``--resume``/``--force``; arguments that contradict each other.
* :class:`AgmanError` itself and its other subclasses (exit 1): what was asked is fine, but the
  files or the machine are not — a malformed dataset file, an unreadable image, a damaged
  checkpoint or index, missing weights, a full disk.

Domain errors (``DatasetError``, ``ConfigError``, ``CheckpointError`` ...) live beside the code
that raises them and derive from one of these two; several also derive from the built-in class
they replaced (``ValueError``, ``KeyError``, ``RuntimeError``) so ``except ValueError`` callers
keep working.
"""
from __future__ import annotations


class AgmanError(Exception):
    """Something in the inputs, the files or the machine is wrong (exit code 1)."""

    exit_code = 1

    def __str__(self) -> str:  # KeyError would repr() its message; show it as written
        return str(self.args[0]) if len(self.args) == 1 else super().__str__()


class UsageError(AgmanError):
    """The command asked for something that cannot be done as asked (exit code 2)."""

    exit_code = 2


class NotFoundError(UsageError, FileNotFoundError):
    """A path the user named does not exist (a checkpoint, data root, image, index folder)."""


class AlreadyExistsError(UsageError, FileExistsError):
    """An output already holds a result; the message says how to resume or overwrite it."""


class UnknownNameError(UsageError, KeyError):
    """A name (attribute, item, split, model, grid) is not one of those that exist; the message lists them."""


class InvalidValueError(UsageError, ValueError):
    """An argument or option has a value outside what is allowed; the message says what was expected."""
