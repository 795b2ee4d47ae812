"""Scoring a model on labelled X-rays: per-image and native-resolution scores, subgroups and the
estimate's agreement (scores), bootstrap intervals (intervals), the threshold baseline
(baseline), the files an evaluation writes (report), and the pictures (pictures: montage, curves,
estimated-against-true scatter).

May import every phase but training/ (the visualize stage reads training's logs itself).
"""
