"""`culnig finetune`: fine-tune only the culture-aware module blocks (paper Sec. 4.5, Fig. 5).

:mod:`~culnig.finetune.options` (settings), :mod:`~culnig.finetune.data` (training rows),
:mod:`~culnig.finetune.train` (freezing, encoding, loss), :mod:`~culnig.finetune.state` (run
folder, step checkpoints, training state), :mod:`~culnig.finetune.run` (:func:`run_finetune` and
the step evaluations). The method and the run folder are described in docs/.
"""
