"""bmc: fine-tune, evaluate, explain and serve a bone marrow cell classifier.

A ground floor of shared modules (``labels``, ``images``, ``transforms``, ``calibration``, ``metrics``, ``model``,
``model_folder``, ``splits``, ``data``, ``figures``, ``constants``) under six wings: ``serve`` (running a model
folder), ``locate`` (cells in whole fields), ``count`` (the differential count and its review), ``train``
(training, measuring, publishing), ``lab`` (``bmc adapt``) and ``cli`` (the ``bmc`` command). docs/architecture.md
has the layers and where each thing lives; ``app.py`` and ``train_hf.py`` only wire these together.
"""

__version__ = "0.1.0"
