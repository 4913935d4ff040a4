"""What a user's type checker sees: `mypy --strict` on code that uses octoai_lite.

    python -m pytest typecheck

Not part of the default `python -m pytest` (pyproject's norecursedirs): it
builds a wheel and a venv. mypy comes from the running environment (the
`test` extra has it), else from a venv made here. Checked:

- user_script.py, which uses every public API (sync and async, streamed and
  not), with octoai_lite.py copied beside it, and again against the package
  pip-installed into a fresh venv (PEP 561: no vendored copy, no
  "missing library stubs or py.typed marker"): exit 0, and each
  `reveal_type(...)` line reveals the type its `# expect:` comment names;
- a misspelt attribute (`completion.choises`) and a stream used as a
  completion are errors;
- every ```python block of README.md passes `mypy --strict`.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SCRIPT = HERE / "user_script.py"
sys.path.insert(0, str(ROOT))
from test_readme import python_blocks  # noqa: E402  (the README's blocks, found one way for both suites)

EXPECT = re.compile(r"reveal_type\(.*#\s*expect:\s*(?P<type>.+?)\s*$")
REVEALED = re.compile(r'^(?P<file>[^:]+):(?P<line>\d+): note: Revealed type is "(?P<type>.*)"$')
UNTYPED = ("import-untyped", "py.typed", "missing library stubs", "import-not-found", "Cannot find implementation")


# -- mypy and its output -------------------------------------------------------


def venv_python(folder: Path) -> Path:
    return folder / ("Scripts" if os.name == "nt" else "bin") / "python"


@pytest.fixture(scope="session")
def mypy(tmp_path_factory):
    """The command that runs mypy, and a cache folder shared by this session's runs."""
    cache = tmp_path_factory.mktemp("mypy-cache")
    if importlib.util.find_spec("mypy") is not None:
        return [sys.executable, "-m", "mypy", "--cache-dir", str(cache)]
    folder = tmp_path_factory.mktemp("mypy-venv")
    venv.create(folder, with_pip=True)
    install = [str(venv_python(folder)), "-m", "pip", "install", "-q", "--disable-pip-version-check", "mypy"]
    subprocess.run(install, check=True, capture_output=True, timeout=600)
    return [str(venv_python(folder)), "-m", "mypy", "--cache-dir", str(cache)]


def clean_env():
    """No MYPYPATH or PYTHONPATH that could lead mypy to the checkout's octoai_lite.py."""
    return {k: v for k, v in os.environ.items() if k not in ("MYPYPATH", "PYTHONPATH") and not k.startswith("OCTOAI_")}


def run_mypy(mypy, folder, *args):
    command = [*mypy, "--strict", "--no-error-summary", "--show-error-codes", "--no-color-output", *args]
    result = subprocess.run(
        command, cwd=str(folder), env=clean_env(), capture_output=True, text=True, timeout=600, check=False
    )
    return result.returncode, result.stdout + result.stderr


def normalize(type_text):
    """One spelling for a revealed type: mypy 2 drops `builtins.`; `Union[A, B]` and `Optional[A]` become `A | B`."""
    text = type_text.replace("builtins.", "")
    for head in ("Union[", "Optional["):
        while True:
            start = re.search(r"(?<![\w.])" + re.escape(head), text)
            if start is None:
                break
            begin = start.end()
            depth, end = 1, begin
            while depth:
                depth += {"[": 1, "]": -1}.get(text[end], 0)
                end += 1
            parts, depth, part = [], 0, ""
            for char in text[begin : end - 1]:
                depth += {"[": 1, "]": -1}.get(char, 0)
                if char == "," and depth == 0:
                    parts.append(part.strip())
                    part = ""
                else:
                    part += char
            parts.append(part.strip())
            if head == "Optional[":
                parts.append("None")
            text = text[: start.start()] + " | ".join(parts) + text[end:]
    return text


def expected_reveals(path):
    """{line number: type} from the `# expect:` comments of the reveal_type lines."""
    expected = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.lstrip().startswith("reveal_type("):
            match = EXPECT.search(line)
            assert match, f"{path.name}:{number}: reveal_type without `# expect: TYPE`"
            expected[number] = match.group("type")
    return expected


def check_reveals(output, script):
    expected = expected_reveals(script)
    revealed = {}
    for line in output.splitlines():
        match = REVEALED.match(line.strip())
        if match and Path(match.group("file")).name == script.name:
            revealed[int(match.group("line"))] = match.group("type")
    wrong = [
        f"{script.name}:{number}: expected {want!r}, mypy revealed {revealed.get(number)!r}"
        for number, want in sorted(expected.items())
        if normalize(revealed.get(number, "(nothing)")) != normalize(want)
    ]
    assert not wrong, "\n".join(wrong)
    assert sorted(revealed) == sorted(expected)


def errors(output):
    """mypy's error lines (the reveal_type notes and their context left out)."""
    return [line for line in output.splitlines() if ": error:" in line]


