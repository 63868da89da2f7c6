"""LayerFreezing on a LightningModule that knows nothing of dnnkit, with batch norm in the
frozen layers: frozen parameters *and* buffers bit-identical, unfreezing into a new param group,
resume mid-schedule."""

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from dnnkit.callbacks import LayerFreezing
from dnnkit.errors import DnnkitError


class PlainNet(L.LightningModule):
    """Not dnnkit's: own layer names, batch norm in the bottom, optimizer over *all* parameters."""

    def __init__(self, only_trainable: bool = False, dropout: float = 0.2):
        super().__init__()
        self.only_trainable = only_trainable
        self.features = nn.Sequential(nn.Linear(10, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(dropout))
        self.head = nn.Sequential(nn.Linear(16, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 3))

    def forward(self, x):
        return self.head(self.features(x))

    def on_train_epoch_start(self):
        self.train()  # what older Lightning versions did each epoch, and what user code may do

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self(x), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", F.cross_entropy(self(x), y))

    def configure_optimizers(self):
        params = [p for p in self.parameters() if p.requires_grad] if self.only_trainable else self.parameters()
        return torch.optim.Adam(params, lr=1e-2)


def loader():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 10, generator=g) * 3 + 1  # far from BN's initial statistics
    return DataLoader(TensorDataset(x, torch.randint(0, 3, (64,), generator=g)), batch_size=16)


def trainer(tmp_path, epochs, callbacks, **kw):
    return L.Trainer(
        max_epochs=epochs, callbacks=callbacks, logger=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=tmp_path, accelerator="cpu", **kw,
    )


def snapshot(module):
    return {k: v.clone() for k, v in module.state_dict().items()}


@pytest.mark.parametrize("how", [{"frozen": "features"}, {"trainable": "head"}])
def test_frozen_params_and_buffers_are_bit_identical(tmp_path, how, capsys):
    L.seed_everything(0)
    net = PlainNet()
    before = snapshot(net)
    trainer(tmp_path, 3, [LayerFreezing(**how)], enable_checkpointing=False).fit(net, loader(), loader())
    after = net.state_dict()
    frozen = [k for k in before if k.startswith("features.")]
    assert "features.1.running_mean" in frozen and "features.1.num_batches_tracked" in frozen
    assert all(torch.equal(before[k], after[k]) for k in frozen)
    assert all(not torch.equal(before[k], after[k]) for k in before if k.startswith("head.") and "num_batches" not in k)
    assert after["head.1.num_batches_tracked"] == 12
    assert "LayerFreezing: frozen (eval mode) features (208 parameters)" in capsys.readouterr().out


def test_unfreeze_adds_a_param_group_and_keeps_optimizer_state(tmp_path, capsys):
    L.seed_everything(0)
    net = PlainNet(only_trainable=True)
    cb = LayerFreezing(frozen="features", unfreeze_at_epoch=2, unfreeze_lr=1e-3)
    before = snapshot(net)
    t = trainer(tmp_path, 4, [cb], enable_checkpointing=False)
    t.fit(net, loader(), loader())
    opt = t.optimizers[0]
    assert [g["lr"] for g in opt.param_groups] == [1e-2, 1e-3]
    assert opt.param_groups[1]["params"] == list(net.features.parameters())
    assert int(opt.state[net.head[0].weight]["step"]) == 16  # trained all along: state kept
    assert int(opt.state[net.features[0].weight]["step"]) == 8  # since the unfreeze
    assert not torch.equal(before["features.1.running_mean"], net.state_dict()["features.1.running_mean"])
    assert net.features[1].training
    assert "epoch 3: unfroze features (208 parameters) into a new param group 1, lr 0.001" in capsys.readouterr().out


@pytest.mark.parametrize("stop_after", [1, 3])  # resume before and after the unfreeze
def test_resume_mid_schedule_matches_an_uninterrupted_run(tmp_path, stop_after):
    def run(epochs, folder, ckpt_path=None, net=None):
        L.seed_everything(0)
        net = PlainNet(only_trainable=True, dropout=0.0)  # Lightning does not checkpoint the RNG state
        cb = LayerFreezing(frozen="features", unfreeze_at_epoch=2, unfreeze_lr=1e-3, verbose=False)
        ckpt = ModelCheckpoint(dirpath=folder, save_last=True, save_top_k=0)
        t = trainer(tmp_path, epochs, [cb, ckpt], deterministic=True)
        t.fit(net, loader(), loader(), ckpt_path=ckpt_path)
        return net, t, cb

    whole, t_whole, _ = run(4, tmp_path / "a")
    run(stop_after, tmp_path / "b")
    resumed, t_resumed, cb = run(4, tmp_path / "c", ckpt_path=tmp_path / "b" / "last.ckpt")
    assert cb.unfrozen_layers == ["features"]
    assert [g["lr"] for g in t_resumed.optimizers[0].param_groups] == [1e-2, 1e-3]
    for k, v in whole.state_dict().items():
        assert torch.equal(v, resumed.state_dict()[k]), k


