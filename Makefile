# The two commands of the README, plus the pieces they are made of.
AIRFLOW_PY := .venvs/airflow/bin/python
PYTEST_ARGS ?=
# The embedded stack of this checkout; STACK_ROOT=DIR manages the one under DIR (.airflow/, .run/, .data/) instead.
STACK_ROOT ?=
EMBEDDED := PYTHONPATH=include $(AIRFLOW_PY) -m yolonas_pipeline.embedded $(if $(STACK_ROOT),--root $(STACK_ROOT))

.PHONY: demo test setup stop status clean-data lint

demo: setup  ## set everything up and run the training DAG on the embedded default
	$(EMBEDDED) demo

test: setup  ## set up and run the test suite
	PYTHONPATH=include $(AIRFLOW_PY) -m pytest $(PYTEST_ARGS)

setup:
	./scripts/setup.sh

stop:  ## stop every component of the embedded stack; the database and the S3 objects stay in .data/
	$(EMBEDDED) down

status:  ## every component of the embedded stack with its health (exit status 1 when one is not healthy)
	$(EMBEDDED) status

clean-data:  ## stop the embedded stack and DELETE its data: database, S3 objects and credentials, Airflow home, logs
	$(EMBEDDED) purge

lint: setup  ## ruff and the type checker (mypy --strict on include/, configured in pyproject.toml)
	.venvs/airflow/bin/ruff check . && .venvs/airflow/bin/ruff format --check include/yolonas_pipeline dags plugins tests
	.venvs/airflow/bin/mypy include/yolonas_pipeline
