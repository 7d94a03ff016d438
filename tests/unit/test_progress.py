"""The run's progress bar: episodes ended and tokens/s while a step generates, and after the first step
how long the run will take at that pace."""

from transformers import TrainerControl, TrainerState

from rl.progress import RunProgress


def test_the_bar_shows_a_generating_step_and_the_first_step_tells_the_runs_length(capsys):
    progress = RunProgress()
    progress.every_s = 0.0
    state = TrainerState(max_steps=11, is_world_process_zero=True)
    control = TrainerControl()
    progress.on_train_begin(None, state, control)
    progress.generating(1, 8, 40)
    progress.generating(3, 8, 300)
    assert progress.training_bar.postfix.startswith("episodes=3/8, tok/s=")
    progress.started -= 60  # the first step took a minute
    state.global_step = 1
    progress.on_step_end(None, state, control)
    assert "step 1 took 60 s: the 10 steps left take about 10 min" in capsys.readouterr().out
    state.global_step = 2
    progress.on_step_end(None, state, control)
    assert "took" not in capsys.readouterr().out  # said once
    progress.training_bar.close()