def test_bad_arguments():
    with pytest.raises(DnnkitError, match="exactly one of frozen= or trainable="):
        LayerFreezing()
    with pytest.raises(DnnkitError, match="not a valid regular expression"):
        LayerFreezing(frozen="hidden[12")
    with pytest.raises(DnnkitError, match="unfreeze_at_epoch must be an integer >= 0 or null"):
        LayerFreezing(frozen="hidden1", unfreeze_at_epoch=-1)


def test_pattern_matching_nothing_fails_at_setup(tmp_path):
    with pytest.raises(DnnkitError, match="'hidden\\[12\\]' matches no layer of PlainNet; layers are: features, "):
        trainer(tmp_path, 1, [LayerFreezing(frozen="hidden[12]")]).fit(PlainNet(), loader())


def test_unfreeze_pattern_matching_no_frozen_layer_fails_before_training(tmp_path):
    t = trainer(tmp_path, 3, [LayerFreezing(frozen="features", unfreeze="head", unfreeze_at_epoch=2)])
    with pytest.raises(DnnkitError, match="unfreeze='head' matches none of the frozen layers"):
        t.fit(PlainNet(), loader())
    assert t.global_step == 0


@pytest.mark.parametrize("only_trainable", [True, False])
def test_unfreeze_under_a_scheduler(tmp_path, only_trainable):
    class Scheduled(PlainNet):
        def configure_optimizers(self):
            opt = torch.optim.SGD([p for p in self.parameters() if p.requires_grad or not self.only_trainable], lr=0.1)
            plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=0)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": plateau, "monitor": "val_loss"}}

    L.seed_everything(0)
    cb = LayerFreezing(frozen="features", unfreeze_at_epoch=1, unfreeze_lr=0.01, verbose=False)
    t = trainer(tmp_path, 4, [cb], enable_checkpointing=False)
    t.fit(Scheduled(only_trainable=only_trainable), loader(), loader())
    groups = t.optimizers[0].param_groups
    assert len(groups) == 2 and groups[1]["lr"] <= 0.01  # the plateau scheduler acts on the new group too


def test_unfreeze_lr_applies_to_parameters_already_in_the_optimizer(tmp_path, capsys):
    # configure_optimizers over self.parameters(): the frozen parameters are in group 0 already
    from dnnkit.callbacks import EpochSummary

    L.seed_everything(0)
    net = PlainNet(only_trainable=False)
    cb = LayerFreezing(frozen="features", unfreeze_at_epoch=2, unfreeze_lr=1e-3)
    t = trainer(tmp_path, 4, [cb, EpochSummary(keys=["val_loss"])], enable_checkpointing=False)
    t.fit(net, loader(), loader())
    opt = t.optimizers[0]
    assert [g["lr"] for g in opt.param_groups] == [1e-2, 1e-3]
    assert opt.param_groups[0]["params"] == list(net.head.parameters())
    assert opt.param_groups[1]["params"] == list(net.features.parameters())
    assert opt.param_groups[1]["betas"] == opt.param_groups[0]["betas"]  # the group's other settings kept
    assert int(opt.state[net.head[0].weight]["step"]) == 16  # trained all along: state kept
    assert int(opt.state[net.features[0].weight]["step"]) == 8  # since the unfreeze
    lines = capsys.readouterr().out.splitlines()
    i = next(i for i, line in enumerate(lines) if "unfroze features" in line)
    # the epoch counted as EpochSummary counts it (1-based): the line before ends epoch 2, the next is epoch 3
    assert lines[i] == ("LayerFreezing: epoch 3: unfroze features (208 parameters), already in the optimizer: "
                        "moved out of param group 0 (lr 0.01) into a new param group 1, lr 0.001")
    assert lines[i - 1].startswith("epoch 2/4") and lines[i + 1].startswith("epoch 3/4")
    assert "unfrozen at the start of epoch 3" in "\n".join(lines[:i])


def test_parameters_already_in_the_optimizer_keep_its_lr_without_unfreeze_lr(tmp_path, capsys):
    L.seed_everything(0)
    t = trainer(tmp_path, 2, [LayerFreezing(frozen="features", unfreeze_at_epoch=1)], enable_checkpointing=False)
    t.fit(net := PlainNet(), loader(), loader())
    assert [g["lr"] for g in t.optimizers[0].param_groups] == [1e-2]
    assert len(t.optimizers[0].param_groups[0]["params"]) == len(list(net.parameters()))
    assert ("LayerFreezing: epoch 2: unfroze features (208 parameters), already in the optimizer: "
            "kept in param group 0, lr 0.01") in capsys.readouterr().out


