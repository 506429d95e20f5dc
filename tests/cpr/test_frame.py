import torch

from cprfa.cpr.frame import NormalizedFrame
from cprfa.data.crop import CROP_ENLARGE, CROP_SHIFT_UP
from cprfa.model.projection import ParamLayout, landmarks_3d


def test_initial_parameters_are_the_canonical_face_of_the_crop(face_model):
    frame = NormalizedFrame.for_crop(face_model, 256)
    p0 = ParamLayout.of(face_model).initial(1, torch.float64)
    crop_params = frame.params_from_frame(p0)
    points = landmarks_3d(face_model, crop_params)[0, :, :2]
    low, high = points.amin(dim=0), points.amax(dim=0)
    # its landmark box has the area and the centre of the square box the crop policy centres in the crop
    side = 256 / CROP_ENLARGE
    assert abs(float((high - low).prod().sqrt()) - side) < 1e-6
    assert torch.allclose((low + high) / 2, torch.tensor([128.0, 128.0 + CROP_SHIFT_UP * side], dtype=torch.float64))
    params = torch.randn(3, ParamLayout.of(face_model).size, dtype=torch.float64)
    assert torch.allclose(frame.params_from_frame(frame.params_to_frame(params)), params)
    half = NormalizedFrame.for_crop(face_model, 128)
    assert abs(half.unit * 2 - frame.unit) < 1e-9  # one normalized frame for every crop size
