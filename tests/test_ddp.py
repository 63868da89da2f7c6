"""Two CPU processes (Lightning DDP, gloo) through ``python -m dnnkit.train trainer=ddp``: the
ranks make the same decisions and end with identical weights.

A NaN batch on rank 1 only is the hard case for a decision: rank 0's own loss is finite. With
``action=skip`` both ranks must drop the same step (else their weights part ways); with
``action=stop`` both must stop at the same step, and the command exits 2 with one message.

The skip run also unfreezes two layers after epoch 0 (``LayerFreezing``): DDP averages only the
gradients it wrapped, so the ranks stay identical only if the callback rewraps the model.
PerformanceScheduling's DDP test is in ``tests/callbacks/test_performance_scheduling.py``.
"""

import json
import socket
import subprocess

import pytest

from tests.probes import cli, cli_env

DDP = [
    "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.max_epochs=2",
    "trainer.enable_progress_bar=false", "data.val_size=200", "data.batch_size=100",
    "+callbacks.nan={_target_: tests.probes.NanBatchAt, step: 3, rank: 1}",
]


@pytest.mark.slow
def test_two_processes_agree(fake_data, tmp_path):
    runs = {}
    # the two jobs run at once: give each its own rendezvous port, so they can never pick the same one
    sockets = [socket.socket() for _ in range(2)]
    for sock in sockets:
        sock.bind(("127.0.0.1", 0))
    ports = [str(sock.getsockname()[1]) for sock in sockets]
    for sock in sockets:
        sock.close()
    for action, port in zip(("skip", "stop"), ports):
        out = tmp_path / action
        args = [*DDP, f"callbacks.non_finite.action={action}", f"hydra.run.dir={out}",
                f"+callbacks.probe={{_target_: tests.probes.RankProbe, out: {out / 'probe'}}}"]
        if action == "skip":
            args.append('+callbacks.freeze={_target_: dnnkit.callbacks.LayerFreezing, frozen: "hidden[12]", unfreeze_at_epoch: 1}')
        runs[action] = subprocess.Popen(cli(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                        env=cli_env(MASTER_PORT=port), cwd=tmp_path)
    outputs = {action: proc.communicate(timeout=600) for action, proc in runs.items()}

    # skip: one step dropped on both ranks, identical weights, the run finishes and reports once
    stdout, stderr = outputs["skip"]
    assert runs["skip"].returncode == 0, stderr[-3000:]
    ranks = [json.loads((tmp_path / "skip" / "probe" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    assert ranks[0]["skipped"] == ranks[1]["skipped"] == 1
    assert ranks[0]["global_step"] == ranks[1]["global_step"] == 10  # 1000 images / (2 x 100) x 2 epochs
    assert ranks[0]["weights"] == ranks[1]["weights"]
    assert ranks[0]["lrs"] == ranks[1]["lrs"] and ranks[0]["train_loss"] == ranks[1]["train_loss"]
    assert ranks[0]["frozen"] == ranks[1]["frozen"] == [] and len(ranks[0]["lrs"]) == 2  # unfrozen into a new group
    assert stdout.count("train: results") == 1 and (tmp_path / "skip" / "train" / "result.json").is_file()
    assert stdout.count("== stage train") == 1  # rank 1 runs the stages silently

    # stop: both ranks stop at the same step with the same decision; exit 2, no traceback
    stdout, stderr = outputs["stop"]
    assert runs["stop"].returncode == 2, stderr[-3000:]
    assert "training diverged at step 3" in stderr and "Traceback" not in stderr
    ranks = [json.loads((tmp_path / "stop" / "probe" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert all("training diverged at step 3" in r["error"] for r in ranks)
    assert ranks[0]["global_step"] == ranks[1]["global_step"] == 3
    assert ranks[0]["weights"] == ranks[1]["weights"]
    assert not (tmp_path / "stop" / "train" / "result.json").exists()
