"""Networks: masked layers, the lottery-ticket architectures, and their native CPU kernels.

`from lottery_keras.nn import ...` gives the public classes; importing this package registers them with Keras, so
`keras.models.load_model` opens saved tickets.
"""

from lottery_keras.nn.layers import MaskedConv2D, MaskedDense, MaskedLayer
from lottery_keras.nn.models import ConvNet, Execution, LeNet5, LeNetFC, MaskedModel, build_model

__all__ = ["ConvNet", "Execution", "LeNet5", "LeNetFC", "MaskedConv2D", "MaskedDense", "MaskedLayer",
           "MaskedModel", "build_model"]
