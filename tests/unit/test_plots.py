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


def test_the_curve_is_redrawn_at_every_checkpoint_so_a_killed_run_keeps_it(tmp_path):
    from types import SimpleNamespace

    from rl.progress import JsonlLogger

    logger = JsonlLogger(tmp_path / "metrics.jsonl")
    state = SimpleNamespace(is_world_process_zero=True, global_step=1)
    logger.on_log(None, state, None, logs={"reward": 0.5, "env/solved": 0.25})
    assert not (tmp_path / "curve.png").exists()
    logger.on_save(None, state, None)
    first = (tmp_path / "curve.png").read_bytes()
    state.global_step = 2
    logger.on_log(None, state, None, logs={"reward": 0.75, "env/solved": 0.5})
    logger.on_save(None, state, None)
    assert (tmp_path / "curve.png").read_bytes() != first  # step 2 drawn without the run ever ending
    logger.on_save(None, SimpleNamespace(is_world_process_zero=False, global_step=2), None)  # other ranks draw nothing


def test_the_moving_mean_is_drawn_over_per_step_series_only():
    from rl.plots import SMOOTH, moving_mean

    per_step = [(step, float(step % 2)) for step in range(1, 8)]
    assert moving_mean(per_step) == [(step, (3 if step % 2 else 2) / 5) for step in range(SMOOTH, 8)]
    heldout = [(step, step / 100) for step in range(0, 40, 5)]  # every 5 steps: 5 points span 20 steps
    assert moving_mean(heldout) == []
    assert moving_mean(per_step[:SMOOTH - 1]) == []
