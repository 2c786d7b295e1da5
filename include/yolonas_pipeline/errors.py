"""Errors the stages raise for input a user can fix.

Each message names the field, file or value that was wrong and what would have been accepted;
operators let them propagate unchanged so the Airflow task log shows the message as written.
"""

from __future__ import annotations


class StageInputError(ValueError):
    """Bad input to a stage: a missing path, an unknown column, a refused credential."""


class CheckpointError(StageInputError):
    """A checkpoint that cannot be used: not a checkpoint, unsafe, or inconsistent with the run."""
