"""`bench.py --check`: a run's speedup columns against a checked-in result of the same suite."""

import json

import pytest

from rl.bench import regressions


def result(suite="precision", **speedups):
    return {"suite": suite, "rows": [{"mode": mode, "train_speedup": s, "train_step_s": 1.0}
                                     for mode, s in speedups.items()]}


def test_a_speedup_below_the_tolerated_share_of_the_baselines_is_a_regression():
    baseline = result(float32=1.0, tf32=2.0)
    assert regressions(result(float32=1.0, tf32=1.7), baseline) == []  # 1.7 >= 0.8 x 2.0
    assert regressions(result(float32=1.0, tf32=1.5), baseline) == [
        "mode=tf32: train_speedup 1.5 < 0.80 x baseline 2"]
    assert regressions(result(float32=1.0, tf32=1.5), baseline, tolerance=0.3) == []
    assert regressions(result(float32=1.0), baseline) == ["mode=tf32: no such row in this run"]
    assert regressions(result(float32=1.0, tf32=2.0, bfloat16=0.1), baseline) == []  # rows the baseline lacks: new
    profiled = {**baseline, "rows": [*baseline["rows"], {"mode": "tf32, profiled", "top_operators": []}]}
    assert regressions(result(float32=1.0, tf32=2.0), profiled) == []  # a row with no speedup holds nothing to
    with pytest.raises(ValueError, match="baseline is of suite 'scoring', this run of 'precision'"):
        regressions(result(float32=1.0), result("scoring", model_tokens=2.0))


def bench_main():
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("bench_cli", Path(__file__).parents[2] / "launch" / "bench.py")
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    return cli.main


def test_the_cli_exits_1_on_a_regression_and_refuses_a_baseline_of_another_suite(tmp_path, capsys):
    main = bench_main()
    options = ["--suite", "precision", "--out", str(tmp_path), "--set", "model=tiny", "--set", "rows=1",
               "--set", "context=4", "--set", "new_tokens=1", "--set", "train_len=8", "--set", "repeats=1",
               "--set", "modes=float32"]
    easy, hard = tmp_path / "easy.json", tmp_path / "hard.json"
    easy.write_text(json.dumps(result(float32=1.0)))
    hard.write_text(json.dumps(result(float32=5.0)))  # the baseline row is float32 against itself: 1.0
    assert main([*options, "--check", str(easy)]) == 0
    assert f"no regression against {easy}" in capsys.readouterr().out
    assert main([*options, "--check", str(hard)]) == 1
    assert "regression: mode=float32: train_speedup 1 < 0.80 x baseline 5" in capsys.readouterr().out

    other = tmp_path / "other.json"
    other.write_text(json.dumps(result("scoring", model_tokens=2.0)))
    with pytest.raises(SystemExit) as exit_info:
        main([*options, "--check", str(other)])
    assert exit_info.value.code == 2
    assert "holds a result of suite 'scoring', not of 'precision'" in capsys.readouterr().err


def test_the_cli_refuses_an_option_the_suite_does_not_read_before_it_starts(tmp_path, capsys):
    main = bench_main()
    with pytest.raises(SystemExit) as exit_info:  # `promts`, not `prompts`: would have measured 16 prompts
        main(["--suite", "generation", "--out", str(tmp_path), "--set", "promts=64", "--set", "max_turns=8",
              "--set", f"model={tmp_path / 'no-model'}"])  # a suite that started would stop here, not at 2
    assert exit_info.value.code == 2
    assert ("error: unknown generation option(s) ['promts'] (accepted: model, config, prompts, repeats, max_turns, "
            "max_new_tokens, kv_cache_gib, max_model_len, engine_args, engine_process)") in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_every_suite_names_its_options_and_lists_a_description(capsys):
    from rl.bench import OPTIONS, load_suites

    assert set(OPTIONS) == set(load_suites())
    assert bench_main()(["--list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert sorted(line.partition(":")[0] for line in lines) == sorted(OPTIONS)
    assert [line for line in lines if not line.partition(": ")[2].strip()] == []
