"""From a trained model to masks on new X-rays: the one prediction path (predictor), the model
file formats and the dispatch from any model file to a Predictor (formats), export with a parity
check (export), `lungseg predict` (predict, with its pixel budget and --out rules: budget,
outdir), and the mask PNGs and overlays it writes (overlay).

May import core/, data/, model/ and postprocessing/; never training/.
"""
