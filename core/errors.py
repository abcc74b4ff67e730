"""Typed errors of the core.

Every error a user can cause is a ``CoreError`` subclass whose message says what is wrong
and how to fix it. The command line turns them into one clear line and exit code 1
(``Cancelled``: 130); the QGIS tools turn them into a ``QgsProcessingException``.
"""
from __future__ import annotations


class CoreError(Exception):
    """Base class of every error the core raises on purpose."""

    exit_code: int = 1


class ConfigError(CoreError):
    """An option or combination of options is invalid (checked before any data is read)."""


class DataError(CoreError):
    """An input file is missing, unreadable or does not fit the task."""


class ResourceError(CoreError):
    """The machine ran out of something (memory, disk); the message suggests a smaller job."""


class TrainingError(CoreError):
    """Training cannot go on (e.g. the loss became NaN or infinite)."""


class Cancelled(CoreError):
    """The caller asked to stop; any last good checkpoint is already safely on disk."""

    exit_code = 130
