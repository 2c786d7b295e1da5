"""The trainer: ``python -m yolonas_pipeline.trainer train|evaluate --flags``, in the trainer environment only.

It depends on :mod:`yolonas_pipeline.contracts` (the requests it parses, the documents it reads and writes),
:mod:`~yolonas_pipeline.storage`, :mod:`~yolonas_pipeline.errors` and :mod:`~yolonas_pipeline.cpus`, never on the
orchestration side's modules (tests/yolonas_pipeline/trainer/test_imports.py checks it).

- :mod:`.cli`: the command line; :mod:`.logs`: stdout and redaction; :mod:`.compat`: super-gradients fixes
- :mod:`.sg`: the one door into super-gradients' models (build, NMS, preprocessing)
- :mod:`.data`, :mod:`.speed`, :mod:`.training`: the ``train`` command
- :mod:`.scoring` (numpy only), :mod:`.inference`, :mod:`.champion`, :mod:`.plots`, :mod:`.export`,
  :mod:`.evaluation`: the ``evaluate`` command
"""
