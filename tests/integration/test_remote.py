"""Remote envs against real server processes on loopback: equality, failures, deadlines, queueing, interop."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

import envs
from envs.base import ToolCall
from envs.experts import expert_for
from envs.remote import RemoteEnvError, RemoteToolEnv, ServerPool, pool_for
from rl.config import RolloutSection
from rl.rollout import run_episodes
from tests.integration.servers import ROOT, free_port, running


def serve(*args: str):
    """`launch/serve_env.py ARGS` on a free port."""
    port = free_port()
    return running([sys.executable, str(ROOT / "launch" / "serve_env.py"), "--port", str(port), *args], port)


@pytest.fixture(scope="module")
def sudoku_server():
    with serve("--env", "sudoku", "--max-sessions", "8") as (_, url):
        yield url


def play(env, seed: int, actions: list) -> list:
    """Reset with `seed`, then step through `actions`; every transition, for comparison."""
    out = [env.reset(seed=seed)]
    for action in actions:
        out.append(env.step(action))
        if out[-1][2] or out[-1][3]:
            break
    return out


def script(seed: int) -> list:
    """A local expert's moves for `seed`, with plain-text turns and a bad call mixed in."""
    env = envs.make("sudoku")
    env.reset(seed=seed)
    expert, actions = expert_for(env, explore=0.3, seed=seed), []
    while not env.terminated:
        action = expert(env)
        actions += [action, "I think row 1 is done.", ToolCall("place", {"row": "x"})] if not actions else [action]
        env.step(action)
    return actions


def test_remote_sudoku_plays_exactly_like_local_sudoku(sudoku_server):
    remote = RemoteToolEnv([sudoku_server], slots=8)
    local = envs.make("sudoku")
    for seed in range(4):
        actions = script(seed)
        assert play(remote, seed, actions) == play(local, seed, actions)
    assert remote.tool_schemas() == local.tool_schemas()
    assert remote.url is None  # the solved episode gave its server back
    remote.close()


def test_rollout_engine_gives_identical_trajectories_remote_and_local(sudoku_server, chat, scripted):
    seeds = [3, 4, 5]
    calls = {s: script(s) for s in seeds}
    replies = {s: [f'<tool_call>{{"name": "{a.name}", "arguments": {json.dumps(a.arguments)}}}</tool_call>'
                   if isinstance(a, ToolCall) else a for a in calls[s]] for s in seeds}
    boards = {s: envs.make("sudoku").reset(seed=s)[0].splitlines()[-1] for s in seeds}

    def by_board(context: str, turn: int) -> str:  # the reply script of whichever puzzle this context shows
        return replies[next(s for s in seeds if boards[s] in context)][turn]

    settings = RolloutSection(max_turns=12, max_completion_tokens=4096)
    local = run_episodes([envs.make("sudoku") for _ in seeds], seeds, scripted(by_board), chat, settings)
    remote_envs = [RemoteToolEnv([sudoku_server], slots=8) for _ in seeds]
    remote = run_episodes(remote_envs, seeds, scripted(by_board), chat, settings)
    for a, b in zip(local, remote):
        assert (a.prompt_ids, a.completion_ids, a.env_mask) == (b.prompt_ids, b.completion_ids, b.env_mask)
        assert a.info == b.info and a.info["solved"] and a.info["format_errors"] == 0


def test_unreachable_server_fails_only_its_episode_with_the_url(sudoku_server, chat, scripted):
    dead = f"http://127.0.0.1:{free_port()}"
    timing = {"timeout_s": 2.0, "reset_attempts": 2, "backoff_s": 0.05}
    episodes = [RemoteToolEnv([sudoku_server], slots=8, timing=timing), RemoteToolEnv([dead], timing=timing)]
    show = '<tool_call>{"name": "show_board", "arguments": {}}</tool_call>'
    started = time.monotonic()
    good, bad = run_episodes(episodes, [0, 1], scripted(lambda c, t: show), chat, RolloutSection(max_turns=2))
    assert time.monotonic() - started < 10
    assert good.info["env_error"] == "" and good.info["model_turns"] == 2
    assert bad.info["stop_reason"] == "env_error"
    assert dead in bad.info["env_error"] and "cannot reach the server" in bad.info["env_error"]
    assert "after 2 attempt(s)" in bad.info["env_error"]
    assert episodes[1].pool.stats.failed == 1


