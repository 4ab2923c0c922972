"""Every example of the README runs as written against a live gateway (issue 19).

The examples are the README's ```bash and ```python blocks that talk to a gateway: they use
``$LETHE`` (its address), ``$KEY`` and ``$ADMIN`` (its keys), set by the README's first example. They
run in the README's order against ``lethe serve --model smollm2 --demo`` started with the keys the
README names (on a free port, with its own registry): the shell blocks as one bash script with
``set -e`` and every ``curl`` failing on an HTTP error, each Python block as a script. No other block
may call ``curl``: command synopses and setup commands are the only blocks left out.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from support import REPO

from lethe.benchmarks.server_harness import GatewayServer
from lethe.runtime.model import LanguageModel

FENCE = re.compile(r"^```(\w+)[^\n]*\n(.*?)^```", re.MULTILINE | re.DOTALL)
KEYS = {"KEY": "client-key", "ADMIN": "admin-key"}


def readme_blocks() -> list[tuple[str, str]]:
    """``(language, code)`` of every fenced block of the README, in order."""
    return [(m.group(1), m.group(2)) for m in FENCE.finditer((REPO / "README.md").read_text())]


def examples() -> list[tuple[str, str]]:
    """The blocks that talk to a gateway."""
    return [
        (lang, code)
        for lang, code in readme_blocks()
        if lang in ("bash", "python") and ("$LETHE" in code or 'environ["LETHE"]' in code)
    ]


def test_every_block_that_calls_the_gateway_is_an_example() -> None:
    found = examples()
    assert sum(lang == "bash" for lang, _ in found) >= 4 and sum(lang == "python" for lang, _ in found) >= 1
    for lang, code in readme_blocks():
        if (lang, code) not in found:
            assert "curl" not in code and "OpenAI(" not in code, code  # a call no test would run


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, smollm2: LanguageModel) -> GatewayServer:
    """SmolLM2 with the demo forget set and the README's keys."""
    from lethe.training.demo import shipped_demo

    if shipped_demo(smollm2) is None:
        pytest.skip("the shipped demo forget set does not load with this code (rebuild it with lethe train --demo)")
    root = tmp_path_factory.mktemp("readme")
    gateway = GatewayServer(
        root / "registry", model="smollm2", api_keys=KEYS["KEY"], admin_key=KEYS["ADMIN"], args=["--demo"],
        env={"LETHE_THREADS": "1"},
    ).start()  # fmt: skip
    yield gateway
    gateway.stop()


def test_the_readme_examples_run_as_written(server: GatewayServer, tmp_path: Path) -> None:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    shell = [code for lang, code in examples() if lang == "bash"]
    # The README's first example sets LETHE, KEY and ADMIN; here LETHE is this server's address.
    script = "\n".join(
        [
            "set -euo pipefail",
            'curl() { command curl --fail-with-body "$@"; }',  # any HTTP error fails the script
            *shell,
        ]
    ).replace("export LETHE=http://127.0.0.1:8000", f"export LETHE={server.base_url}")
    assert f"export LETHE={server.base_url}" in script
    ran = subprocess.run(["bash", "-c", script], cwd=REPO, env=env, capture_output=True, text=True, timeout=1800)
    print(ran.stdout[-4000:])
    assert ran.returncode == 0, (ran.stdout[-3000:], ran.stderr[-3000:])
    assert '"flagged":[{"forget_set_id":"demo-harry-potter"' in ran.stdout.replace(" ", "")
    for lang, code in examples():
        if lang == "python":
            python_env = {**env, "LETHE": server.base_url, **KEYS}
            done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=python_env, capture_output=True,
                                  text=True, timeout=600)  # fmt: skip
            assert done.returncode == 0, (code, done.stderr[-3000:])
