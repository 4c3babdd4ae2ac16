"""The Gradio app's handlers (:mod:`bmc.ui.handlers`) and screens (:mod:`bmc.ui.layout`); ``app.py`` launches them."""