@pytest.mark.parametrize("how", ["kill", "hang"])
def test_server_dying_mid_episode_ends_the_step_with_a_clear_error(how):
    with serve("--env", "sudoku", "--max-sessions", "1") as (proc, url):
        env = RemoteToolEnv([url], timing={"timeout_s": 1.5, "reset_attempts": 2, "backoff_s": 0.05,
                                           "connect_timeout_s": 1.0, "queue_timeout_s": 1.0})
        env.reset(seed=0)
        env.step(ToolCall("show_board"))
        os.kill(proc.pid, signal.SIGKILL if how == "kill" else signal.SIGSTOP)
        started = time.monotonic()
        with pytest.raises(RemoteEnvError) as failure:
            env.step(ToolCall("show_board"))
        elapsed = time.monotonic() - started
        assert url.replace("http", "ws") in str(failure.value) or url in str(failure.value)
        if how == "kill":  # the client meets the closed socket mid-step, or has seen it close and reconnects
            assert any(m in str(failure.value) for m in ("closed the connection during step",
                                                         "cannot reach the server")) and elapsed < 1.5
        else:
            assert "step timed out after 1.5 s" in str(failure.value) and elapsed < 4.0
        assert env.url is None and env.pool.busy == 0  # the slot was given back
        started = time.monotonic()
        with pytest.raises(RemoteEnvError, match="could not start an episode"):
            env.reset(seed=1)
        assert time.monotonic() - started < 8.0  # bounded by the deadlines, whatever the failure


