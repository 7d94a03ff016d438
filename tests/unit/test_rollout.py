"""The rollout engine with a scripted policy: token layout, masks, and failure isolation."""

import time

import pytest

import envs
from envs.sudoku import SudokuEnv
from rl.chat import ChatFormat
from rl.config import RolloutSection
from rl.rollout import run_episodes
from rl.toolcalls import get_format

SEED = 5


def solution_move(seed=SEED):
    env = envs.make("sudoku")
    env.reset(seed=seed)
    cell = env.board.index(0)
    return cell // 4 + 1, cell % 4 + 1, env.solution[cell]


def test_multi_turn_token_layout_token_by_token(chat, scripted, tiny_tokenizer):
    row, col, digit = solution_move()
    replies = [
        (f'I will place a digit.\n<tool_call>\n{{"name": "place", "arguments": '
         f'{{"row": {row}, "col": {col}, "digit": {digit}}}}}\n</tool_call>'),
        '<tool_call>\n{"name": "place", "arguments": {"row": 1,}}\n</tool_call>',
        "Maybe the answer is 4?",
        '<tool_call>\n{"name": "show_board", "arguments": {}}\n</tool_call>',
    ]
    backend = scripted(lambda context, turn: replies[turn])
    env = envs.make("sudoku", max_invalid=None)
    [traj] = run_episodes([env], [SEED], backend, chat, RolloutSection(max_turns=4, max_completion_tokens=4096))

    # The prompt is the template's rendering of the first observation with the env's tools.
    reference = envs.make("sudoku")
    first_obs, _ = reference.reset(seed=SEED)
    tools = reference.tool_schemas()
    assert traj.prompt_ids == chat.prompt_ids([{"role": "user", "content": first_obs}], tools)

    # Replay the episode on a reference env to know every env message.
    env_messages = []
    obs, *_ = reference.step({"name": "place", "arguments": {"row": row, "col": col, "digit": digit}})
    env_messages.append([{"role": "tool", "name": "place", "content": obs}])
    malformed = get_format("hermes").parse(replies[1]).errors[0]
    env_messages.append([{"role": "tool", "name": "error", "content": malformed}])
    obs, *_ = reference.step("Maybe the answer is 4?")
    env_messages.append([{"role": "user", "content": obs}])

    # Token by token: model tokens (mask 1, their logprobs), then env tokens (mask 0, logprob 0).
    eot = tiny_tokenizer.convert_tokens_to_ids("<end_of_turn>")
    expected_ids, expected_mask, expected_logprobs = [], [], []
    for turn, reply in enumerate(replies):
        model_ids = tiny_tokenizer.encode(reply, add_special_tokens=False) + [eot]
        expected_ids += model_ids
        expected_mask += [1] * len(model_ids)
        expected_logprobs += [-1.0] * len(model_ids)
        if turn < len(replies) - 1:  # nothing is appended after the last model turn
            env_ids = chat.tool_turn_ids(env_messages[turn], eot)
            expected_ids += env_ids
            expected_mask += [0] * len(env_ids)
            expected_logprobs += [0.0] * len(env_ids)
    assert traj.completion_ids == expected_ids
    assert traj.env_mask == expected_mask
    assert traj.logprobs == expected_logprobs

    # Independently of the diff trick: the whole sequence is exactly what the chat template
    # renders for the full conversation, so no earlier turn was re-tokenised differently.
    conversation = [{"role": "user", "content": first_obs}]
    for turn, reply in enumerate(replies):
        conversation.append({"role": "assistant", "content": reply})
        if turn < len(replies) - 1:
            conversation += env_messages[turn]
    full = tiny_tokenizer.apply_chat_template(conversation, tools=tools, tokenize=False)
    assert tiny_tokenizer.decode(traj.prompt_ids + traj.completion_ids) == full.removesuffix("\n")

    info = traj.info
    assert info["model_turns"] == 4 and info["format_errors"] == 1 and info["no_tool_calls"] == 1
    assert info["tool_calls"] == 2 and info["progress"] > 0 and info["stop_reason"] == "max_turns"
    assert info["model_tokens"] == sum(expected_mask)


def test_every_waiting_episode_shares_one_generate_call(chat, scripted):
    backend = scripted(lambda context, turn: "no idea")
    episodes = [envs.make("sudoku", max_invalid=n) for n in (1, 2, 2, 3)]  # each silent turn is invalid
    trajectories = run_episodes(episodes, [0, 1, 2, 3], backend, chat, RolloutSection(max_turns=5))
    assert [len(batch) for batch in backend.calls] == [4, 3, 1]
    assert [t.info["model_turns"] for t in trajectories] == [1, 2, 2, 3]


