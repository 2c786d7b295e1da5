"""Which wheels bench/gpu_check.sh needs carried to a GPU machine that has its own torch, and how to fetch them.

The trainer environment's lock (requirements/trainer.lock) minus what the device's image already provides: its
torch stack (torch, torchvision, triton, the CUDA/NVIDIA libraries) always, and every package named in
``--provided`` (a ``pip list --format=freeze`` or plain names, one a line; default: the list the device notes
give for the nvidia-h200 image, :data:`DEVICE_IMAGE`). Packages whose version the trainer needs pinned
(:data:`PINNED`: torchmetrics 0.8.0 for super-gradients, setuptools < 82 for pkg_resources) are carried even when
the image has another version: ``pip install --target /tmp/site`` puts them first on ``PYTHONPATH``.

    python3 bench/gpu_wheels.py                 # the NAME==VERSION list and the pip download command
    python3 bench/gpu_wheels.py --download      # run that command here (fills .whl/, see the 64 MiB limit)

Then, on the device: ``bench/gpu_check.sh .whl`` (it installs them with
``pip install --no-index --no-deps --target /tmp/site .whl/*.whl``).
"""

from __future__ import annotations

import argparse
import re
import shlex
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LOCK = REPO / "requirements" / "trainer.lock"
#: The GPU machine brings its own torch build; never carry these (nor any nvidia-*/cuda-* library).
DEVICE_TORCH = {"torch", "torchvision", "triton", "sympy", "mpmath", "networkx", "filelock", "fsspec"}
#: Needed at exactly the locked version whatever the image has.
PINNED = {"torchmetrics", "setuptools"}
#: Published as source only (pure Python): built into a wheel here with ``pip wheel`` instead of downloaded.
SDIST_ONLY = {"antlr4-python3-runtime", "stringcase"}
#: The trainer's own tests only.
NOT_NEEDED = {"pytest", "iniconfig", "pluggy", "pygments"}
#: The nvidia-h200 image's packages (device notes, KINDS.md, as read on 2026-11-17).
DEVICE_IMAGE = """
absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build certifi
charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings cuda-core cuda-pathfinder
cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils execnet filelock flatbuffers flax
fonttools formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx huggingface-hub humanize
hypothesis idna imageio iniconfig interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin jaxlib jaxtyping jinja2
joblib kiwisolver lazy-loader lightning lightning-utilities linear-operator lineax llvmlite lxml markdown
markdown-it-py markupsafe matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack multidict multipledispatch
mypy-extensions nanobind narwhals networkx ninja numba numba-cuda numpy numpyro nvidia-ml-py onnx onnx-ir
onnxruntime onnxscript opencv-python-headless optax opt-einsum opt-einsum-fx optimistix orbax-checkpoint packaging
pandas pathspec patsy peft pillow pip pluggy portalocker prometheus-client propcache protobuf psutil pyarrow
pybind11 py-cpuinfo pygments pyparsing pyproject-hooks pyre-extensions pytest pytest-benchmark pytest-cov
pytest-mock pytest-timeout pytest-xdist python-dateutil pytorch-lightning pyyaml regex requests rich sacrebleu
safetensors scikit-build-core scikit-image scikit-learn scipy seaborn sentencepiece sentence-transformers
setuptools shellingham simplejson six sortedcontainers statsmodels sympy tabulate tensorboard
tensorboard-data-server tensorstore threadpoolctl tifffile tiktoken timm tokenizers toolz torch torchaudio
torchdiffeq torch-geometric torchmetrics torchvision tqdm transformers treescope triton typer typing-extensions
typing-inspect urllib3 uvloop wadler-lindig werkzeug wheel wrapt xarray xxhash yarl zipp
"""
#: pip download for CPython 3.12 on x86-64 Linux (the device notes' command).
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
             "manylinux1_x86_64")  # fmt: skip


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def locked(lock: Path = LOCK) -> dict[str, str]:
    """``{canonical name: "Name==version"}`` from a pip-compile lock (comments and hashes ignored)."""
    pins = {}
    for line in lock.read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)", line.strip())
        if match:
            pins[canonical(match.group(1))] = f"{match.group(1)}=={match.group(2)}"
    return pins


def provided(text: str) -> set[str]:
    return {canonical(re.split(r"[=<>~ ]", token, maxsplit=1)[0]) for token in text.split() if token.strip()}


def wheels_to_carry(pins: dict[str, str], image: set[str]) -> list[str]:
    carry = []
    for name, pin in sorted(pins.items()):
        if name in DEVICE_TORCH or name.startswith(("nvidia-", "cuda-")) or name in NOT_NEEDED:
            continue
        if name in image and name not in PINNED:
            continue
        carry.append(pin)
    return carry


def download_commands(pins: list[str], dest: str = ".whl") -> list[list[str]]:
    """``pip download`` of the binary wheels for the device's Python, and ``pip wheel`` of the source-only ones."""
    binary = [pin for pin in pins if canonical(pin.split("==")[0]) not in SDIST_ONLY]
    source = [pin for pin in pins if canonical(pin.split("==")[0]) in SDIST_ONLY]
    commands = [download_command(binary, dest)]
    if source:
        commands.append([sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", dest, *source])
    return commands


def download_command(pins: list[str], dest: str = ".whl") -> list[str]:
    argv = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version", "3.12",
            "--implementation", "cp"]  # fmt: skip
    for platform in PLATFORMS:
        argv += ["--platform", platform]
    return [*argv, "-d", dest, *pins]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--provided", type=Path, help="the device's `pip list --format=freeze` (default: notes)")
    parser.add_argument("--dest", default=".whl")
    parser.add_argument("--download", action="store_true", help="run the pip download command")
    args = parser.parse_args(argv)
    image = provided(args.provided.read_text() if args.provided else DEVICE_IMAGE)
    pins = wheels_to_carry(locked(), image)
    print(f"# {len(pins)} wheels to carry (trainer.lock minus the device image's packages):")
    print("\n".join(pins))
    commands = download_commands(pins, args.dest)
    print("\n# fetch them (in the repository root; `echo /.whl/ >> .git/info/exclude` first):")
    for command in commands:
        print(shlex.join(command))
    if args.download:
        for command in commands:
            status = subprocess.run(command, cwd=REPO).returncode
            if status:
                return status
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
