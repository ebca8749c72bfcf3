"""The fuzz test's machinery: its profiles, one guarded CLI invocation, and the properties
every invocation keeps.

**Profiles** (``TEXTGEN_FUZZ``):

- ``fast`` (the default, run by ``make test``): a few dozen cases per test (about 210 in
  all, and the 53 known cases of ``test_known``), derandomized (the same cases every
  run), no shrinking, failing at the first broken property; about 30 s on 2 cores
  beside the session's toy run.
- ``long`` (``make soak``, or ``make soak-fuzz`` alone): 13,170 cases, random, with an
  example database under ``.hypothesis/``; about 30 minutes on 2 cores. A broken
  property is *recorded* and the run goes on, so one soak reports every kind of failure
  it met, each with a count and its first reproduction; the test fails at its end with
  that list. ``TEXTGEN_FUZZ_REPORT`` names a JSON file for the counts (default
  ``.hypothesis/fuzz-report.json``).
- ``shrink``: the fast cases, raising and shrinking each failure to a minimal one.

``TEXTGEN_FUZZ_EXAMPLES`` multiplies the number of cases of the profile (e.g. 0.5);
``TEXTGEN_FUZZ_RECORD=1`` records and goes on in any profile.

**Properties of every invocation** (:func:`check`):

- it ends with exit 0, or exit 1/2 with exactly one stderr line starting ``error:``
  (a command reading many seeds may give one per bad seed);
- never a traceback: ``result.exception`` is ``None`` or :class:`SystemExit`, and
  neither stream holds "Traceback (most recent call last)";
- never more memory than :data:`READ_BOUND` (2 GiB) of address space beyond what the
  process held before, for a command that does not train, :data:`TRAIN_BOUND` (4 GiB)
  for one that trains a tiny model; the limit is ``RLIMIT_AS``, so an allocation past it
  fails with ``MemoryError`` (or TensorFlow's ``ResourceExhaustedError``) instead of
  taking the machine; a subprocess' peak resident set stays under :data:`CHILD_RSS_BOUND`
  (``wait4``);
- never longer than :data:`TIME_LIMIT` seconds;
- never a change outside the run directory it was given: every file, link and folder
  under the case's folders (and the session's template runs) is hashed before and
  after; the changes must lie inside the paths the case allows;
- never a Python warning from textgen's own code on stderr.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import resource
import shlex
import shutil
import signal
import stat
import tempfile
import time
import warnings
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from click.testing import CliRunner
from hypothesis import HealthCheck, Phase, settings
from hypothesis.database import DirectoryBasedExampleDatabase

import textgen

ROOT = Path(os.path.abspath(__file__)).parent.parent  # the checkout: .hypothesis/ goes here
SOURCE = Path(textgen.__file__).parent.parent  # the textgen under test (for subprocesses)
PACKAGE = str(Path(textgen.__file__).parent) + os.sep

GiB = 1 << 30
READ_BOUND = 2 * GiB  # address space a command that does not train may add
TRAIN_BOUND = 4 * GiB  # ... one that trains a tiny model
CHILD_RSS_BOUND = 2 * GiB  # peak resident set of a textgen subprocess
TIME_LIMIT = 120.0  # seconds one in-process invocation may take

PROFILE = os.environ.get("TEXTGEN_FUZZ", "fast")
if PROFILE not in ("fast", "long", "shrink"):
    raise RuntimeError(f"TEXTGEN_FUZZ must be fast, long or shrink, not {PROFILE!r}")
LONG = PROFILE == "long"
RECORD = LONG or os.environ.get("TEXTGEN_FUZZ_RECORD") == "1"  # record and go on
SCALE = float(os.environ.get("TEXTGEN_FUZZ_EXAMPLES", "1"))
REPORT = Path(os.environ.get("TEXTGEN_FUZZ_REPORT", ROOT / ".hypothesis" / "fuzz-report.json"))

_COMMON: dict[str, Any] = {
    "deadline": None,
    "suppress_health_check": list(HealthCheck),
    "report_multiple_bugs": True,
    "print_blob": True,
}
settings.register_profile(
    "textgen-fuzz-fast",
    derandomize=True,
    database=None,
    phases=[Phase.explicit, Phase.generate],
    **_COMMON,
)
settings.register_profile(
    "textgen-fuzz-shrink",
    derandomize=True,
    database=None,
    **_COMMON,
)
settings.register_profile(
    "textgen-fuzz-long",
    derandomize=False,
    database=DirectoryBasedExampleDatabase(str(ROOT / ".hypothesis" / "fuzz")),
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
    **_COMMON,
)


def fuzz(fast: int, long: int) -> settings:
    """The settings of one fuzz test: ``fast`` cases in ``make test``, ``long`` in the soak."""
    count = long if LONG else fast
    return settings(
        settings.get_profile(f"textgen-fuzz-{PROFILE}"), max_examples=max(1, round(count * SCALE))
    )


# -- counting and recording ----------------------------------------------------------------
STATS: Counter[str] = Counter()  # "test: cases", "test: invocations", "test: seconds"
RECORDS: dict[str, dict[str, dict[str, Any]]] = {}  # test → signature → count, first repro
_recording = [False]


def _test_name() -> str:
    current = os.environ.get("PYTEST_CURRENT_TEST", "?")
    return current.split("::")[-1].split(" ")[0].split("[")[0]


@contextlib.contextmanager
def recording() -> Iterator[None]:
    """Inside a hypothesis test of the long profile: record broken properties, go on."""
    previous = _recording[0]
    _recording[0] = RECORD
    try:
        yield
    finally:
        _recording[0] = previous


_case = [""]


def count_case(case: Any = None) -> None:
    """Count one drawn case; its repr goes into the record of any failure it shows."""
    STATS[f"{_test_name()}: cases"] += 1
    _case[0] = _printable(repr(case))[:1500] if case is not None else ""


def recorded(test: str) -> dict[str, dict[str, Any]]:
    return RECORDS.get(test, {})


def write_report() -> None:
    """Write the counts and every recorded failure to :data:`REPORT` (JSON)."""
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    data = {
        "profile": PROFILE,
        "stats": dict(sorted(STATS.items())),
        "failures": {test: records for test, records in sorted(RECORDS.items())},
    }
    text = json.dumps(data, indent=1, ensure_ascii=False, default=str)
    REPORT.write_text(text, encoding="utf-8", errors="backslashreplace")


def summary(test: str) -> str:
    lines = [f"{test}: {len(recorded(test))} kinds of failure"]
    for signature, info in sorted(recorded(test).items(), key=lambda kv: -kv[1]["count"]):
        lines.append(f"  {info['count']:5d}x {signature}\n         first: {info['first']}")
    return "\n".join(lines)


class Violation(AssertionError):
    """A broken property; subclassed per kind so that hypothesis tells the kinds apart."""


_KINDS: dict[str, type[Violation]] = {}


def _kind(kind: str) -> type[Violation]:
    if kind not in _KINDS:
        name = "".join(part.capitalize() for part in re.split(r"\W+", kind) if part)
        _KINDS[kind] = type(name or "Violation", (Violation,), {})
    return _KINDS[kind]


def _normalize(text: str) -> str:
    """A signature's detail without the parts that differ between cases (paths, numbers)."""
    text = re.sub(r"/[^\s'\":,)]*", "PATH", text)
    text = re.sub(r"\d+", "N", text)
    return text[:160]


