"""Safe loading: a file that would run code when unpickled runs nothing through dnnkit and fails
with a clear message (every checkpoint is read with ``torch.load(weights_only=True)``)."""

import pytest
import torch

from dnnkit.errors import DnnkitError
from dnnkit.nn import MLP
from dnnkit.nn.surgery import read_state_dict, reuse_layers
from dnnkit.runner import run_recipe
from tests.conftest import FAST, compose_config


class Payload:
    """Unpickling this calls ``exec``, which writes ``marker``: proof that code ran."""

    def __init__(self, marker) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('code ran')",))


@pytest.fixture
def evil(tmp_path):
    """A Lightning-looking checkpoint with real weights and a payload beside them."""
    marker = tmp_path / "marker"
    state = {f"model.{k}": v for k, v in MLP(784, [300, 100], 10).state_dict().items()}
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": state, "global_step": 3, "hook": Payload(marker)}, path)
    return path, marker


def test_the_payload_is_real(evil):
    path, marker = evil
    torch.load(path, weights_only=False)  # what an unsafe loader would do
    assert marker.read_text() == "code ran"


def test_load_state_dict_runs_nothing(evil):
    path, marker = evil
    with pytest.raises(DnnkitError, match=r"refusing to load '.*evil.ckpt': besides tensors "
                                          r"it holds 'exec', which would run when unpickled"):
        read_state_dict(path)
    with pytest.raises(DnnkitError, match="executes nothing"):
        reuse_layers(MLP(784, [300, 100], 10), path, "hidden1")
    assert not marker.exists()


def test_recipe_reuse_and_resume_run_nothing(evil, fake_data, tmp_path):
    path, marker = evil
    with pytest.raises(DnnkitError, match="refusing to load"):
        run_recipe(compose_config(FAST + [f"+stages={{b: {{reuse: {{from: '{path}', layers: hidden1}}}}}}"]), tmp_path / "a")
    stage = tmp_path / "b" / "train" / "checkpoints"
    stage.mkdir(parents=True)
    (stage / "last.ckpt").write_bytes(path.read_bytes())
    with pytest.raises(DnnkitError, match="refusing to load"):
        run_recipe(compose_config(FAST + ["resume=true"]), tmp_path / "b")
    assert not marker.exists()