def test_model_that_never_calls_a_tool(chat, scripted):
    backend = scripted(lambda context, turn: "I am not sure what to do.")
    [traj] = run_episodes([envs.make("sudoku", max_invalid=3)], [1], backend, chat, RolloutSection(max_turns=10))
    info = traj.info
    assert info["no_tool_calls"] == 3 and info["tool_calls"] == 0 and info["model_turns"] == 3
    assert info["stop_reason"] == "env_done" and not info["solved"]
    text = chat.decode(traj.completion_ids)
    assert text.count("Error: no tool call found in your reply") == 2  # the third reply ends the episode


class CrashingEnv(SudokuEnv):
    def step(self, action):
        if self.puzzle == self._crash_on:
            raise ConnectionError("simulator went away")
        return super().step(action)


class SlowEnv(SudokuEnv):
    def step(self, action):
        if self.puzzle == self._slow_on:
            time.sleep(5)
        return super().step(action)


def test_crashing_env_ends_only_its_own_episode(chat, scripted):
    episodes = [CrashingEnv() for _ in range(3)]
    for e in episodes:
        e._crash_on = None
    probe = SudokuEnv()
    probe.reset(seed=1)
    for e in episodes:
        e._crash_on = probe.puzzle
    backend = scripted(lambda context, turn: '<tool_call>{"name": "show_board", "arguments": {}}</tool_call>')
    trajectories = run_episodes(episodes, [0, 1, 2], backend, chat, RolloutSection(max_turns=3))
    crashed = trajectories[1].info
    assert crashed["env_error"] == "ConnectionError: simulator went away" and crashed["stop_reason"] == "env_error"
    for t in (trajectories[0], trajectories[2]):
        assert t.info["env_error"] == "" and t.info["model_turns"] == 3 and t.info["tool_calls"] == 3


def test_slow_env_times_out_alone(chat, scripted):
    episodes = [SlowEnv() for _ in range(2)]
    probe = SudokuEnv()
    probe.reset(seed=1)
    for e in episodes:
        e._slow_on = probe.puzzle
    backend = scripted(lambda context, turn: '<tool_call>{"name": "show_board", "arguments": {}}</tool_call>')
    started = time.monotonic()
    fast, slow = run_episodes(episodes, [0, 1], backend, chat, RolloutSection(max_turns=2, step_timeout_s=0.3))
    assert time.monotonic() - started < 4  # the 5 s step was abandoned, not awaited
    assert slow.info["env_error"] == "env step timed out after 0.3 s"
    assert fast.info["env_error"] == "" and fast.info["model_turns"] == 2


def test_token_budget_caps_the_completion(chat, scripted):
    backend = scripted(lambda context, turn: '<tool_call>{"name": "show_board", "arguments": {}}</tool_call>')
    [traj] = run_episodes([envs.make("sudoku")], [0], backend, chat,
                          RolloutSection(max_turns=50, max_completion_tokens=120))
    assert len(traj.completion_ids) <= 120 and traj.info["stop_reason"] == "token_budget"
    assert traj.env_mask[-1] == 1  # ends on model tokens


def test_chat_template_kwargs_reach_every_render(tiny_tokenizer):
    template = ("{% for m in messages %}{{ m['role'] }}:{{ m['content'] }}|{% endfor %}"
                "{% if add_generation_prompt %}{{ 'think' if enable_thinking else 'nothink' }}>{% endif %}")
    original = tiny_tokenizer.chat_template
    try:
        tiny_tokenizer.chat_template = template
        chat = ChatFormat(tiny_tokenizer, get_format("hermes"), {"enable_thinking": False})
        assert chat.decode(chat.prompt_ids([{"role": "user", "content": "hi"}], None)).endswith("nothink>")
        assert chat.tool_turn_text([{"role": "tool", "content": "ok"}], None) == "|tool:ok|nothink>"
    finally:
        tiny_tokenizer.chat_template = original


def test_mismatched_seeds_are_rejected(chat, scripted):
    with pytest.raises(ValueError, match="got 2 envs but 1 seeds"):
        run_episodes([envs.make("sudoku")] * 2, [0], scripted(lambda c, t: ""), chat, RolloutSection())


