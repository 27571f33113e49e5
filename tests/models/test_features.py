import pytest
import torch

from fedgmi.errors import ConfigError
from fedgmi.models.features import CNNFeatures, MLPFeatures


@pytest.mark.parametrize("build", [lambda: CNNFeatures((1, 28, 28), 32), lambda: MLPFeatures((1, 28, 28), 32)])
def test_both_architectures_give_the_same_feature_size_from_flat_or_image_inputs(build):
    net = build()
    x = torch.rand(5, 784)
    z = net(x)
    assert z.shape == (5, 32) and bool((z >= 0).all())
    torch.testing.assert_close(net(x.view(5, 1, 28, 28)), z)


def test_bad_widths_are_refused():
    with pytest.raises(ConfigError, match="feature_dim"):
        MLPFeatures((1, 28, 28), 0)
    with pytest.raises(ConfigError, match="12x12|H, W"):
        CNNFeatures((1, 8, 8), 16)
