"""lungseg: lung segmentation in chest X-rays, as a DVC pipeline and a command.

The library is grouped by phase; each folder's __init__ says what it holds and what it may
import. Imports point down this list: core, data, model, postprocessing, then training and
inference (which never import each other), then evaluation. cli.py sits above them all.
"""
