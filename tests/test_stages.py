"""Stage checks happen before anything trains."""

import pytest

from dnnkit.errors import DnnkitError
from dnnkit.runner import run_recipe
from dnnkit.stages import stage_configs
from tests.conftest import FAST, compose_config


@pytest.mark.parametrize("source", ["nope", "B", "missing.ckpt"])
def test_bad_reuse_source_of_a_later_stage_fails_before_the_first_stage_trains(fake_data, tmp_path, source):
    stages = f"+stages={{A: {{}}, B: {{reuse: {{from: {source}}}}}}}"
    with pytest.raises(DnnkitError, match=f"stage 'B'.*{source}"):
        run_recipe(compose_config(FAST + [stages]), tmp_path / "run")
    assert not (tmp_path / "run" / "A").exists()  # A never started


def test_reuse_from_a_later_stage_is_refused():
    cfg = compose_config(["+stages={A: {reuse: {from: B}}, B: {}}"])
    with pytest.raises(DnnkitError, match=r"stage 'A' reuses from 'B', which is neither an earlier stage \(\[\]\)"):
        stage_configs(cfg)


def test_a_stage_callback_without_target_is_that_option():
    cfg = compose_config(["+stages={A: {callbacks: {layer_freezing: {trainable: output}}}}"])
    (_, stage), = stage_configs(cfg)
    assert stage.callbacks.layer_freezing._target_ == "dnnkit.callbacks.LayerFreezing"
    assert stage.callbacks.layer_freezing.trainable == "output" and stage.callbacks.layer_freezing.cache is True
