"""UNet++ and DeepLabV3+ through the one builder, on segmentation_models' encoders."""
import types

import numpy as np
import pytest

from seglab import losses, models
from seglab.backend import keras
from seglab.config import ConfigError, load_config

SIZES = {"unetplusplus": 64, "deeplabv3plus": 48}  # 48: DeepLabV3+ needs only a multiple of 16


@pytest.mark.parametrize("backbone", ["resnet18", "mobilenetv2"])
@pytest.mark.parametrize("arch", list(SIZES))
def test_builds_trains_one_step_and_reloads_with_equal_predictions(arch, backbone, tmp_path):
    size, classes = SIZES[arch], 3
    keras.utils.set_random_seed(0)
    spec = models.ModelSpec(arch, backbone, classes, size)
    model = models.build_model(spec)
    assert model.output_shape == (None, size, size, classes)
    assert model.layers[-1].name == "probabilities" and model.layers[-1].dtype == "float32"

    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, size, size, 3)).astype(np.float32)
    y = keras.utils.to_categorical(rng.integers(0, classes, (2, size, size)), classes)
    model.compile(keras.optimizers.Adam(1e-3), loss=losses.make_loss("dice", [1.0] * classes))
    before = [w.numpy().copy() for w in model.trainable_weights]
    assert np.isfinite(model.train_on_batch(x, y))
    unchanged = [w.name for w, b in zip(model.trainable_weights, before) if np.array_equal(w.numpy(), b)]
    assert unchanged == []  # one step moved every weight, encoder and decoder: all are on the gradient's path

    predicted = model.predict(x, verbose=0)
    np.testing.assert_allclose(predicted.sum(-1), 1, rtol=1e-5)
    models.save_model(models.float32_copy(model, spec), tmp_path / f"{arch}.keras")  # as training.finish() does
    reloaded = models.load_model(tmp_path / f"{arch}.keras")
    np.testing.assert_allclose(reloaded.predict(x, verbose=0), predicted, atol=1e-6)


def test_a_seed_gives_the_same_initial_weights_on_every_build_and_another_seed_others():
    spec = models.ModelSpec("unet", "resnet18", 3, 32)
    first, again, other = (models.build_model(spec, seed=s).get_weights() for s in (7, 7, 8))
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    assert not all(np.array_equal(a, b) for a, b in zip(first, other))


def test_unet_plus_plus_has_nested_dense_skip_pathways():
    """X^{i,j} joins every earlier node of its level with the upsampled node below: j + 1 inputs."""
    model = models.build_model(models.ModelSpec("unetplusplus", "resnet18", 3, 64))
    for i, j in [(3, 1), (2, 2), (1, 3), (0, 4)]:
        joined = model.get_layer(f"x{i}{j}_concat").input
        assert len(joined) == j + 1
        assert {t.shape[1] for t in joined} == {64 // 2 ** (i + 1)}  # all at X^{i,0}'s stride
    assert model.get_layer("head_up").output.shape[1] == 64


def test_deeplab_v3_plus_pools_at_stride_16_and_joins_stride_4():
    model = models.build_model(models.ModelSpec("deeplabv3plus", "resnet18", 3, 64))
    assert [model.get_layer(f"aspp_rate{r}_conv").dilation_rate for r in (6, 12, 18)] == [(6, 6), (12, 12), (18, 18)]
    assert len(model.get_layer("aspp_concat").input) == 5  # 1x1, three atrous rates, image pooling
    assert model.get_layer("aspp_concat").output.shape[1] == 64 // 16
    assert model.get_layer("decoder_low_conv").output.shape[1:] == (64 // 4, 64 // 4, 48)


def test_fpn_sums_its_pyramid_rather_than_concatenating_it():
    """The concatenation is a 512-channel head at stride 2, 2.7x U-Net's step; the sum keeps 128 channels."""
    model = models.build_model(models.ModelSpec("fpn", "resnet18", 3, 64))
    merged = model.get_layer("aggregation_sum")
    assert len(merged.input) == 4 and merged.output.shape[-1] == 128
    assert "aggregation_concat" not in {layer.name for layer in model.layers}


def test_fpn_takes_its_pyramid_width_from_the_config():
    """model.fpn_pyramid_filters reaches segmentation_models: the head has half the pyramid's filters."""
    cfg = load_config("demo", ["model.fpn_pyramid_filters=64"])
    dataset = types.SimpleNamespace(classes=["a", "b", "c"], image_size=64, images=types.SimpleNamespace(channels=3))
    model = models.build_model(models.ModelSpec.of("fpn", cfg, dataset))
    assert model.get_layer("aggregation_sum").output.shape[-1] == 32


@pytest.mark.parametrize("arch, size, message", [
    ("unetplusplus", 80, "unetplusplus needs an input size that is a multiple of 32; data.image_size=80: use 64 or 96"),
    ("deeplabv3plus", 72, "deeplabv3plus needs an input size that is a multiple of 16; data.image_size=72: use 64 or 80"),
])
def test_a_size_the_architecture_cannot_take_is_rejected_with_the_nearest_that_fit(arch, size, message):
    with pytest.raises(ConfigError, match=message):
        models.build_model(models.ModelSpec(arch, "resnet18", 3, size))
