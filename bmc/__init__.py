"""bmc: fine-tune, evaluate, explain and serve a bone marrow cell classifier.

One module per concern (the README's "Layout" table says which is which): ``labels``, ``images``, ``data`` and
``splits``, ``transforms`` and ``augmentation``, ``model`` and ``base_weights``, ``arguments``,
``training_data``, ``trainer`` and ``training``, ``calibration``, ``metrics``, ``evaluation``, ``export`` and
``model_folder``, ``model_card``, ``hub``, ``inference`` and ``backends``, ``explain``, ``uploads``, ``count``
and ``report``, ``adaptation`` and ``lab_model``, ``locate`` and ``locate_fields``. ``app.py`` and
``train_hf.py`` only wire these together.
"""

__version__ = "0.1.0"