def test_more_concurrent_episodes_than_servers_wait_for_a_free_one():
    with (serve("--env", "sudoku", "--max-sessions", "1") as (_, a),
          serve("--env", "sudoku", "--max-sessions", "1") as (_, b)):
        pool = pool_for([a, b])
        holders, most, lock = {a: 0, b: 0}, {a: 0, b: 0}, threading.Lock()
        acquire, release = pool.acquire, pool.release

        def counting_acquire(deadline):
            url = acquire(deadline)
            with lock:
                holders[url] += 1
                most[url] = max(most[url], holders[url])
            return url

        def counting_release(url, *args, **kwargs):
            with lock:
                holders[url] -= 1
            release(url, *args, **kwargs)

        pool.acquire, pool.release = counting_acquire, counting_release
        solved, errors = [], []

        def episode(seed: int) -> None:
            env = RemoteToolEnv([a, b], timing={"queue_timeout_s": 30.0})
            shadow = envs.make("sudoku")
            expert = expert_for(shadow)
            try:
                env.reset(seed=seed)
                shadow.reset(seed=seed)
                while not shadow.terminated:
                    time.sleep(0.05)  # a model thinking: makes the episodes overlap
                    action = expert(shadow)
                    shadow.step(action)
                    info = env.step(action)[4]
                solved.append(info["solved"])
            except Exception as e:  # noqa: BLE001 - collected and asserted below
                errors.append(e)

        threads = [threading.Thread(target=episode, args=(s,)) for s in range(5)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not errors and solved == [True] * 5
        assert pool.stats.queued >= 3 and pool.stats.failed == 0 and pool.busy == 0
        assert most == {a: 1, b: 1}  # one episode per server at a time


def test_server_pool_queues_then_times_out_naming_the_servers():
    pool = ServerPool(["ws://a", "ws://b"])
    first, second = pool.acquire(time.monotonic() + 1), pool.acquire(time.monotonic() + 1)
    assert {first, second} == {"ws://a", "ws://b"}
    threading.Timer(0.2, pool.release, args=(first,)).start()
    assert pool.acquire(time.monotonic() + 5) == first  # waited for the release
    with pytest.raises(RemoteEnvError, match=r"no server free after waiting 0\.\d s: all 2 busy.*ws://a, ws://b"):
        pool.acquire(time.monotonic() + 0.3)
    pool.release(second, failed=True, backoff_s=0.3)  # cools down before it is handed out again
    started = time.monotonic()
    assert pool.acquire(time.monotonic() + 5) == second and time.monotonic() - started >= 0.25


def test_served_env_reports_bad_actions_clearly(sudoku_server):
    from openenv.core import GenericEnvClient

    with GenericEnvClient(base_url=sudoku_server, message_timeout_s=5).sync() as client:
        client.reset(seed=0)
        with pytest.raises(RuntimeError, match=r"Invalid message \(code: VALIDATION_ERROR\)"):
            client.step({"tool": "place"})  # not a field of ToolAction
        result = client.step({"name": "place", "arguments": {"row": 9, "col": 1, "digit": 1}})
        assert "row must be between 1 and 4, got 9" in result.observation["text"]
        assert result.observation["info"]["invalid_actions"] == 1 and not result.done


def test_server_refuses_sessions_beyond_its_limit_and_the_client_retries():
    with serve("--env", "sudoku", "--max-sessions", "1") as (_, url):
        holder = RemoteToolEnv([url], slots=2)  # lies about capacity: two sessions for a 1-session server
        other = RemoteToolEnv([url], slots=2, timing={"reset_attempts": 3, "backoff_s": 0.1})
        holder.reset(seed=0)
        with pytest.raises(RemoteEnvError, match=r"after 3 attempt\(s\).*CAPACITY_REACHED"):
            other.reset(seed=0)
        holder.close()
        assert other.reset(seed=0)[0] == envs.make("sudoku").reset(seed=0)[0]
        other.close()


def test_slow_steps_outlive_a_short_websocket_ping():
    # A step of 1 s against pings every 0.2 s that must be answered within 0.2 s (the old
    # default was 20 s / 20 s): the step runs off the server's event loop and the client's
    # loop is free, so both sides keep answering pings while the simulator works.
    with serve("--app", "envs.driving.sim:app_factory", "--set", "step_delay_s=1.0",
               "--ping-interval", "0.2", "--ping-timeout", "0.2") as (_, url):
        from envs.driving.carla import CarlaEnv

        fast_pings = {"ping_interval_s": 0.2, "ping_timeout_s": 0.2, "timeout_s": 5.0}
        env = CarlaEnv([url], ticks_per_tool=1, images=False, timing=fast_pings)
        env.reset(seed=0)
        started = time.monotonic()
        _, _, _, _, info = env.step(ToolCall("emergency_stop"))  # two simulator steps of 1 s each
        assert time.monotonic() - started >= 2.0 and info["speed_kmh"] < 60
        env.close()

        impatient = CarlaEnv([url], ticks_per_tool=1, images=False, timing={**fast_pings, "timeout_s": 0.5})
        impatient.reset(seed=0)
        started = time.monotonic()
        with pytest.raises(RemoteEnvError, match=r"127\.0\.0\.1:\d+: step timed out after 0\.5 s"):
            impatient.step(ToolCall("observe"))
        assert time.monotonic() - started < 2.5


def test_interop_with_openenvs_own_example_server(tmp_path):
    """The echo env that `openenv init` generates, served by its own app: toolgym drives it."""
    subprocess.run([sys.executable, "-m", "openenv.cli", "init", "echo_env", "-o", str(tmp_path)], check=True,
                   capture_output=True, timeout=120)
    port = free_port()
    command = [sys.executable, "-m", "uvicorn", "server.app:app", "--host", "127.0.0.1", "--port", str(port)]
    with running(command, port, cwd=tmp_path / "echo_env"):
        env = RemoteToolEnv([f"http://127.0.0.1:{port}"], max_steps=4)
        [schema] = env.tool_schemas()
        assert schema["function"]["name"] == "echo"
        assert schema["function"]["parameters"]["required"] == ["message"]
        obs, info = env.reset(seed=0)
        assert "echoed_message: Echo Env environment ready!" in obs
        obs, reward, _, _, info = env.step(ToolCall("echo", {"message": "hello"}))
        assert "echoed_message: hello" in obs and "message_length: 5" in obs and reward == pytest.approx(0.5)
        obs, *_ , info = env.step(ToolCall("echo", {}))
        assert "missing argument(s) ['message']" in obs and info["invalid_actions"] == 1
        obs, *_ , info = env.step(ToolCall("echo", {"message": 3}))
        assert "argument 'message' must be string, got 3" in obs and info["invalid_actions"] == 2
        *_, truncated, info = env.step("just text")
        assert truncated and info["no_tool_calls"] == 1 and info["episode_return"] == pytest.approx(0.5)
        env.close()
