"""Every ```python block of README.md runs as written, against the loopback server.

Each block runs in a subprocess of its own with OCTOAI_BASE_URL pointing at
the test server and a dummy OCTOAI_TOKEN, and must exit 0 without printing
"None" where text belongs. A block that asks for tools gets a tool call back.
(typecheck/test_types.py runs `mypy --strict` on the same blocks.)
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import WORDS, completion_body, reply

ROOT = Path(__file__).resolve().parent
README = ROOT / "README.md"
_BLOCK = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)


def python_blocks(text=None):
    """[(line of the block's first code line in README.md, code)] for each ```python block."""
    text = README.read_text(encoding="utf-8") if text is None else text
    return [(text.count("\n", 0, match.start()) + 2, match.group(1)) for match in _BLOCK.finditer(text)]


BLOCKS = python_blocks()
TOOL_CALL = {
    "id": "call_1",
    "type": "function",
    "function": {"name": "get_weather", "arguments": '{"city": "Seattle"}'},
}
GUIDE = {  # what parse(response_format=Guide) gets back
    "city": "Seattle",
    "population": 755078,
    "sights": [{"name": "Space Needle", "kind": "landmark"}, {"name": "Discovery Park", "kind": "park"}],
}


def block_env(server, home):
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith(("OCTOAI_", "HTTP", "ALL_PROXY", "NO_PROXY"))}
    env.update(
        OCTOAI_BASE_URL=server.url + "/v1",
        OCTOAI_TOKEN="sk-readme-dummy",
        PYTHONPATH=str(ROOT),  # this checkout's octoai_lite.py, whatever is installed
        HOME=str(home),
    )
    return env


def test_the_readme_has_python_blocks():
    assert len(BLOCKS) >= 8
    assert python_blocks("text\n```python\nprint(1)\n```\n\n```sh\nls\n```\n") == [(3, "print(1)\n")]


@pytest.mark.parametrize("line, code", BLOCKS, ids=[f"README.md:{line}" for line, _ in BLOCKS])
def test_block_runs_as_written(server, tmp_path, line, code):
    if "tools=" in code:
        message = {"role": "assistant", "content": None, "tool_calls": [TOOL_CALL]}
        body = completion_body()
        body["choices"] = [{"index": 0, "message": message, "finish_reason": "tool_calls"}]
        server.script.append(reply(body=body))
    if ".parse(" in code:
        body = completion_body(json.dumps(GUIDE))
        body["choices"][0]["finish_reason"] = "stop"
        server.script.append(reply(body=body))
    script = tmp_path / f"readme_line_{line}.py"
    script.write_text(code, encoding="utf-8")
    result = subprocess.run(
        [sys.executable, str(script)],
        cwd=str(tmp_path),
        env=block_env(server, tmp_path),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, f"README.md line {line}:\n{result.stderr}"
    assert "None" not in result.stdout, result.stdout
    if "tools=" in code:
        assert result.stdout == "get_weather {'city': 'Seattle'}\n"
    if ".parse(" in code:
        assert result.stdout == "Seattle ['Space Needle', 'Discovery Park']\n"
        assert server.requests[0].json()["response_format"]["json_schema"]["name"] == "Guide"
    if "transport=" in code:  # "Testing your code": its handlers answer, not the server
        assert result.stdout == "tests passed\n" and not server.requests
    elif "stream=True" in code and "async" not in code:
        # The streamed text, exactly: the role-only first chunk and the finish chunk add nothing.
        assert result.stdout.startswith("".join(WORDS)), result.stdout
