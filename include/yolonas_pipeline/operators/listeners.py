"""An Airflow listener that sets the note of a finished training or preflight run (``PREFLIGHT``,
``mAP@.5:.95 0.412 PROMOTED (champion was 0.398)``, ``not promoted: ...``).

In Airflow 3 a task cannot set its run's note: the execution API takes a note only when a run is triggered, and
tasks have no database access. The scheduler has both: when it marks a run successful or failed it calls the
``on_dag_run_success``/``on_dag_run_failed`` hooks of the listeners that plugins register
(``plugins/yolonas_listeners.py``), with the run still in its session. This listener reads the preflight and
publish tasks' return values from that session and sets the note (:func:`yolonas_pipeline.run_notes.run_note`),
for this project's DAGs only. A note a person wrote (one with a user) is left alone. The same hooks run in
``dag.test()`` and when a run is marked through the REST API.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from airflow.listeners import hookimpl

from yolonas_pipeline.run_notes import NOTED_DAGS, PREFLIGHT_TASK, PUBLISH_TASK, run_note

if TYPE_CHECKING:
    from airflow.models.dagrun import DagRun
    from sqlalchemy.orm import Session

log = logging.getLogger(__name__)


@hookimpl
def on_dag_run_success(dag_run: DagRun, msg: str) -> None:
    note_run(dag_run, succeeded=True)


@hookimpl
def on_dag_run_failed(dag_run: DagRun, msg: str) -> None:
    note_run(dag_run, succeeded=False)


def note_run(dag_run: DagRun, *, succeeded: bool) -> None:
    """Set the run's note from its preflight and publish results; never fails the caller (the scheduler)."""
    if dag_run.dag_id not in NOTED_DAGS:
        return
    try:
        from sqlalchemy.orm import object_session

        session = object_session(dag_run)
        if session is not None:  # the scheduler's session: its commit stores the note with the run's state
            _set_note(session, dag_run, succeeded=succeeded)
            session.flush()
            return
        # dag.test() hands over a detached run: note it in a session of our own.
        from airflow.models.dagrun import DagRun
        from airflow.utils.session import create_session

        with create_session() as own:
            attached = own.query(DagRun).filter_by(dag_id=dag_run.dag_id, run_id=dag_run.run_id).one()
            _set_note(own, attached, succeeded=succeeded)
    except Exception:  # a note is not worth a scheduler crash
        log.exception("could not set the note of run %s", dag_run.run_id)


def _set_note(session: Session, dag_run: DagRun, *, succeeded: bool) -> None:
    existing = dag_run.dag_run_note
    if existing is not None and existing.user_id:
        return  # a person's note
    note = run_note(
        succeeded=succeeded,
        plan=_return_value(session, dag_run, PREFLIGHT_TASK),
        published=_return_value(session, dag_run, PUBLISH_TASK),
        failed_tasks=_failed_tasks(dag_run, session) if not succeeded else (),
    )
    if note is not None:
        dag_run.note = note
        log.info("run %s: note %r", dag_run.run_id, note)


def _return_value(session: Session, dag_run: DagRun, task_id: str) -> dict[str, Any] | None:
    from airflow.models.xcom import XComModel
    from sqlalchemy import select

    row = session.execute(
        select(XComModel).where(
            XComModel.dag_run_id == dag_run.id,
            XComModel.task_id == task_id,
            XComModel.key == "return_value",
            XComModel.map_index == -1,
        )
    ).scalar_one_or_none()
    value = XComModel.deserialize_value(row) if row is not None else None
    return value if isinstance(value, dict) else None


def _failed_tasks(dag_run: DagRun, session: Session) -> list[str]:
    from airflow.utils.state import TaskInstanceState

    failed = dag_run.get_task_instances(state=[TaskInstanceState.FAILED], session=session)
    return sorted({ti.task_id for ti in failed})
