"""What is done to a mask after the threshold: the clean-up chosen on validation (postprocess),
and each mask's estimated Dice and flag (quality). Pure numpy and scipy on arrays; the choice
and the estimator are stored with the model, so training makes them and inference applies them.

May import core/ and model/.
"""
