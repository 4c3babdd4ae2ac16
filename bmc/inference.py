"""Old import path of :mod:`bmc.serve.predictor`, kept for one release (``from bmc.inference import Predictor``)."""

from bmc.serve.predictor import Prediction, Predictor

__all__ = ["Prediction", "Predictor"]
