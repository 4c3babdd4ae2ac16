"""bmc: fine-tune, evaluate, explain and serve a bone marrow cell classifier.

One module per concern: ``labels`` (the 21 Matek classes), ``data`` (loading and splitting),
``transforms`` (preprocessing and augmentation), ``model`` (safe loading), ``metrics``,
``calibration``, ``training``, ``model_card``, ``hub`` (publishing), ``inference``, ``explain``
(attribution maps) and ``report`` (differential counts). ``app.py`` and ``train_hf.py`` only wire
these together.
"""

__version__ = "0.1.0"
