"""Research sweeps on Optuna: a sweep file (`spec`), the study and its trial queue (`study`), the workers that
run trials as subprocesses (`worker`), and the aggregated table (`report`) and plots (`plots`).
`launch/sweep.py` is the entry point.

Every trial is an ordinary `launch/grpo.py` run in `runs/<sweep>/<trial>/`, started as a subprocess;
the trainer never imports optuna.
"""