def test_normalize_spellings():
    assert normalize("builtins.list[builtins.str]") == normalize("list[str]") == "list[str]"
    assert normalize("Union[builtins.str, None]") == normalize("builtins.str | None") == "str | None"
    assert normalize("Optional[builtins.dict[builtins.str, Any]]") == "dict[str, Any] | None"
    assert normalize("Union[octoai_lite.ChatCompletion, octoai_lite.Stream]") == (
        "octoai_lite.ChatCompletion | octoai_lite.Stream"
    )
    assert normalize("builtins.list[Union[builtins.int, None]]") == "list[int | None]"


def test_user_script_has_expectations():
    expected = expected_reveals(SCRIPT)
    assert len(expected) > 60
    wanted = {
        "octoai_lite.ChatCompletion",
        "octoai_lite.Stream",
        "octoai_lite.AsyncStream",
        "octoai_lite.Client",
        "octoai_lite.AsyncClient",
        "builtins.list[builtins.str]",
        "builtins.str",
    }
    assert wanted <= set(expected.values())


# -- the vendored copy -----------------------------------------------------------


def test_vendored_copy_beside_the_script(mypy, tmp_path):
    shutil.copy(ROOT / "octoai_lite.py", tmp_path)
    shutil.copy(SCRIPT, tmp_path)
    status, output = run_mypy(mypy, tmp_path, "user_script.py")
    assert errors(output) == [], output
    assert status == 0, output
    check_reveals(output, tmp_path / "user_script.py")


NEGATIVE = '''\
from octoai_lite import Client

client = Client()
completion = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "Hi"}])
print(completion.choises)
stream = client.chat.completions.create(model="m", messages=[], stream=True)
print(stream.choices)
'''


def test_undeclared_attributes_are_errors(mypy, tmp_path):
    shutil.copy(ROOT / "octoai_lite.py", tmp_path)
    (tmp_path / "misspelt.py").write_text(NEGATIVE, encoding="utf-8")
    status, output = run_mypy(mypy, tmp_path, "misspelt.py")
    assert status == 1, output
    found = errors(output)
    assert len(found) == 2, output
    assert re.search(r'misspelt\.py:5: error: "ChatCompletion" has no attribute "choises".*\[attr-defined\]', found[0])
    assert re.search(r'misspelt\.py:7: error: "Stream" has no attribute "choices".*\[attr-defined\]', found[1])


def test_readme_blocks_pass_mypy_strict(mypy, tmp_path):
    blocks = python_blocks()
    assert blocks
    shutil.copy(ROOT / "octoai_lite.py", tmp_path)
    names = []
    for line, code in blocks:
        name = f"readme_line_{line}.py"
        (tmp_path / name).write_text(code, encoding="utf-8")
        names.append(name)
    status, output = run_mypy(mypy, tmp_path, *names)
    assert status == 0, output


# -- the installed package (PEP 561) ------------------------------------------------


@pytest.fixture(scope="session")
def installed(tmp_path_factory):
    """A fresh venv with the repo pip-installed (as a wheel); nothing else in it."""
    work = tmp_path_factory.mktemp("installed")
    folder = work / "venv"
    venv.create(folder, with_pip=True)
    python = venv_python(folder)
    build = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(work / "dist"), str(ROOT)]
    if importlib.util.find_spec("hatchling") is not None:  # the test extra: build offline with it
        build.insert(-1, "--no-build-isolation")
    done = subprocess.run(build, capture_output=True, text=True, timeout=600, check=False, env=clean_env())
    assert done.returncode == 0, done.stderr
    (wheel,) = (work / "dist").glob("octoai_lite-*.whl")
    install = [str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--disable-pip-version-check"]
    done = subprocess.run([*install, str(wheel)], capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr
    return python


def test_installed_package_layout_and_commands(installed, tmp_path):
    env = clean_env()
    where = subprocess.run(
        [str(installed), "-c", "import octoai_lite; print(octoai_lite.__file__)"],
        cwd=str(tmp_path), env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    package = Path(where.stdout.strip()).parent
    assert package.name == "octoai_lite" and "site-packages" in package.parts
    assert (package / "py.typed").is_file()
    assert (package / "__init__.py").read_bytes() == (ROOT / "octoai_lite.py").read_bytes()
    for command in ([str(installed), "-m", "octoai_lite", "--version"], [str(installed.parent / "octoai-lite"), "--version"]):
        result = subprocess.run(command, cwd=str(tmp_path), env=env, capture_output=True, text=True, check=False)
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith("octoai-lite ")


def test_installed_package_is_typed(mypy, installed, tmp_path):
    shutil.copy(SCRIPT, tmp_path)
    assert not (tmp_path / "octoai_lite.py").exists()
    status, output = run_mypy(mypy, tmp_path, "--python-executable", str(installed), "user_script.py")
    assert not [line for line in output.splitlines() if any(word in line for word in UNTYPED)], output
    assert errors(output) == [], output
    assert status == 0, output
    check_reveals(output, tmp_path / "user_script.py")
