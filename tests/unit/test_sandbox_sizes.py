"""Size limits on what model code sends back: exception text, output, return values. Real processes, no mocks."""

import time

import pytest

from envs.sandbox import Limits, Sandbox

DEADLINE = Limits(wall_s=30, cpu_s=30, memory_mb=1024)  # generous: every run here must end far sooner


@pytest.fixture(scope="module", params=[True, False], ids=["namespaces-if-allowed", "weak"])
def box(request):
    with Sandbox(DEADLINE, namespaces=request.param) as sandbox:
        yield sandbox


def test_a_huge_exception_message_is_cut_with_a_marker(box):
    r = box.run("def f():\n    raise ValueError('x' * 5_000_000)", entry="f")
    assert r.status == "error" and r.error.startswith("in f(): ValueError: xxx")
    assert len(r.error) <= DEADLINE.error_chars and r.error.endswith("more characters cut]")
    cut = int(r.error.rsplit("[... ", 1)[1].split()[0])
    assert len(r.error.split("[... ")[0]) + cut == len("in f(): ValueError: ") + 5_000_000


def test_a_huge_message_while_defining_the_code_is_cut_too(box):
    r = box.run("raise RuntimeError('y' * 1_000_000)\ndef f():\n    return 1", entry="f",
                limits=Limits(error_chars=100))
    assert r.status == "error" and "RuntimeError: yyy" in r.error and len(r.error) <= 100


def test_a_return_value_over_the_cap_is_too_large_at_once(box):
    started = time.monotonic()
    r = box.run("def f():\n    return 'z' * (100 << 20)", entry="f")
    assert r.status == "too_large" and r.value is None and "too large" in r.error, r
    assert time.monotonic() - started < DEADLINE.wall_s / 3  # not after the deadline
    small = box.run("def f():\n    return 'z' * 1000", entry="f", limits=Limits(value_bytes=2000))
    assert small.ok and small.value == "z" * 1000
    over = box.run("def f():\n    return 'z' * 3000", entry="f", limits=Limits(value_bytes=2000))
    assert over.status == "too_large" and "3013 bytes" in over.error and "2000" in over.error


def test_a_huge_frame_written_past_the_harness_is_refused_at_once(box):
    # The code finds the reply pipe itself and announces a 100 MB frame: the runner must not wait for it.
    code = ("import os, struct, time\ndef f():\n    for fd in range(3, 64):\n        try:\n"
            "            os.write(fd, struct.pack('>I', 100 << 20) + b'{' * 1000)\n        except OSError:\n"
            "            pass\n    time.sleep(60)")
    started = time.monotonic()
    r = box.run(code, entry="f")
    assert r.status == "too_large" and "larger than the limit" in r.error, r
    assert time.monotonic() - started < DEADLINE.wall_s / 3


def test_too_large_values_inside_a_driver_end_the_run_as_too_large(box):
    code = "def strategy(board):\n    return 'up' * 50_000"
    r = box.run(code, entry="strategy", driver="g2048/rules.py:play_games", driver_args={"seeds": [1]},
                limits=Limits(value_bytes=10_000))
    assert r.status == "too_large" and r.value is None


def test_a_too_large_value_ends_a_drivers_run_even_if_later_calls_fail_otherwise(box):
    # A driver catches a call's error and plays on; a too-large value must still end the run as too_large,
    # not be overwritten by a later error (which would leave the other games counted).
    code = ("calls = []\ndef strategy(board):\n    calls.append(1)\n    if len(calls) == 1:\n"
            "        return 'up' * 50_000\n    raise ValueError('later')")
    started = time.monotonic()
    r = box.run(code, entry="strategy", driver="g2048/rules.py:play_games", driver_args={"seeds": [1, 2]},
                limits=Limits(value_bytes=10_000))
    assert r.status == "too_large" and r.value is None and "100013 bytes" in r.error, r  # {"value": ...} as JSON
    assert time.monotonic() - started < DEADLINE.wall_s / 3


def test_a_huge_print_is_capped_and_the_run_still_ends_promptly(box):
    started = time.monotonic()
    r = box.run("def f():\n    print('p' * (50 << 20))\n    return 7", entry="f", limits=Limits(output_bytes=4096))
    assert r.ok and r.value == 7 and r.truncated and r.stdout == "p" * 4096
    assert time.monotonic() - started < DEADLINE.wall_s / 3


def test_limits_refuse_caps_the_wire_cannot_carry():
    with pytest.raises(ValueError, match="value_bytes must be in 1..33554432"):
        Limits(value_bytes=64 << 20)
    with pytest.raises(ValueError, match="error_chars >= 64"):
        Limits(error_chars=10)  # the marker alone would be longer
    from envs.sandbox.protocol import clip

    for limit in (64, 100, 4096):  # never longer than its limit, at the smallest limit accepted too
        assert len(clip("x" * 10**6, limit)) <= limit