def test_a_group_holding_only_the_unfrozen_parameters_takes_unfreeze_lr(tmp_path, capsys):
    class TwoGroups(PlainNet):
        def configure_optimizers(self):
            return torch.optim.SGD([{"params": self.head.parameters()}, {"params": self.features.parameters(), "lr": 0.5}], lr=0.1)

    t = trainer(tmp_path, 2, [LayerFreezing(frozen="features", unfreeze_at_epoch=1, unfreeze_lr=0.02)], enable_checkpointing=False)
    t.fit(TwoGroups(), loader(), loader())
    assert [g["lr"] for g in t.optimizers[0].param_groups] == [0.1, 0.02]
    assert "already in the optimizer: param group 1 holds only them, its lr 0.5 set to 0.02" in capsys.readouterr().out


class OwnStep(torch.optim.SGD):
    """An optimizer with a step() of its own: it may keep state per param group."""

    def step(self, closure=None):
        return super().step(closure)


@pytest.mark.parametrize(("make", "advice"), [
    (lambda params: torch.optim.LBFGS(params, lr=0.1), "torch.optim.LBFGS steps only its first param group"),
    (lambda params: OwnStep(params, lr=0.1), "test_layer_freezing.OwnStep has its own step()"),
], ids=["lbfgs", "own_step"])
def test_an_optimizer_that_cannot_be_split_is_refused_in_one_line(tmp_path, make, advice):
    class Own(PlainNet):
        def configure_optimizers(self):
            return make(self.parameters())

    net = Own()
    t = trainer(tmp_path, 2, [LayerFreezing(frozen="features", unfreeze_at_epoch=1, unfreeze_lr=0.01)], enable_checkpointing=False)
    with pytest.raises(DnnkitError) as err:
        t.fit(net, loader(), loader())
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith("LayerFreezing: cannot give the unfrozen layers features unfreeze_lr=0.01: ")
    assert "put their parameters in" in msg and advice in msg
    assert ("leave unfreeze_lr unset" in msg) and (isinstance(t.optimizers[0], torch.optim.LBFGS) or "p.requires_grad]" in msg)
    assert len(t.optimizers[0].param_groups) == 1 and not net.features[0].weight.requires_grad  # nothing changed


@pytest.mark.parametrize("stop_after", [1, 3])
def test_resume_after_splitting_a_group_matches_an_uninterrupted_run(tmp_path, stop_after):
    def run(epochs, folder, ckpt_path=None):
        L.seed_everything(0)
        net = PlainNet(only_trainable=False, dropout=0.0)
        cb = LayerFreezing(frozen="features", unfreeze_at_epoch=2, unfreeze_lr=1e-3, verbose=False)
        t = trainer(tmp_path, epochs, [cb, ModelCheckpoint(dirpath=folder, save_last=True, save_top_k=0)], deterministic=True)
        t.fit(net, loader(), loader(), ckpt_path=ckpt_path)
        return net, t

    whole, _ = run(4, tmp_path / "a")
    run(stop_after, tmp_path / "b")
    resumed, t = run(4, tmp_path / "c", ckpt_path=tmp_path / "b" / "last.ckpt")
    assert [g["lr"] for g in t.optimizers[0].param_groups] == [1e-2, 1e-3]
    for k, v in whole.state_dict().items():
        assert torch.equal(v, resumed.state_dict()[k]), k


def test_hooks_are_marked_override():
    hooks = [n for n, v in vars(LayerFreezing).items() if callable(v) and not n.startswith("_") and hasattr(L.Callback, n)]
    assert len(hooks) == 5 and all(getattr(getattr(LayerFreezing, n), "__override__", False) for n in hooks)


def test_add_to_optimizer_keeps_each_groups_settings_and_the_schedulers_in_step():
    from dnnkit.nn.freeze import add_to_optimizer

    net = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 3), nn.Linear(3, 1))
    decay = [net[0].weight, net[1].weight, net[2].weight]
    no_decay = [net[0].bias, net[1].bias, net[2].bias]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay[:2], "weight_decay": 0.0}], lr=0.05)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda epoch: 0.5 ** epoch)
    net(torch.ones(2, 3)).sum().backward()
    opt.step()
    moment = opt.state[net[0].weight]["exp_avg"].clone()
    # net[0] and net[1] were in both groups (group 1 holds nothing else), net[2].bias in none
    done = add_to_optimizer(opt, [*net[0].parameters(), *net[1].parameters(), net[2].bias], lr=0.01, schedulers=[sched])
    assert done == ("4 of 5 already in the optimizer: moved out of param group 0 (lr 0.05) into a new param group 2, "
                    "lr 0.01; param group 1 holds only them, its lr 0.05 set to 0.01; the other 1 into a new param group 3, lr 0.01")
    groups = opt.param_groups
    assert [g["params"] for g in groups] == [[net[2].weight], no_decay[:2], [net[0].weight, net[1].weight], [net[2].bias]]
    assert [g["weight_decay"] for g in groups[:3]] == [0.1, 0.0, 0.1]  # each keeps its group's decay
    assert torch.equal(opt.state[net[0].weight]["exp_avg"], moment)  # the state went with the parameter
    sched.step()
    assert [g["lr"] for g in groups] == [0.025, 0.005, 0.005, 0.005]  # every group on the schedule, from its own base
    opt.step()
