"""The parameter-efficiency study of docs/results.md, on real Fashion-MNIST.

    python -m jaxcollective.study                  # 2 collective sizes (~77 min on 2 CPU cores)
    python -m jaxcollective.study --sizes=full     # the original's range, 1.8M to 7.1M (a GPU)
    python -m jaxcollective.study --schedule=long  # augmentation, 36 epochs, tuned (hours)
    python -m jaxcollective.study --schedule=converged  # as long, each run to early stopping (hours)

The short schedule (the 6-epoch study of docs/results.md):

1. For each collective size: `sweeps/study_fashion.yaml` through the local sweep runner,
   a grid of the 7 model types x 3 learning rates, seed 0 (the baselines take the
   collective's parameter count, so every size is matched).
2. Per model type and size, the learning rate with the best validation accuracy
   (report.select_on_validation: the test set plays no part) trains two more seeds.
3. `python -m jaxcollective.report --select=validation` over all of it; the results file,
   summary.md, the figures and study.json (wall and CPU time, machine) are copied to --out.

The long schedule (`Halving`), as the original trains (augmentation on) and to convergence:
per collective size and model type, six candidates (learning rate 3e-4, 1e-3, 3e-3 x weight
decay 0, 1e-4; seed 0) by successive halving on validation: all to epoch 4, the best two
extended to 12, the best of those to 36; the choice then trains seeds 1 and 2. Then the
convergence check: at the first size, each type's choice (seed 0) trained twice as long,
72 epochs, from scratch. The report adds the validation curves, the epoch of the best
validation accuracy per type, the candidates' table and the check's table (what the
longer training changed).

The converged schedule: as the long one, with the learning rate multiplied by 0.1 after
8 epochs in a row without a new best validation accuracy (lr_plateau_patience) and each
run ended by early stopping, after 16 such epochs (early_stopping_patience), at most
--epochs (default 300). (A patience of 4 cut the rate before the constant-rate curves had
flattened: at 567K its runs stopped near epoch 42, 0.6 to 1.2 points of validation
accuracy below the long study's 72-epoch check of the same configurations.) The halving's rungs are at 4 and 12 epochs, and the last trains
the finalists to their stop; the choice then trains seeds 1 and 2, each a run of its own
(early stopping reads its own curve). A run that reaches --epochs without stopping has
not converged by this rule, and the summary's table of stops says so; the same command
with more --epochs trains again only such runs (a run that stopped early answers any cap
at or above its stop: it would have stopped at the same epoch), so a study that began
with a lower cap (150, at first) keeps every run that stopped.

Stoppable at any moment: Ctrl-C or SIGTERM stops the step in flight cleanly (a sweep
trial is recorded as stopped and keeps its checkpoint, as does a run), says so in one
line and exits 130 (143 for SIGTERM); the same command continues the study (the sweep's
Optuna storage and the runs' checkpoints live in FOLDER/.work) to exactly the study an
uninterrupted run gives. Finished runs are never trained again (but for one that reached a
lower --epochs without stopping, above). A second copy running
at the same time is refused. The console shows a line per finished run, with the
study's count and the time left; each step's own output goes to FOLDER/.work/log.txt.
"""
