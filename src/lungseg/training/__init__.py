"""Training: the recipe read top to bottom (recipe: data to tensors, loss, optimizer, schedule,
fit, post-processing choice, Dice calibration), the loop that runs a ready-made plan in one
process or one DDP rank (loop; it reads no params), augmentation, torchrun/DDP helpers
(distributed), and per-epoch logs for dvclive (tracking).

May import core/, data/processed.py, model/ and postprocessing/; never inference/.
"""