def test_response_prefix_opens_every_model_turn_as_context(chat, scripted, tiny_tokenizer):
    prefix = '<tool_call>\n{"name": "'
    backend = scripted(lambda context, turn: 'show_board", "arguments": {}}\n</tool_call>')
    [traj] = run_episodes([envs.make("sudoku")], [0], backend, chat,
                          RolloutSection(max_turns=2, response_prefix=prefix))
    prefix_ids = tiny_tokenizer.encode(prefix, add_special_tokens=False)
    assert traj.prompt_ids[-len(prefix_ids):] == prefix_ids
    assert traj.info["tool_calls"] == 2 and traj.info["format_errors"] == 0  # prefix + reply parsed as calls
    # the second turn's prefix sits right before the model's second reply, masked as context
    second_turn_start = traj.env_mask.index(1, traj.env_mask.index(0))
    assert traj.completion_ids[second_turn_start - len(prefix_ids):second_turn_start] == prefix_ids
    assert traj.env_mask[second_turn_start - len(prefix_ids):second_turn_start] == [0] * len(prefix_ids)


def test_stop_after_tool_call_cuts_the_turn_and_closes_it_as_context(chat, scripted, tiny_tokenizer):
    call = '<tool_call>\n{"name": "show_board", "arguments": {}}\n</tool_call>'
    backend = scripted(lambda context, turn: call + "\nand then I ramble <tool_call>{broken")
    [traj] = run_episodes([envs.make("sudoku")], [0], backend, chat,
                          RolloutSection(max_turns=2, stop_after_tool_call=True))
    assert traj.info["tool_calls"] == 2 and traj.info["format_errors"] == 0
    model_text = tiny_tokenizer.decode([t for t, m in zip(traj.completion_ids, traj.env_mask) if m])
    assert model_text == call + call and "ramble" not in chat.decode(traj.completion_ids)
    eot = tiny_tokenizer.convert_tokens_to_ids("<end_of_turn>")
    assert traj.completion_ids[-1] == eot and traj.env_mask[-1] == 0  # closed by the template, not the model
    reference = envs.make("sudoku")
    first_obs, _ = reference.reset(seed=0)
    board, *_ = reference.step({"name": "show_board", "arguments": {}})
    conversation = [{"role": "user", "content": first_obs}, {"role": "assistant", "content": call},
                    {"role": "tool", "name": "show_board", "content": board}, {"role": "assistant", "content": call}]
    full = tiny_tokenizer.apply_chat_template(conversation, tools=reference.tool_schemas(), tokenize=False)
    assert tiny_tokenizer.decode(traj.prompt_ids + traj.completion_ids) == full.removesuffix("\n")


def test_each_model_turn_records_its_token_span_and_the_env_state_it_acted_in(chat, scripted):
    from rl.credit import state_digest

    row, col, digit = solution_move()
    place = (f'<tool_call>\n{{"name": "place", "arguments": '
             f'{{"row": {row}, "col": {col}, "digit": {digit}}}}}\n</tool_call>')
    replies = [place, '<tool_call>\n{"name": "place", "arguments": {"row": 1,}}\n</tool_call>', "Maybe 4?", place]
    backend = scripted(lambda context, turn: replies[turn])
    [traj] = run_episodes([envs.make("sudoku", max_invalid=None)], [SEED], backend, chat,
                          RolloutSection(max_turns=4, max_completion_tokens=4096))
    runs, i = [], 0  # the maximal runs of model tokens
    while i < len(traj.env_mask):
        j = i
        while j < len(traj.env_mask) and traj.env_mask[j] == traj.env_mask[i]:
            j += 1
        if traj.env_mask[i]:
            runs.append((i, j))
        i = j
    assert [(start, end) for start, end, _ in traj.turns] == runs and len(runs) == 4

    reference = envs.make("sudoku", max_invalid=None)  # the states the turns acted in, replayed
    reference.reset(seed=SEED)
    states = [state_digest(reference)]
    reference.step({"name": "place", "arguments": {"row": row, "col": col, "digit": digit}})
    states += [state_digest(reference)] * 2  # the malformed call never reached the env
    reference.step("Maybe 4?")
    states.append(state_digest(reference))
    assert [key for _, _, key in traj.turns] == states
    assert len(set(states)) == 3 and all(isinstance(s, int) for s in states)


def test_equal_sudoku_states_have_equal_keys_whatever_the_path():
    def played(moves):
        env = SudokuEnv(size=4, difficulty="hard", max_invalid=None)
        env.reset(seed=SEED)
        empty = [i for i, v in enumerate(env.board) if v == 0]
        for m in moves:
            cell = empty[m]
            env.step({"name": "place", "arguments": {"row": cell // 4 + 1, "col": cell % 4 + 1,
                                                     "digit": env.solution[cell]}})
        return env

    assert played([0, 1]).state_key() == played([1, 0]).state_key()  # same board, same turn count
    assert played([0, 1]).state_key() != played([0, 2]).state_key()
    env = played([0])
    before = env.state_key()
    env.step({"name": "place", "arguments": {"row": 9, "col": 1, "digit": 1}})  # invalid: board unchanged
    assert env.state_key() != before and env.state_key()[0] == before[0]  # the spent turn and error count


