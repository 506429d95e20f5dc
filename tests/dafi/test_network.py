import numpy as np
import pytest
import torch

from cprfa.dafi.network import HSUNet, HSUNetConfig, soft_argmax, widened
from cprfa.dafi.predict import DafiEstimator, load_network, save_weights
from cprfa.errors import InvalidInputError, ModelFileError
from cprfa.train.dafi import hs_unet_loss


def test_outputs_have_three_scales_codes_in_range_and_heatmaps_at_half_resolution():
    torch.manual_seed(0)
    network = HSUNet(HSUNetConfig(input_size=64, widths=(4, 8, 8, 16, 16))).eval()
    groups, heatmaps = network(torch.rand(2, 3, 64, 64) - 0.5)
    assert [tuple(g.shape) for g in groups] == [(2, 4, 16, 16), (2, 4, 32, 32), (2, 4, 64, 64)]
    assert all(((g[:, :3] >= 0) & (g[:, :3] <= 1)).all() for g in groups)
    assert heatmaps.shape == (2, 68, 32, 32)
    with pytest.raises(ValueError):
        HSUNetConfig(input_size=50)


def test_the_fused_network_computes_what_the_network_does_without_batch_norms():
    torch.manual_seed(0)
    network = HSUNet(HSUNetConfig(input_size=32, widths=(4, 8, 8, 16, 16)))
    for module in network.modules():  # batch-norm statistics of a trained network, not the initial identity
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 2.0)
    network.eval()
    fused = network.fused()
    assert not any(isinstance(module, torch.nn.BatchNorm2d) for module in fused.modules())
    assert any(isinstance(module, torch.nn.BatchNorm2d) for module in network.modules())  # a copy
    images = torch.rand(2, 3, 32, 32) - 0.5
    (groups, heatmaps), (fused_groups, fused_heatmaps) = network(images), fused(images)
    for group, fused_group in zip(groups, fused_groups, strict=True):
        assert torch.allclose(group, fused_group, atol=1e-5)
    assert torch.allclose(heatmaps, fused_heatmaps, atol=1e-4)


def test_a_widened_network_computes_what_the_narrow_one_did_and_its_new_channels_can_learn():
    torch.manual_seed(0)
    narrow = HSUNet(HSUNetConfig(input_size=32, widths=(4, 8, 8, 16, 16)))
    for module in narrow.modules():  # batch-norm statistics of a trained network, not the initial identity
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 2.0)
    narrow.eval()
    wide = widened(narrow, HSUNetConfig(input_size=32, widths=(4, 12, 8, 24, 32))).eval()
    images = torch.rand(2, 3, 32, 32) - 0.5
    (groups, heatmaps), (wide_groups, wide_heatmaps) = narrow(images), wide(images)
    for group, wide_group in zip(groups, wide_groups, strict=True):
        assert torch.allclose(group, wide_group, atol=1e-5)
    assert torch.allclose(heatmaps, wide_heatmaps, atol=1e-5)
    assert wide.encoder[4][0].weight[16:].abs().sum() > 0  # the new channels are not dead
    with pytest.raises(ValueError):
        widened(narrow, HSUNetConfig(input_size=32, widths=(4, 8, 8, 16, 8)))
    with pytest.raises(ValueError):
        widened(narrow, HSUNetConfig(input_size=48, widths=(4, 8, 8, 16, 16)))


def test_soft_argmax_of_a_peaked_heatmap_is_the_peak_cell_centre_in_image_pixels():
    heatmaps = torch.full((1, 2, 8, 8), -50.0)
    heatmaps[0, 0, 2, 5] = 50.0  # row 2, column 5
    heatmaps[0, 1, 7, 0] = 50.0
    points = soft_argmax(heatmaps, image_size=32)  # 4 image pixels per cell
    assert torch.allclose(points[0], torch.tensor([[22.0, 10.0], [2.0, 30.0]]), atol=1e-4)


def test_a_tiny_training_run_lowers_the_loss():
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    size = 32
    network = HSUNet(HSUNetConfig(input_size=size, widths=(4, 8, 8, 16, 16)))
    images = torch.rand(4, 3, size, size) - 0.5
    mask = torch.zeros(4, size, size, dtype=torch.bool)
    mask[:, 8:24, 10:22] = True
    pncc = torch.from_numpy(rng.uniform(0.2, 0.8, (4, size, size, 3)).astype(np.float32)) * mask[..., None]
    landmarks = torch.from_numpy(rng.uniform(8, 24, (4, 68, 2)).astype(np.float32))
    optimizer = torch.optim.Adam(network.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        groups, heatmaps = network(images)
        loss, parts = hs_unet_loss(groups, heatmaps, pncc, mask, landmarks, landmark_weight=5.0)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert set(parts) == {"l1_8", "bce_8", "l1_16", "bce_16", "l1_32", "bce_32", "landmarks"}
    assert losses[-1] < 0.6 * losses[0]


def test_weights_round_trip_and_bad_files_are_refused(tmp_path):
    config = HSUNetConfig(input_size=32, widths=(4, 8, 8, 16, 16))
    network = HSUNet(config).eval()
    save_weights(network, config, tmp_path / "w.pt")
    loaded, loaded_config = load_network(tmp_path / "w.pt")
    assert loaded_config == config
    crops = np.random.default_rng(0).integers(0, 255, (3, 32, 32, 3), dtype=np.uint8)
    a, b = DafiEstimator(network, config).predict(crops), DafiEstimator(loaded, loaded_config).predict(crops)
    assert np.abs(a.dafi - b.dafi).max() < 0.02 and np.abs(a.landmarks - b.landmarks).max() < 0.5  # float16 storage
    assert a.landmarks.shape == (3, 68, 2) and a.mask.dtype == bool and a.dafi.shape == (3, 32, 32, 3)
    network.landmark_offset[1] = torch.tensor([1.0, -2.0])  # flip mode's: moves the merged landmarks
    save_weights(network, config, tmp_path / "offset.pt")
    shifted = DafiEstimator(load_network(tmp_path / "offset.pt")[0], config, flip=True).predict(crops)
    plain = DafiEstimator(loaded, loaded_config, flip=True).predict(crops)
    assert np.allclose(shifted.landmarks - plain.landmarks, [-1.0, 2.0], atol=0.05)
    content = torch.load(tmp_path / "w.pt", weights_only=True)  # version 1: no offset, read as zero
    content["version"] = 1
    del content["state_dict"]["landmark_offset"]
    torch.save(content, tmp_path / "v1.pt")
    assert not load_network(tmp_path / "v1.pt")[0].landmark_offset.any()
    with pytest.raises(InvalidInputError):
        DafiEstimator(network, config).predict(crops[:, :16])
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    torch.save({"format": "something else"}, tmp_path / "other.pt")
    for path in (tmp_path / "junk.pt", tmp_path / "other.pt", tmp_path / "missing.pt"):
        with pytest.raises(ModelFileError):
            load_network(path)
