"""The network and what is measured of its masks: the U-Net (unet), the loss (losses), Dice, IoU
and HD95 (metrics), and the checkpoint that stores a trained model with its preprocessing,
threshold, post-processing and Dice estimate (checkpoint).

May import core/. No params are read here: callers pass plain values.
"""
