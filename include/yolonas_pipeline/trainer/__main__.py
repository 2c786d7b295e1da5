"""``python -m yolonas_pipeline.trainer train|evaluate --flags``: the trainer command (pod and local subprocess)."""

from yolonas_pipeline.trainer.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
