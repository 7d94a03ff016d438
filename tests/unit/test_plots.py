from rl.plots import curve_series, save_curve


def test_a_resumed_run_plots_each_step_once_with_its_later_value():
    rows = [{"step": 1, "reward": 0.1}, {"step": 2, "reward": 0.2}, {"step": 3, "reward": 0.3},
            {"step": 3, "reward": 0.35}, {"step": 4, "reward": 0.4, "env/solved": 0.5}, {"step": 2, "loss": 1.0}]
    series = curve_series(rows[:3] + [{"step": 2, "reward": 0.25}] + rows[3:])
    assert series["reward"] == [(1, 0.1), (2, 0.25), (3, 0.35), (4, 0.4)]
    assert series["env/solved"] == [(4, 0.5)]
    assert series["loss"] == [(2, 1.0)]


def test_curve_png_is_written_for_a_long_noisy_run(tmp_path):
    import json

    with (tmp_path / "metrics.jsonl").open("w") as f:
        for step in range(1, 13):
            f.write(json.dumps({"step": step, "reward": (step % 3) / 3, "env/solved": step / 12}) + "\n")
    out = save_curve(tmp_path)
    assert out == tmp_path / "curve.png" and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert save_curve(tmp_path / "missing") is None
