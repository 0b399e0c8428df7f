"""lottery_keras: lottery tickets (Frankle & Carbin, 2019) in Keras 3 / TensorFlow.

Importing the package registers the masked layers and models, so `keras.models.load_model` opens saved tickets.
"""

from lottery_keras import layers, models, optimizers  # noqa: F401  (registers the serializable classes)

__version__ = "0.1.0"