def test_progress_is_reported_as_each_episode_ends(chat):
    from envs.experts import random_for

    seen = []
    policy = random_for(SudokuEnv(), seed=0)
    out = run_episodes([SudokuEnv() for _ in range(5)], list(range(5)), None, chat, RolloutSection(max_turns=3),
                       policy=policy, progress=lambda done, total, tokens: seen.append((done, total, tokens)))
    assert [d for d, _, _ in seen] == [1, 2, 3, 4, 5] and {t for _, t, _ in seen} == {5} and len(out) == 5
    assert [tokens for _, _, tokens in seen] == sorted(tokens for _, _, tokens in seen)


@pytest.mark.parametrize("arguments", ['{"a": [' * 1_000 + "1" + "]}" * 1_000, '{"row": ' + "9" * 5_000 + "}"],
                         ids=["2000-deep", "5000-digit-int"])
def test_a_call_the_parser_cannot_read_is_a_format_error_not_an_env_error(chat, scripted, arguments):
    replies = [f'<tool_call>{{"name": "place", "arguments": {arguments}}}</tool_call>', "I give up."]
    backend = scripted(lambda context, turn: replies[min(turn, 1)])
    settings = RolloutSection(max_turns=2, max_new_tokens=100_000, max_completion_tokens=200_000)
    [traj] = run_episodes([envs.make("sudoku")], [SEED], backend, chat, settings)
    assert traj.info["env_error"] == "" and traj.info["stop_reason"] == "max_turns"
    assert traj.info["format_errors"] == 1 and traj.info["model_turns"] == 2


class RefusingEnv(SudokuEnv):
    """A tool whose backing service refuses to run at all (as the sandbox does in unchosen weak mode)."""

    def step(self, action):
        raise envs.RunStop("the sandbox refuses to run model code: set env.sandbox_allow_weak")


def test_a_run_stop_ends_the_rollout_instead_of_becoming_an_env_error(chat, scripted):
    backend = scripted(lambda context, turn: '<tool_call>{"name": "show_board", "arguments": {}}</tool_call>')
    with pytest.raises(envs.RunStop, match="sandbox_allow_weak"):
        run_episodes([RefusingEnv(), SudokuEnv()], [0, 1], backend, chat, RolloutSection(max_turns=2))


def test_a_tool_raising_run_stop_is_not_turned_into_an_observation():
    from envs import ToolCall

    class Refuses(SudokuEnv):
        @envs.tool
        def run_code(self, code: str) -> str:
            """Run code.

            Args:
                code: The code.
            """
            from envs.sandbox import WeakSandboxRefused

            raise WeakSandboxRefused("weak mode was not chosen")

    env = Refuses()
    env.reset(seed=0)
    with pytest.raises(envs.RunStop, match="weak mode was not chosen"):
        env.step(ToolCall("run_code", {"code": "1"}))
    env.reset(seed=0)  # any other failure of a tool is still the model's observation
    obs, *_ = env.step(ToolCall("place", {"row": 9, "col": 9, "digit": 1}))
    assert "Error" in obs


def test_eval_ends_with_the_run_stop_in_one_line(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    (tmp_path / "refusing.py").write_text(
        "import envs\n"
        "from envs.experts import register_policies\n"
        "from envs.sudoku import SudokuEnv\n"
        "from envs.sudoku.expert import SudokuRandom\n\n"
        "class Refusing(SudokuEnv):\n"
        "    def step(self, action):\n"
        "        raise envs.RunStop('the sandbox refuses to run model code:\\n set env.sandbox_allow_weak')\n\n"
        "register_policies(Refusing, random=SudokuRandom)\n")
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, str(root / "launch/eval.py"), "--env", "refusing.py:Refusing",
                           "--policy", "random", "--episodes", "2", "--out", str(tmp_path / "out")],
                          cwd=tmp_path, capture_output=True, text=True, timeout=240, check=False)
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.strip().splitlines()[-1] == ("error: the sandbox refuses to run model code: set "
                                                   "env.sandbox_allow_weak"), done.stderr[-2000:]
    assert "Traceback" not in done.stderr
