import os

import pytest
import torch

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def pytest_addoption(parser):
    parser.addoption(
        "--device",
        action="store",
        default="cpu",
        help="device for the device-aware tests (the conformance suite): cpu (default), cuda, cuda:1, ...",
    )


def pytest_configure(config):
    name = config.getoption("--device")
    try:
        torch.device(name)
    except RuntimeError as e:
        raise pytest.UsageError(f"--device: expected a torch device such as cpu or cuda, got {name!r} ({e})") from None


@pytest.fixture(scope="session")
def device(request) -> torch.device:
    """The torch device chosen with ``pytest --device`` (default cpu). Tests using it are skipped
    when that device is absent (``--device cuda`` on a machine without CUDA)."""
    name = request.config.getoption("--device")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        pytest.skip(f"--device {name}: CUDA is not available on this machine")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        pytest.skip(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) here")
    return dev


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
