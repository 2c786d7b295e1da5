"""The command line: usage and request errors exit 2 naming the flag, input errors exit 1 naming the URI."""

from __future__ import annotations

from pathlib import Path

import pytest

from yolonas_pipeline.trainer.cli import main


def test_no_command_prints_usage(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "usage: python -m yolonas_pipeline.trainer {train,evaluate}" in capsys.readouterr().err


def test_an_invalid_request_names_the_field(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["train", "--dataset-uri", "d", "--output-uri", "o", "--num-classes", "0", "--input-size", "100"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "python -m yolonas_pipeline.trainer train: error:" in err
    assert "num_classes" in err and "input_size=100 must be a multiple of 32" in err, err


def test_an_unknown_flag_exits_with_argparse_usage(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(
            ["evaluate", "--dataset-uri", "d", "--train-result-uri", "r", "--output-uri", "o", "--checkpoint-uri", "c"]
        )
    assert exited.value.code == 2
    assert "unrecognized arguments: --checkpoint-uri c" in capsys.readouterr().err


def test_a_missing_train_result_is_an_input_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("YOLONAS_WORK_DIR", str(tmp_path / "work"))
    missing = tmp_path / "train" / "result.json"
    argv = [
        "evaluate",
        "--dataset-uri",
        str(tmp_path),
        "--train-result-uri",
        str(missing),
        "--output-uri",
        str(tmp_path / "out"),
    ]
    assert main(argv) == 1
    assert str(missing) in capsys.readouterr().err
