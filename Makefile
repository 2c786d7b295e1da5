# The two commands of the README, plus the pieces they are made of.
AIRFLOW_PY := .venvs/airflow/bin/python
PYTEST_ARGS ?=

.PHONY: demo test setup stop status lint

demo: setup  ## set everything up and run the training DAG on the embedded default
	PYTHONPATH=include $(AIRFLOW_PY) -m yolonas_pipeline.embedded demo

test: setup  ## set up and run the test suite
	PYTHONPATH=include $(AIRFLOW_PY) -m pytest $(PYTEST_ARGS)

setup:
	./scripts/setup.sh

stop:
	PYTHONPATH=include $(AIRFLOW_PY) -m yolonas_pipeline.embedded down

status:
	PYTHONPATH=include $(AIRFLOW_PY) -m yolonas_pipeline.embedded status

lint: setup  ## ruff and the type checker (mypy --strict on include/, configured in pyproject.toml)
	.venvs/airflow/bin/ruff check . && .venvs/airflow/bin/ruff format --check include/yolonas_pipeline dags plugins tests
	.venvs/airflow/bin/mypy include/yolonas_pipeline
