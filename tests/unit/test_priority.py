"""CPU priority (core/priority.py), each case in a process of its own: a nice value raised
in this one could not be lowered again without privilege."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from control_plane.core import priority

pytestmark = pytest.mark.skipif(not priority.supported(), reason="nice values per thread: Linux")

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NOBODY = 65534


def run(code: str, env: dict[str, str] | None = None, as_nobody: bool = False) -> str:
    """Run ``code`` (with ``priority`` and ``nice_of`` in scope) in a new Python; its stdout.
    ``as_nobody``: as root, the process first becomes a user that may not lower a nice
    value (root always may)."""
    prelude = textwrap.dedent(
        """
        import logging, os, sys, threading
        logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(message)s")
        from control_plane.core import priority

        def nice_of(tid=None):
            return priority.thread_nice(tid)

        def all_nice():
            return sorted({nice_of(int(t)) for t in os.listdir("/proc/self/task")})
        """
    )
    if as_nobody and os.geteuid() == 0:
        prelude += f"os.setgid({NOBODY}); os.setuid({NOBODY})\n"

    result = subprocess.run(
        [sys.executable, "-c", prelude + textwrap.dedent(code)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": ROOT, **(env or {})},
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_the_setting_is_a_nice_value_or_off() -> None:
    assert priority.parse_nice(None) == priority.CONTROL_NICE
    assert priority.parse_nice("") == priority.CONTROL_NICE
    assert priority.parse_nice(" 5 ") == 5
    assert priority.parse_nice("-20") == -20
    assert priority.parse_nice("off") is None
    assert priority.parse_nice("OFF") is None
    for bad in ("20", "-21", "fast", "1.5"):
        with pytest.raises(ValueError, match="CONTROL_PLANE_NICE"):
            priority.parse_nice(bad)


def test_a_body_thread_yields_alone_and_never_comes_back_up() -> None:
    out = run(
        """
        before = nice_of()
        seen = {}
        def body():
            seen["first"] = priority.yield_thread(19)
            seen["after"] = nice_of()
            seen["again"] = priority.yield_thread(10)  # lower: not done
            seen["still"] = nice_of()
        t = threading.Thread(target=body); t.start(); t.join()
        print(before, seen["first"], seen["after"], seen["again"], seen["still"], nice_of())
        print(priority.yield_thread(None), nice_of())
        """
    )
    first, second = out.split("\n")[:2]
    before, *rest = first.split()
    assert rest == ["True", "19", "False", "19", before]  # the main thread did not move
    assert second == f"False {before}"


def test_a_control_process_puts_every_thread_at_its_nice_value() -> None:
    if not priority.may_lower():
        pytest.skip("lowering a nice value needs CAP_SYS_NICE or RLIMIT_NICE")
    out = run(
        """
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 9)
        stop = threading.Event()
        t = threading.Thread(target=stop.wait); t.start()  # started at 9, like Ray's threads
        print(all_nice(), priority.favour_process(0), all_nice())
        late = []
        u = threading.Thread(target=lambda: late.append(nice_of())); u.start(); u.join()
        print(late[0])
        stop.set(); t.join()
        """
    )
    first, second = out.split("\n")[:2]
    assert first == "[9] True [0]"
    assert second == "0"  # a thread started later inherits it


def test_a_process_that_may_not_lower_its_nice_value_stays_and_says_why() -> None:
    out = run(
        """
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 12)
        print(priority.favour_process(3), all_nice())
        """,
        as_nobody=True,
    )
    assert "CAP_SYS_NICE or RLIMIT_NICE" in out
    assert out.rstrip().endswith("False [12]")


def test_the_environment_turns_it_off_or_sets_another_value() -> None:
    out = run(
        """
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 11)
        print(priority.favour_process(), all_nice())
        """,
        env={priority.ENV_VAR: "off"},
    )
    assert out.strip() == "False [11]"
    out = run(
        """
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 11)
        print(priority.favour_process(), all_nice())
        """,
        env={priority.ENV_VAR: "fast"},
    )
    assert "CONTROL_PLANE_NICE is a nice value" in out and "left at Ray's priority" in out
    assert out.rstrip().endswith("False [11]")
    if priority.may_lower():
        out = run("print(priority.favour_process(), all_nice())", env={priority.ENV_VAR: "4"})
        assert out.strip() == "True [4]"
