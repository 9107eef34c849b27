"""UNet++ and DeepLabV3+ decoders on segmentation_models' encoders.

segmentation_models 1.0.1 ships U-Net, FPN, LinkNet and PSPNet. These two decoders are
built the way its own models are: ``sm.Backbones.get_backbone`` makes the encoder and
``sm.Backbones.get_feature_layers`` names its features at strides 16, 8, 4 and 2 (the
encoder's output is at stride 32), so every backbone sm knows works with them and
ImageNet weights load as for sm's models. Both return logits; ``training.build_model``
adds the float32 softmax.
"""
from __future__ import annotations

from seglab.backend import keras, sm

layers = keras.layers


def _encoder(backbone: str, input_shape, encoder_weights, depth: int):
    """The encoder and its features from stride 2 upwards: ``depth`` levels (stride 2 ** level)."""
    encoder = sm.Backbones.get_backbone(backbone, input_shape=input_shape, weights=encoder_weights, include_top=False,
                                        backend=keras.backend, layers=layers, models=keras.models, utils=keras.utils)
    named = sm.Backbones.get_feature_layers(backbone, n=4)[::-1]  # strides 2, 4, 8, 16
    features = [encoder.get_layer(name=n).output if isinstance(n, str) else encoder.get_layer(index=n).output
                for n in named] + [encoder.output]
    return encoder, features[:depth]


def _conv_bn_relu(x, filters: int, kernel: int, name: str, dilation: int = 1, separable: bool = False):
    conv = layers.SeparableConv2D if separable else layers.Conv2D
    x = conv(filters, kernel, padding="same", dilation_rate=dilation, use_bias=False, name=f"{name}_conv")(x)
    x = layers.BatchNormalization(name=f"{name}_bn")(x)
    return layers.Activation("relu", name=f"{name}_relu")(x)


def unet_plus_plus(backbone: str, input_shape, classes: int, encoder_weights=None,
                   decoder_filters=(32, 64, 128, 256), head_filters: int = 16):
    """UNet++ (Zhou et al., 2018, "UNet++: A Nested U-Net Architecture for Medical Image Segmentation").

    Nodes X^{i,j} at stride 2^(i+1): X^{i,0} are the encoder's features, and each decoder
    node X^{i,j} = two 3x3 conv blocks over [X^{i,0}, ..., X^{i,j-1}, up(X^{i+1,j-1})], the
    nested dense skip pathways. X^{0,4} (stride 2) is upsampled to the input size for the head.
    Input sides must be multiples of 32, the encoder's output stride.
    """
    encoder, features = _encoder(backbone, input_shape, encoder_weights, depth=5)
    nodes = {(i, 0): f for i, f in enumerate(features)}
    for j in range(1, len(features)):
        for i in range(len(features) - j):
            up = layers.UpSampling2D(2, interpolation="bilinear", name=f"x{i}{j}_up")(nodes[i + 1, j - 1])
            x = layers.Concatenate(name=f"x{i}{j}_concat")([*(nodes[i, k] for k in range(j)), up])
            x = _conv_bn_relu(x, decoder_filters[i], 3, f"x{i}{j}a")
            nodes[i, j] = _conv_bn_relu(x, decoder_filters[i], 3, f"x{i}{j}b")
    x = layers.UpSampling2D(2, interpolation="bilinear", name="head_up")(nodes[0, len(features) - 1])
    x = _conv_bn_relu(x, head_filters, 3, "head")
    logits = layers.Conv2D(classes, 3, padding="same", name="final_conv")(x)
    return keras.Model(encoder.input, logits, name=f"unetplusplus_{backbone}")


def deeplab_v3_plus(backbone: str, input_shape, classes: int, encoder_weights=None,
                    rates=(6, 12, 18), filters: int = 256, low_level_filters: int = 48):
    """DeepLabV3+ (Chen et al., 2018, "Encoder-Decoder with Atrous Separable Convolution for Semantic
    Image Segmentation").

    Atrous spatial pyramid pooling on the stride-16 features (a 1x1 conv, three 3x3 atrous
    separable convs at ``rates``, image pooling), projected to ``filters`` channels,
    upsampled 4x and joined with the stride-4 features reduced to 48 channels by a 1x1
    conv; two 3x3 separable convs, a 1x1 classifier, bilinear upsampling 4x to the input size.
    sm's encoders cannot be made atrous, so, as in the Keras DeepLabV3+ example, the encoder
    is cut at stride 16 (its last stage is not used) and input sides need only be multiples of 16.
    """
    encoder, features = _encoder(backbone, input_shape, encoder_weights, depth=4)
    low, deep = features[1], features[3]
    pooled = layers.GlobalAveragePooling2D(keepdims=True, name="aspp_pool")(deep)
    pooled = _conv_bn_relu(pooled, filters, 1, "aspp_pool_proj")
    pooled = layers.UpSampling2D(tuple(deep.shape[1:3]), interpolation="bilinear", name="aspp_pool_up")(pooled)
    branches = [_conv_bn_relu(deep, filters, 1, "aspp_1x1"),
                *(_conv_bn_relu(deep, filters, 3, f"aspp_rate{r}", dilation=r, separable=True) for r in rates), pooled]
    x = _conv_bn_relu(layers.Concatenate(name="aspp_concat")(branches), filters, 1, "aspp_proj")
    x = layers.UpSampling2D(4, interpolation="bilinear", name="decoder_up")(x)
    x = layers.Concatenate(name="decoder_concat")([x, _conv_bn_relu(low, low_level_filters, 1, "decoder_low")])
    x = _conv_bn_relu(x, filters, 3, "decoder_a", separable=True)
    x = _conv_bn_relu(x, filters, 3, "decoder_b", separable=True)
    x = layers.Conv2D(classes, 1, name="final_conv")(x)
    logits = layers.UpSampling2D(4, interpolation="bilinear", name="final_up")(x)
    return keras.Model(encoder.input, logits, name=f"deeplabv3plus_{backbone}")


BUILDERS = {"unetplusplus": unet_plus_plus, "deeplabv3plus": deeplab_v3_plus}