def _printable(text: str) -> str:
    """``text`` with lone surrogates (invalid UTF-8 from argv) escaped, so it can be printed."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def fail(
    kind: str,
    detail: str,
    outcome: Outcome | None = None,
    cause: Any = None,
    key: str | None = None,
) -> None:
    """Report a broken property: raise (fast) or record it and go on (long). In the record,
    failures of one ``kind`` with the same ``key`` (default: ``detail`` without its paths
    and numbers) count as one."""
    repro = _printable(outcome.repro() if outcome is not None else "")
    detail = _printable(detail)
    message = f"{kind}: {detail}\n  reproduce: {repro}"
    if outcome is not None:
        message += f"\n  exit {outcome.exit_code}; stderr: {outcome.stderr[-1500:]!r}"
        message += f"\n  stdout: {outcome.stdout[:300]!r}"
    if _recording[0]:
        test = _test_name()
        signature = f"{kind}: {_normalize(detail) if key is None else key}"
        entry = RECORDS.setdefault(test, {}).setdefault(
            signature, {"count": 0, "first": repro, "case": _case[0]}
        )
        entry["count"] += 1
        if entry["count"] == 1:
            entry["detail"] = detail[:500]
            entry["stderr"] = _printable(outcome.stderr[-600:]) if outcome is not None else ""
        return
    exc = _kind(kind)(message)
    if isinstance(cause, BaseException):
        raise exc from cause
    raise exc


# -- the tree of files a case may not change -------------------------------------------------
def tree_state(root: Path) -> dict[str, tuple[Any, ...]]:
    """Every entry under ``root`` (links not followed): its kind and content hash or target."""
    state: dict[str, tuple[Any, ...]] = {}
    if not os.path.lexists(root):
        return state
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            if stat.S_ISLNK(st.st_mode):
                state[path] = ("link", os.readlink(path))
            elif stat.S_ISDIR(st.st_mode):
                state[path] = ("dir",)
            elif stat.S_ISREG(st.st_mode):
                with open(path, "rb") as fh:
                    state[path] = ("file", hashlib.file_digest(fh, "sha256").hexdigest())
            else:
                state[path] = ("other", stat.S_IFMT(st.st_mode))
    return state


def snapshot(roots: Iterable[Path]) -> dict[str, tuple[Any, ...]]:
    state: dict[str, tuple[Any, ...]] = {}
    for root in roots:
        state.update(tree_state(root))
    return state


def changes(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    return sorted(p for p in before.keys() | after.keys() if before.get(p) != after.get(p))


def new_parents(changed: list[str], before: dict[str, Any], target: Path | str) -> list[str]:
    """``changed`` without the folders made to hold ``target`` (its new ancestors)."""
    target = os.path.abspath(target)
    return [
        p
        for p in changed
        if not (
            p not in before and os.path.isdir(p) and target.startswith(p.rstrip(os.sep) + os.sep)
        )
    ]


def inside(path: str, places: Iterable[str]) -> bool:
    return any(path == p or path.startswith(p.rstrip(os.sep) + os.sep) for p in places)


# -- memory and time ------------------------------------------------------------------------
def vm_size() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmSize in /proc/self/status")


@contextlib.contextmanager
def address_space_bound(extra: int) -> Iterator[None]:
    """Let the process add at most ``extra`` bytes of address space inside the block."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = vm_size() + extra
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


