"""``python -m dnnkit.train``: compose the config, run the recipe's stages, print one table.

Examples::

    python -m dnnkit.train +recipe=mnist_bn
    python -m dnnkit.train +recipe=mnist_bn trainer.max_epochs=5 optimizer=adam optimizer.lr=1e-3
    python -m dnnkit.train -m +recipe=mnist_bn optimizer=momentum,nesterov,adam

A bad value exits with status 2 and one message, without a traceback (set
``HYDRA_FULL_ERROR=1`` to see it).

Lightning, torchvision and matplotlib are imported only once the config is composed (in
:func:`main`): ``--help``, ``--cfg job`` and a config error cost Hydra's composition, not
their ~5 s of imports (``tests/test_cheap_start.py`` keeps it so).
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import warnings

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from dnnkit.console import route_to_root
from dnnkit.errors import find_dnnkit_error
from dnnkit.hydra_callbacks import with_checked_choices
from dnnkit.stages import config_dir

log = logging.getLogger(__name__)


def quiet_third_party_noise() -> None:
    """Drop lines that say nothing about the run: Lightning's advert for its cloud logger and a
    deprecation warning raised inside Lightning itself."""
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(lambda r: "Tip:" not in r.getMessage())
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")


def report_error(message: str) -> None:
    """``error: ...`` on stderr, and the same line in ``train.log``."""
    print(f"error: {message}", file=sys.stderr)
    log.error("error: %s", message, extra={"console": False})


@with_checked_choices  # logger=nope, hparams_search=nope: one line, exit 2 (Hydra's error is several, exit 1)
@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="config")
def main(cfg: DictConfig) -> float | None:
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    from dnnkit import interrupt
    from dnnkit.runner import close_process_group, run_recipe  # Lightning: imported here, not for --help

    route_to_root()
    quiet_third_party_noise()
    interrupt.install()
    run_dir = HydraConfig.get().runtime.output_dir
    try:
        results = run_recipe(cfg, run_dir)
    except (interrupt.Interrupted, SIGTERMException) as stop:
        stop = stop if isinstance(stop, interrupt.Interrupted) else interrupt.Interrupted(signal.SIGTERM)
        overrides = list(HydraConfig.get().overrides.task)
        log.warning("%s; resume with:\n  %s", stop, interrupt.resume_command(run_dir, overrides))
        sys.exit(stop.exit_code)
    except Exception as err:
        ours = find_dnnkit_error(err)
        if ours is None or os.environ.get("HYDRA_FULL_ERROR") == "1":
            log.exception("the run failed", extra={"console": False})  # the traceback in train.log too
            raise
        report_error(str(ours))
        sys.exit(2)
    finally:
        close_process_group()
    last = results[-1].metrics if results else {}
    metric = cfg.get("optimized_metric")  # the last stage's, for a sweeper (hparams_search=optuna)
    return last.get(metric) if metric else None


if __name__ == "__main__":
    main()
