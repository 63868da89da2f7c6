"""Freeze and unfreeze layers by name, plain PyTorch (no Trainer needed).

``freeze(model, "hidden[12]")`` stops gradients (``requires_grad=False``) *and* pins the layers
in eval mode: ``requires_grad=False`` alone does not stop batch norm's running statistics from
moving, and Lightning (or your own code) calling ``model.train()`` would put a frozen batch-norm
layer back into training mode. A pinned layer ignores ``.train()`` from any parent, so its
weights *and* buffers stay bit-identical however it is trained; its dropout is off too (a frozen
layer computes what it computes at inference). :func:`unfreeze` undoes both.

Either form the book uses selects what is frozen: ``frozen="hidden[12]"``, or
``trainable="hidden[34]|output"`` (every other layer with parameters or buffers is frozen).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
from torch import nn

from dnnkit.errors import DnnkitError
from dnnkit.nn.mlp import MLP
from dnnkit.nn.select import select_layers


def _train_pinned(self: nn.Module, mode: bool = True) -> nn.Module:
    # replaces nn.Module.train on a frozen layer: whatever the caller asks, stay in eval mode
    return nn.Module.train(self, False)


def pin_eval(module: nn.Module) -> None:
    """Put ``module`` (and everything under it) into eval mode and keep it there."""
    for sub in module.modules():
        sub.train = functools.partial(_train_pinned, sub)  # unlike a bound method, it pickles (torch.save(model))
    nn.Module.train(module, False)


def unpin_eval(module: nn.Module, mode: bool = True) -> None:
    """Let ``module`` follow ``.train()`` again and set it to ``mode``."""
    for sub in module.modules():
        sub.__dict__.pop("train", None)
    module.train(mode)


def is_pinned(module: nn.Module) -> bool:
    return "train" in module.__dict__


def _has_state(module: nn.Module) -> bool:
    return any(True for _ in module.parameters()) or any(True for _ in module.buffers())


def complement(module: nn.Module, trainable: dict[str, nn.Module]) -> dict[str, nn.Module]:
    """The outermost layers of ``module`` with parameters or buffers that hold no layer of
    ``trainable`` and lie in none: "everything else" at the coarsest grain."""
    out: dict[str, nn.Module] = {}

    def walk(prefix: str, mod: nn.Module) -> None:
        for name, child in mod.named_children():
            full = f"{prefix}{name}"
            if full in trainable or not _has_state(child):
                continue
            if any(t.startswith(full + ".") for t in trainable):
                walk(full + ".", child)
            else:
                out[full] = child

    walk("", module)
    return out


def resolve(module: nn.Module, frozen: str | None = None, trainable: str | None = None) -> dict[str, nn.Module]:
    """The layers (by qualified name) that ``frozen`` or ``trainable`` leaves frozen.

    Example::

        >>> from dnnkit.nn import MLP
        >>> list(resolve(MLP(hidden=[8, 8, 8, 8]), trainable="hidden[34]|output"))
        ['hidden1', 'hidden2']
    """
    if (frozen is None) == (trainable is None):
        raise DnnkitError(f"give exactly one of frozen= or trainable= (got frozen={frozen!r}, trainable={trainable!r})")
    if frozen is not None:
        return select_layers(module, frozen)
    return complement(module, select_layers(module, trainable))


def left_trainable(module: nn.Module, frozen: str | None = None, trainable: str | None = None) -> list[str]:
    """The parameters (by qualified name) that would still train once ``frozen`` (or all but
    ``trainable``) were frozen; ``module`` is not changed. Empty means the optimizer would get
    an empty parameter list.

    Example::

        >>> from dnnkit.nn import MLP
        >>> left_trainable(MLP(784, [8], 10), frozen="hidden1")
        ['output.weight', 'output.bias']
    """
    stopped = {id(p) for layer in resolve(module, frozen, trainable).values() for p in layer.parameters()}
    return [name for name, p in module.named_parameters() if p.requires_grad and id(p) not in stopped]


def freeze(module: nn.Module, frozen: str | None = None, trainable: str | None = None) -> dict[str, nn.Module]:
    """Freeze the layers selected by ``frozen`` (or all but ``trainable``); return them by name.

    Example::

        >>> from dnnkit.nn import MLP
        >>> net = MLP(hidden=[8, 8, 8], batch_norm=True)
        >>> list(freeze(net, "hidden[12]"))
        ['hidden1', 'hidden2']
        >>> net.train().hidden1.bn.training, net.hidden1.linear.weight.requires_grad, net.hidden3.training
        (False, False, True)
    """
    layers = resolve(module, frozen, trainable)
    for layer in layers.values():
        layer.requires_grad_(False)
        pin_eval(layer)
    return layers


def unfreeze(module: nn.Module, layers: str | dict[str, nn.Module]) -> dict[str, nn.Module]:
    """Make ``layers`` (a pattern, or what :func:`freeze` returned) trainable again."""
    if isinstance(layers, str):
        layers = select_layers(module, layers)
    for layer in layers.values():
        layer.requires_grad_(True)
        unpin_eval(layer, module.training)
    return layers


def describe(layers: dict[str, nn.Module]) -> str:
    """``hidden1, hidden2 (235,500 parameters)`` for logs."""
    n = sum(p.numel() for layer in layers.values() for p in layer.parameters())
    return f"{', '.join(layers) or '(none)'} ({n:,} parameters)"


# ----------------------------------------------------------------------------- caching support


class NotABottom(Exception):
    """The frozen layers are not the bottom of a sequential model (so their outputs cannot be cached)."""


def frozen_bottom(module: nn.Module, names: list[str]) -> tuple[Callable[[torch.Tensor], torch.Tensor], list[nn.Module]]:
    """If the layers ``names`` are the first children of a model whose forward applies its
    children in order (an :class:`~dnnkit.nn.MLP` or an ``nn.Sequential``) inside ``module``,
    return a function computing their output from an input batch, and the layers.

    Example::

        >>> from dnnkit.nn import MLP
        >>> wrapper = nn.Module(); wrapper.model = MLP(784, [30, 20, 10], 2)
        >>> bottom, layers = frozen_bottom(wrapper, ["model.hidden1", "model.hidden2"])
        >>> bottom(torch.zeros(5, 1, 28, 28)).shape
        torch.Size([5, 20])
    """
    if not names:
        raise NotABottom("nothing is frozen")
    parents = {n.rpartition(".")[0] for n in names}
    if len(parents) != 1:
        raise NotABottom(f"the frozen layers {names} do not share one parent")
    parent_name = parents.pop()
    parent = module.get_submodule(parent_name) if parent_name else module
    if not isinstance(parent, (MLP, nn.Sequential)):
        raise NotABottom(f"{parent_name or 'the module'} is a {type(parent).__name__}, not an MLP or nn.Sequential")
    children = [n for n, _ in parent.named_children()]
    local = [n.rpartition(".")[2] for n in names]
    if local != children[: len(local)] or len(local) == len(children):
        raise NotABottom(f"the frozen layers {local} are not the bottom of {children}")
    layers = [getattr(parent, n) for n in local]
    flatten = isinstance(parent, MLP)

    @torch.no_grad()
    def bottom(x: torch.Tensor) -> torch.Tensor:
        if flatten:
            x = x.flatten(1)
        for layer in layers:
            x = type(layer).forward(layer, x)  # the class's forward, even while skip() is on
        return x

    return bottom, layers


def _passthrough(x, *args, **kwargs):
    return x


def skip(layers: list[nn.Module]) -> None:
    """Make ``layers`` pass their input through (their weights stay in the state_dict):
    the model then takes the cached outputs of these layers as its input."""
    for layer in layers:
        layer.forward = _passthrough


def unskip(layers: list[nn.Module]) -> None:
    for layer in layers:
        layer.__dict__.pop("forward", None)


# ----------------------------------------------------------------------------- unfreezing into an optimizer


class CannotSplit(DnnkitError):
    """``optimizer``'s param groups cannot safely take the parameters: :attr:`why` says why,
    :attr:`held` whether the optimizer held some of them already."""

    def __init__(self, why: str, held: bool) -> None:
        super().__init__(f"cannot put parameters into a param group of their own: {why}")
        self.why, self.held = why, held


def split_refusal(optimizer: torch.optim.Optimizer) -> str | None:
    """Why ``optimizer``'s param groups cannot safely be split or added to, else ``None``.

    torch's own optimizers keep their state (momentum, Adam moments, step counts) per parameter,
    so a parameter moved to another group keeps it; LBFGS steps only its first group; an
    optimizer with its own ``step`` may keep state per group, which a split would tear apart.
    """
    cls = type(optimizer)
    if isinstance(optimizer, torch.optim.LBFGS):
        return "torch.optim.LBFGS steps only its first param group, so no layer can have a learning rate of its own"
    module = getattr(cls.step, "__module__", "") or ""
    if not module.startswith("torch.optim"):
        return (f"{cls.__module__}.{cls.__qualname__} has its own step(), which may keep state per param group "
                "(torch.optim's optimizers keep it per parameter)")
    return None


def _schedulers_of(optimizer: torch.optim.Optimizer, schedulers):
    for scheduler in schedulers:  # SequentialLR and ChainedScheduler hold others
        yield from _schedulers_of(optimizer, getattr(scheduler, "_schedulers", None) or ())
        if getattr(scheduler, "optimizer", None) is optimizer:
            yield scheduler


def _new_group_lrs(optimizer: torch.optim.Optimizer, schedulers, lr: float, like: int) -> None:
    # LR schedulers keep one entry per param group: a base LR, and (LambdaLR) a factor function,
    # (ReduceLROnPlateau) a minimum, (CyclicLR) a maximum; the new group takes group `like`'s
    for scheduler in _schedulers_of(optimizer, schedulers):
        for attr in ("base_lrs", "_last_lr"):
            if isinstance(getattr(scheduler, attr, None), list):
                getattr(scheduler, attr).append(lr)
        for attr in ("lr_lambdas", "min_lrs", "max_lrs"):
            values = getattr(scheduler, attr, None)
            if isinstance(values, list) and values:
                values.append(values[like])


def add_to_optimizer(optimizer: torch.optim.Optimizer, params: list[nn.Parameter], lr: float | None = None,
                     schedulers=()) -> str:
    """Give ``params`` (just unfrozen) the learning rate ``lr`` in ``optimizer``, whether or not
    the optimizer was built over them already; return what was done, in words.

    Parameters the optimizer does not hold join it as one new param group at ``lr`` (default:
    the first group's), as in Lightning's ``BaseFinetuning``. Parameters it holds already (a
    ``configure_optimizers`` over ``self.parameters()``) move, with ``lr`` given, out of their group
    into a new group with that group's other settings (weight decay, momentum, ...) and ``lr``; their
    optimizer state is keyed by parameter, so it moves with them. A group holding only them takes
    ``lr`` in place. Without ``lr`` they stay where they are. ``schedulers`` (LR schedulers over
    ``optimizer``) get a base LR for each new group or the changed one.

    Raises:
        CannotSplit: a new group is needed and :func:`split_refusal` says it is not safe
            (nothing has changed then).

    Example::

        >>> net = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 1))
        >>> opt = torch.optim.SGD(net.parameters(), lr=0.1)
        >>> add_to_optimizer(opt, list(net[0].parameters()), lr=0.01)
        'already in the optimizer: moved out of param group 0 (lr 0.1) into a new param group 1, lr 0.01'
        >>> [g["lr"] for g in opt.param_groups], len(opt.param_groups[0]["params"])
        ([0.1, 0.01], 2)
    """
    wanted = {id(p) for p in params}
    held = [(i, [p for p in group["params"] if id(p) in wanted]) for i, group in enumerate(optimizer.param_groups)]
    held = [(i, ps) for i, ps in held if ps]
    known = {id(p) for _, ps in held for p in ps}
    missing = [p for p in params if id(p) not in known]
    new_lr = float(optimizer.param_groups[0]["lr"] if lr is None else lr)
    splits = {i for i, ps in held if lr is not None and float(optimizer.param_groups[i]["lr"]) != new_lr
              and len(ps) < len(optimizer.param_groups[i]["params"])}
    if missing or splits:
        why = split_refusal(optimizer)
        if why is not None:
            raise CannotSplit(why, held=bool(held))
    done = []
    for i, ps in held:
        group = optimizer.param_groups[i]
        old = float(group["lr"])
        if lr is None or old == new_lr:
            done.append(f"kept in param group {i}, lr {old:g}")
        elif i not in splits:  # the group holds only them
            group["lr"] = torch.as_tensor(new_lr).to(group["lr"]) if torch.is_tensor(group["lr"]) else new_lr
            if "initial_lr" in group:
                group["initial_lr"] = new_lr
            for scheduler in _schedulers_of(optimizer, schedulers):
                for attr in ("base_lrs", "_last_lr"):
                    if isinstance(getattr(scheduler, attr, None), list):
                        getattr(scheduler, attr)[i] = new_lr
            done.append(f"param group {i} holds only them, its lr {old:g} set to {new_lr:g}")
        else:
            moved = {id(p) for p in ps}
            group["params"] = [p for p in group["params"] if id(p) not in moved]
            settings = {k: (v.clone() if torch.is_tensor(v) else v) for k, v in group.items() if k != "params"}
            settings["lr"] = torch.as_tensor(new_lr).to(group["lr"]) if torch.is_tensor(group["lr"]) else new_lr
            if "initial_lr" in settings:
                settings["initial_lr"] = new_lr
            optimizer.add_param_group({**settings, "params": ps})
            _new_group_lrs(optimizer, schedulers, new_lr, like=i)
            done.append(f"moved out of param group {i} (lr {old:g}) into a new param group "
                        f"{len(optimizer.param_groups) - 1}, lr {new_lr:g}")
    if missing:
        optimizer.add_param_group({"params": missing, "lr": new_lr, "initial_lr": new_lr})
        _new_group_lrs(optimizer, schedulers, new_lr, like=0)
        done.append(f"{'the other ' + str(len(missing)) + ' ' if held else ''}into a new param group "
                    f"{len(optimizer.param_groups) - 1}, lr {new_lr:g}")
    if not held:
        return done[0] if done else "(no parameters)"
    n_held = sum(len(ps) for _, ps in held)
    head = "already in the optimizer" if not missing else f"{n_held} of {len(params)} already in the optimizer"
    return f"{head}: {'; '.join(done)}"
