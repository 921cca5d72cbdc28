"""What every fuzz test shares: the hypothesis settings (fixed number of cases, derandomised so CI sees the same
cases every run), the per-case bounds (time and address space) and the rule every case must end by.

A case ends in a result or in a :class:`~vitreg.errors.VitregError` whose message is one line naming the file.
Anything else (another exception, a traceback, a hang past :data:`CASE_SECONDS`, an allocation past
:data:`MEMORY_BOUND` bytes above what the process had mapped when the case began) fails the test.
"""

from __future__ import annotations

import contextlib
import os
import resource
import signal
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from vitreg.errors import VitregError

# per parser: 2,000 by default and in `make test-slow`; `make test` runs fewer (VITREG_FUZZ_CASES=300), the same ones
# every run (hypothesis is derandomised)
CASES = int(os.environ.get("VITREG_FUZZ_CASES", "2000"))
FULL = 2000  # the run the floors of each outcome (``at_least``) were set for


def at_least(count_of_full: int) -> int:
    """A floor set for 2,000 cases, for this run: in a shorter one, half its proportional share (hypothesis tries
    simpler cases first, so the early cases reach the rarer outcomes less often)."""
    if CASES >= FULL:
        return count_of_full
    return max(1, count_of_full * CASES // (2 * FULL))


CASE_SECONDS = 10  # one case: a tiny file, parsing only
MEMORY_BOUND = 1 << 30  # address space a case may add (the files are a few KiB; a header may claim terabytes)

FUZZ = settings(
    max_examples=CASES,
    deadline=None,
    # CI sees the same cases every run; VITREG_FUZZ_EXPLORE=1 with --hypothesis-seed=N looks at others
    derandomize="VITREG_FUZZ_EXPLORE" not in os.environ,
    database=None,
    print_blob=False,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)


# Odd JSON/YAML values, built once: drawing from a list costs hypothesis a fraction of a recursive strategy, which
# keeps 2,000 cases per parser within the suite's time budget
ODD_VALUES: list[Any] = [
    None, True, False, 0, 1, -1, 2, 3, 7, 16, 17, 64, 8192, 8193, 2**31, 2**63, 10**30, 10**300,
    0.5, -0.0, 2.5, 1e-320, 1e308, -1e308, float("nan"), float("inf"), float("-inf"),
    "", "twelve", "3", "1e400", "0x10", "nan", "Infinity", "../../etc/passwd", "<script>x</script>", "a\nb", "ü",
    "\x00", "a" * 300, "$x^{2$",
    [], [1], [1, 2], [1, 2, 3], [[1]], ["x"], [None], [1.5, "x", None], [[[[[1]]]]],
    {}, {"a": 1}, {"": None}, {"x": [1, {"y": 2}]}, {"spec": "x"}, {"1": {"2": {"3": [4]}}},
]  # fmt: skip
ODD_TEXT = ["", "x", "ok", "ü", "a b", "a\nb", "'", '"', "<b>", "..", "../x", "0", "-", "#", ":", "&a", "*a", "!!x"]


def odd_values() -> st.SearchStrategy[Any]:
    return st.sampled_from(ODD_VALUES) | st.integers(-3, 70)


def odd_text() -> st.SearchStrategy[str]:
    return st.sampled_from(ODD_TEXT)


class Hang(Exception):
    """A case ran past CASE_SECONDS."""


def _mapped_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmSize:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmSize in /proc/self/status")


@contextlib.contextmanager
def bounded(seconds: float = CASE_SECONDS, memory: int = MEMORY_BOUND) -> Iterator[None]:
    """Run the block with at most ``memory`` more bytes of address space and at most ``seconds`` of wall time."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = _mapped_bytes() + memory
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)

    def on_alarm(signum, frame):
        raise Hang(f"case ran past {seconds} s")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def outcome(call: Callable[[], Any], path: Path | str, seen: Counter, names: tuple[str, ...] = ()) -> Any:
    """Run one case under :func:`bounded`; count it as "result" or as the error class it ended in.

    A VitregError must be one line naming ``path`` (or one of ``names``, e.g. the image a record points at) and must
    not come from running out of the memory bound. Any other exception propagates and fails the test.
    """
    seen["cases"] += 1
    try:
        with bounded():
            result = call()
    except VitregError as err:
        message = str(err)
        assert "\n" not in message, f"not one line: {message!r}"
        assert any(str(n) in message for n in (str(path), *names)), f"does not name {path}: {message!r}"
        assert "MemoryError" not in message, f"hit the memory bound: {message}"
        assert "alloc" not in message.lower(), f"hit the memory bound: {message}"
        seen[type(err).__name__] += 1
        return err
    seen["result"] += 1
    return result


def summary(name: str, seen: Counter) -> str:
    """One line for the test log: cases tried and how they ended."""
    ends = ", ".join(f"{k} {v}" for k, v in sorted(seen.items()) if k != "cases")
    line = f"fuzz {name}: {seen['cases']} cases ({ends})"
    print(line)
    return line
