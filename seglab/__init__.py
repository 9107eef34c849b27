"""seglab: multi-class semantic segmentation with segmentation_models on current TensorFlow.

Importing the package itself is light; modules that need TensorFlow take it from
:mod:`seglab.backend`, which sets up the legacy Keras 2 path first.
"""
__version__ = "0.1.0"