class Hung(BaseException):
    """An invocation ran past :data:`TIME_LIMIT`."""


@contextlib.contextmanager
def time_bound(seconds: float) -> Iterator[None]:
    def alarm(_signum: int, _frame: Any) -> None:
        raise Hung(f"still running after {seconds:.0f} s")

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


# -- one invocation ------------------------------------------------------------------------
@dataclass
class Outcome:
    args: list[str]
    input: bytes | None
    exit_code: int
    stdout: str
    stderr: str
    exception: BaseException | None
    changed: list[str]
    allowed: list[str]
    seconds: float
    warnings: list[str] = field(default_factory=list)
    cwd: str = ""

    def repro(self) -> str:
        args = [a if len(a) <= 120 else f"{a[:60]}...({len(a)} characters)" for a in self.args]
        command = "textgen " + shlex.join(args)
        if self.cwd:
            command = f"(cd {shlex.quote(self.cwd)} && {command})"
        if self.input is not None:
            shown = self.input if len(self.input) <= 200 else self.input[:200] + b"..."
            command = f"printf %s {shlex.quote(repr(shown))[:260]} | {command}"
        return command

    @property
    def error_lines(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.startswith("error:")]


_MAIN: Any = None


def cli_main() -> Any:
    global _MAIN
    if _MAIN is None:
        from textgen.cli import main

        _MAIN = main
    return _MAIN


def invoke(
    args: list[str],
    *,
    roots: Iterable[Path],
    may_change: Iterable[Path | str] = (),
    input: bytes | None = None,
    cwd: Path | None = None,
    trains: bool = False,
    time_limit: float = TIME_LIMIT,
) -> Outcome:
    """Run ``textgen ARGS`` in this process under the memory and time bounds; hash ``roots``
    before and after and keep the changes outside ``may_change``."""
    roots = list(roots)
    allowed = [os.path.abspath(p) for p in may_change]
    before = snapshot(roots)
    old_cwd = os.getcwd()
    exception: BaseException | None = None
    exit_code, stdout, stderr = -1, "", ""
    caught: list[warnings.WarningMessage] = []
    start = time.perf_counter()
    try:
        if cwd is not None:
            os.chdir(cwd)
        runner = CliRunner()
        with (
            warnings.catch_warnings(record=True) as caught,
            time_bound(time_limit),
            address_space_bound(TRAIN_BOUND if trains else READ_BOUND),
        ):
            warnings.simplefilter("always")
            result = runner.invoke(cli_main(), args, input=input, catch_exceptions=True)
        exit_code, stdout, stderr = result.exit_code, result.stdout, result.stderr
        exception = result.exception
    except BaseException as err:  # Hung, or MemoryError raised outside the command
        exception = err
    finally:
        os.chdir(old_cwd)
    seconds = time.perf_counter() - start
    after = snapshot(roots)
    changed = [p for p in changes(before, after) if not inside(p, allowed)]
    own = [
        f"{w.category.__name__}: {w.message} ({w.filename}:{w.lineno})"
        for w in caught
        if str(w.filename).startswith(PACKAGE)
    ]
    test = _test_name()
    STATS[f"{test}: invocations"] += 1
    STATS[f"{test}: seconds"] += round(seconds, 3)
    return Outcome(
        list(args), input, exit_code, stdout, stderr, exception, changed, allowed, seconds, own,
        str(cwd) if cwd else "",
    )  # fmt: skip


