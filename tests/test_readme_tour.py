"""The README's 5-minute tour runs as written, against `bflow dev`, on a fresh clone's files.

The tour is the ```bash block right after `<!-- tour -->` in README.md. This starts `bflow
dev` (the embedded default: SQLite in the working directory, an in-process broker) on a free
port in a temporary directory holding a copy of `examples/`, runs the tour there with
`bash -euo pipefail` and `BFLOW` pointing at that port, and checks the timeline it prints.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
TOUR = re.compile(r"<!-- tour -->\n```bash\n(?P<script>.*?)\n```", re.S)
START_SECONDS = 30
TOUR_SECONDS = 60


def tour_script() -> str:
    found = TOUR.findall((ROOT / "README.md").read_text(encoding="utf-8"))
    assert len(found) == 1, "README.md must hold exactly one ```bash block right after <!-- tour -->"
    return str(found[0])


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def tour_env(base_url: str) -> dict[str, str]:
    """No BFLOW_* setting (the embedded default), this venv's `bflow` and `python3` first on PATH."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BFLOW_")}
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env["BFLOW"] = base_url
    return env


def wait_ready(base_url: str, server: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + START_SECONDS
    while time.monotonic() < deadline:
        assert server.poll() is None, f"bflow dev exited ({server.returncode}):\n{log.read_text()}"
        try:
            with urllib.request.urlopen(f"{base_url}/api/v1/health/ready", timeout=2) as answer:
                if answer.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)
    raise AssertionError(f"bflow dev was not ready within {START_SECONDS} s:\n{log.read_text()}")


@pytest.fixture
def bflow_dev(tmp_path: Path) -> Iterator[str]:
    """`bflow dev` on a free port in tmp_path (which holds a copy of examples/); yield its URL."""
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    log = tmp_path / "bflow-dev.log"
    with log.open("wb") as out:
        server = subprocess.Popen(
            [str(VENV_BIN / "bflow"), "dev", "--port", str(port), "--loglevel", "warning"],
            cwd=tmp_path,
            env=tour_env(base_url),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_ready(base_url, server, log)
        yield base_url
    finally:
        server.send_signal(signal.SIGINT)  # uvicorn's clean shutdown, then the worker and Beat stop
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=5)


def test_the_readme_tour_approves_a_leave_request(bflow_dev: str, tmp_path: Path):
    if shutil.which("curl") is None:
        pytest.skip("the tour uses curl, which is not installed")
    script = tmp_path / "tour.sh"
    script.write_text(tour_script() + "\n", encoding="utf-8")
    result = subprocess.run(
        ["bash", "-euo", "pipefail", str(script)],
        cwd=tmp_path,
        env=tour_env(bflow_dev),
        capture_output=True,
        text=True,
        timeout=TOUR_SECONDS,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert "LR-1001 completed" in lines, result.stdout
    timeline = lines[lines.index("LR-1001 completed") + 1 :]
    approvals = [line.split()[-1] for line in timeline if "task.approve" in line]
    assert sorted(approvals) == ["lan", "mai", "minh"], result.stdout
    assert timeline[-1].split()[1:] == ["runtime.completed"], result.stdout
