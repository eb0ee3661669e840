from __future__ import annotations

import pickle
import zipfile

import numpy as np
import pytest

from include.image_similarity.efficientnet_lite import weights_file_path
from include.image_similarity.torch_legacy import TorchFileError, load_legacy_state_dict


def test_reads_the_shipped_efficientnet_lite0_weights():
    state = load_legacy_state_dict(weights_file_path())
    assert state["_conv_stem.weight"].shape == (32, 3, 3, 3)
    assert state["_blocks.15._project_conv.weight"].shape == (320, 1152, 1, 1)
    assert state["_fc.weight"].shape == (1000, 1280)
    assert all(v.dtype == np.float32 for k, v in state.items() if "num_batches" not in k)
    # Batch-norm variances are positive: a sign the bytes were read at the right offsets.
    assert (state["_bn1.running_var"] > 0).all()


def test_strided_storage_is_rebuilt_in_pytorch_order():
    # The file stores convolution kernels in TF order behind PyTorch strides; reading them as
    # contiguous would scramble channels. A depthwise kernel's taps must vary along (h, w).
    state = load_legacy_state_dict(weights_file_path())
    kernel = state["_blocks.0._depthwise_conv.weight"]  # (32, 1, 3, 3)
    assert kernel.flags["C_CONTIGUOUS"]
    assert not np.allclose(kernel[:, 0, 0, 0], kernel[:, 0, 1, 1])


def test_refuses_a_zip_file(tmp_path):
    path = tmp_path / "new-format.pth"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", b"")
    with pytest.raises(TorchFileError, match="not a legacy PyTorch file"):
        load_legacy_state_dict(path)


def test_never_runs_code_from_the_file(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            import os

            return (os.system, (f"touch {marker}",))

    path = tmp_path / "evil.pth"
    with path.open("wb") as handle:
        for obj in (0x1950A86A20F9469CFC6C, 1001, {"little_endian": True}, Evil()):
            pickle.dump(obj, handle, protocol=2)
    with pytest.raises(TorchFileError, match="refusing to load"):
        load_legacy_state_dict(path)
    assert not marker.exists()