MEMORY_ERRORS = ("MemoryError", "ResourceExhaustedError", "_ArrayMemoryError", "OutOfMemoryError")


def _where(exc: BaseException) -> str:
    """The innermost frame of textgen's own code in ``exc``'s traceback."""
    import traceback

    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename.startswith(PACKAGE)]
    if not frames:
        return "outside textgen"
    frame = frames[-1]
    return f"{frame.filename[len(PACKAGE) :]}:{frame.name}"


def check(
    outcome: Outcome,
    *,
    exits: tuple[int, ...] = (0, 1, 2),
    max_errors: int = 1,
    errors_on_success: bool = False,
) -> bool:
    """The properties every invocation keeps (see the module docstring); False (when
    recording) if one broke, so that a caller checks its own rules only on clean ones."""
    exc = outcome.exception
    if exc is not None and not isinstance(exc, SystemExit):
        name = type(exc).__name__
        if isinstance(exc, MemoryError) or name in MEMORY_ERRORS:
            fail("memory bound", f"{name} at {_where(exc)}: {str(exc)[:200]}", outcome, exc)
        elif isinstance(exc, Hung):
            fail("time bound", str(exc), outcome, exc)
        else:
            fail("traceback", f"{name} at {_where(exc)}: {str(exc)[:200]}", outcome, exc)
        return False
    for stream in (outcome.stdout, outcome.stderr):
        if "Traceback (most recent call last)" in stream:
            fail("traceback", "printed: " + stream.splitlines()[-1][:200], outcome)
            return False
    if outcome.exit_code not in exits:
        fail("exit code", f"exit {outcome.exit_code} (expected one of {exits})", outcome)
        return False
    clean = True
    errors = outcome.error_lines
    if outcome.exit_code == 0:
        if errors and not errors_on_success:
            fail("error line", f"exit 0 with {len(errors)} error lines", outcome)
            clean = False
    elif outcome.exit_code in (1, 2) and not 1 <= len(errors) <= max_errors:
        first = (outcome.stderr.strip().splitlines() or [""])[0]
        clean = False
        fail(
            "error line",
            f"exit {outcome.exit_code} with {len(errors)} 'error:' lines (expected 1"
            + (f" to {max_errors}" if max_errors > 1 else "")
            + f"); stderr starts {first[:80]!r}",
            outcome,
            key=f"exit {outcome.exit_code} with {len(errors)} error lines, stderr starting "
            + repr(re.sub(r"'.*", "", first)[:50]),
        )
    if outcome.changed:
        shown = ", ".join(outcome.changed[:4])
        fail("changed outside the run", f"{len(outcome.changed)} paths: {shown}", outcome)
        clean = False
    if outcome.warnings:
        fail("python warning", outcome.warnings[0], outcome)
        clean = False
    return clean


# -- the folders of one case -------------------------------------------------------------------
class Sandbox:
    """A fresh folder for one case: ``cwd/`` to run in, ``outside/`` for link targets."""

    def __init__(self, base: Path) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="case-", dir=base))
        self.cwd = self.root / "cwd"
        self.outside = self.root / "outside"
        self.cwd.mkdir()
        self.outside.mkdir()

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *_: Any) -> None:
        with contextlib.suppress(OSError):
            for dirpath, dirnames, _files in os.walk(self.root):
                for name in dirnames:
                    os.chmod(os.path.join(dirpath, name), 0o755)
        shutil.rmtree(self.root, ignore_errors=True)


def copy_run(source: Path, target: Path, *, follow_links: bool = False) -> Path:
    """A copy of a run: as ``cp -r`` (links kept) or as ``cp -rL`` (links followed)."""
    shutil.copytree(source, target, symlinks=not follow_links)
    return target
