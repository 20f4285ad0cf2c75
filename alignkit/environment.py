"""What a run ran on: library versions, the CPU or GPU, and the thread count.

A result holds for the code *and* the machine that produced it: the same commit can give
different floating-point results under another torch, diffusers or CPU, and a sampled
evaluation can turn such differences into a different win rate. Every start of a run appends
this description to ``environment.json`` in its run folder, and ``alignkit.report`` lists the
environments of the runs it compares.
"""

from __future__ import annotations

import json
import platform
from importlib import metadata
from pathlib import Path

import torch

import alignkit
from alignkit.durable import publish

ENVIRONMENT_FILE = "environment.json"
#: the libraries whose arithmetic or defaults reach a run's numbers
LIBRARIES = (
    "torch",
    "diffusers",
    "transformers",
    "peft",
    "accelerate",
    "numpy",
    "open_clip_torch",
    "safetensors",
)


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux, else what ``platform`` says)."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def describe_environment(device: torch.device | str) -> dict:
    """Versions, hardware and threads of this process, as plain JSON values."""
    device = torch.device(device)
    described = {
        "alignkit": alignkit.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "libraries": {name: _version(name) for name in LIBRARIES},
        "cpu": cpu_model(),
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
    }
    if device.type == "cuda":
        described["gpu"] = torch.cuda.get_device_name(device)
        described["cuda"] = torch.version.cuda
    return described


def read_starts(run_dir: Path) -> list[dict]:
    """The environments a run folder recorded, oldest first; none for an older or damaged file."""
    path = Path(run_dir) / ENVIRONMENT_FILE
    try:
        starts = json.loads(path.read_text())["starts"]
    except (OSError, ValueError, KeyError, TypeError):
        return []
    return starts if isinstance(starts, list) else []


def record_environment(run_dir: Path, device: torch.device | str) -> None:
    """Append this start's environment to the run folder's list (a resume may run elsewhere);
    written beside and renamed into place, so a crash leaves the previous list."""
    path = Path(run_dir) / ENVIRONMENT_FILE
    starts = [*read_starts(run_dir), describe_environment(device)]
    text = json.dumps({"starts": starts}, indent=1)
    publish(path, lambda temporary: temporary.write_text(text))


def environment_key(described: dict) -> str:
    """A one-line summary of what can change a run's numbers: libraries, CPU/GPU, threads."""
    libraries = ", ".join(
        f"{name} {version}" for name, version in described["libraries"].items() if version
    )
    hardware = described.get("gpu") or described["cpu"]
    threads = described["torch_threads"]
    return f"{libraries}; {hardware}; {threads} thread{'s' * (threads != 1)}"
