import pytest
import torch

from dnnkit.data import MNISTDataModule, TensorLoader, split_indices
from dnnkit.errors import DnnkitError


def test_splits_are_deterministic_given_the_seed(fake_data):
    a, b, c = (MNISTDataModule("mnist", val_size=100, seed=s) for s in (1, 1, 2))
    assert torch.equal(a.split("val")[1], b.split("val")[1])
    assert torch.equal(a.split("train")[0], b.split("train")[0])
    assert not torch.equal(a.split("val")[0], c.split("val")[0])
    assert len(a.split("train")[1]) == 1100 and len(a.split("test")[1]) == 300


def test_class_subsets_are_remapped_in_the_given_order(fake_data):
    dm = MNISTDataModule("fashion_mnist", classes=[6, 5], val_size=50, seed=0)
    train_x, train_y = dm.split("train")
    assert set(train_y.tolist()) == {0, 1}
    assert dm.class_names == ["Shirt", "Sandal"] and dm.num_classes == 2
    # class 6 lights row band 6 of the synthetic images: it must now carry label 0
    band6 = train_x[:, 14:16, 4:24].float().mean(dim=(1, 2)) > 200
    assert torch.equal(band6, train_y == 0)


def test_n_per_class_is_exact_and_deterministic(fake_data):
    a = MNISTDataModule("mnist", n_per_class=7, val_size=100, seed=3)
    b = MNISTDataModule("mnist", n_per_class=7, val_size=100, seed=3)
    assert a.split("train")[1].bincount().tolist() == [7] * 10
    assert torch.equal(a.split("train")[0], b.split("train")[0])


def test_split_indices_disjoint():
    labels = torch.arange(1000) % 10
    train, val = split_indices(labels, 100, 20, seed=0)
    assert len(set(train.tolist()) & set(val.tolist())) == 0 and len(train) == 200


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"classes": [3, 12]}, r"classes=\[3, 12\] is invalid.*0=0"),
        ({"classes": [4]}, "at least two distinct"),
        ({"batch_size": 0}, "batch_size must be a positive integer, got 0"),
        ({"name": "cifar"}, "unknown dataset 'cifar'; valid: fashion_mnist, mnist"),
        # issue 14: booleans are not numbers
        ({"n_per_class": True}, r"^data.n_per_class must be a positive integer or null, got True$"),
        ({"val_size": True}, r"^data.val_size must be an integer >= 0, got True$"),
        ({"batch_size": True}, r"^data.batch_size must be a positive integer, got True$"),
        ({"seed": True}, r"^data.seed must be an integer in \[0, 4294967296\), got True$"),
        ({"classes": [True, 2]}, r"classes=\[True, 2\] is invalid"),
    ],
)
def test_bad_arguments_fail_in_the_constructor(kwargs, message):
    with pytest.raises(DnnkitError, match=message):
        MNISTDataModule(**kwargs)


def test_n_per_class_larger_than_available(fake_data):
    dm = MNISTDataModule("mnist", n_per_class=500, val_size=100)
    with pytest.raises(DnnkitError, match="n_per_class=500 but class .* has only"):
        dm.setup()


def test_loader_scales_and_shuffles_per_epoch():
    x = torch.arange(10, dtype=torch.uint8).view(10, 1, 1).expand(10, 2, 2).contiguous()
    loader = TensorLoader(x, torch.arange(10), batch_size=4, shuffle=True, seed=0)
    first = torch.cat([y for _, y in loader])
    again = torch.cat([y for _, y in loader])
    loader.sampler.set_epoch(1)
    second = torch.cat([y for _, y in loader])
    assert sorted(first.tolist()) == list(range(10))
    assert torch.equal(first, again) and not torch.equal(first, second)
    xb, yb = next(iter(loader))
    assert xb.dtype == torch.float32 and torch.allclose(xb[:, 0, 0, 0], yb.float() / 255)


def test_loader_shards_by_rank():
    x = torch.zeros(10, 2, 2, dtype=torch.uint8)
    seen = [torch.cat([y for _, y in TensorLoader(x, torch.arange(10), 2, shuffle=True, rank=r, world_size=2)]) for r in (0, 1)]
    assert len(seen[0]) == len(seen[1]) == 4
    assert not set(seen[0].tolist()) & set(seen[1].tolist())


def test_loader_resumes_where_its_checkpoint_stopped():
    x = torch.zeros(20, 2, 2, dtype=torch.uint8)

    def labels(loader, epoch, state=None):
        if state is not None:
            loader.load_state_dict(state)
        loader.sampler.set_epoch(epoch)  # Lightning's order: state first, then the epoch it runs
        return [y.tolist() for _, y in loader]

    fresh = TensorLoader(x, torch.arange(20), 4, shuffle=True, seed=1)
    epoch1 = labels(fresh, 1)
    # saved after 2 of epoch 1's 5 batches: the rest of epoch 1
    assert labels(TensorLoader(x, torch.arange(20), 4, shuffle=True, seed=1), 1, {"epoch": 1, "served": 2}) == epoch1[2:]
    # saved after epoch 0's last batch: Lightning goes on with epoch 1, which must run whole
    assert labels(TensorLoader(x, torch.arange(20), 4, shuffle=True, seed=1), 1, {"epoch": 0, "served": 5}) == epoch1


def test_val_split_first_takes_the_head_of_the_file():
    labels = torch.arange(100) % 10
    train, val = split_indices(labels, 20, None, seed=3, val_split="first")
    assert val.tolist() == list(range(20))
    assert sorted(train.tolist()) == list(range(20, 100))
    with pytest.raises(DnnkitError, match="unknown val_split 'last'; valid: first, random"):
        split_indices(labels, 20, None, seed=3, val_split="last")


def test_a_label_outside_the_classes_names_the_file(fake_data):
    from dnnkit.data.datamodule import load_arrays
    from dnnkit.data.idx import write_idx

    path = fake_data / "mnist" / "t10k-labels-idx1-ubyte.gz"
    labels = torch.zeros(300, dtype=torch.uint8)
    labels[7] = 12
    write_idx(path, labels)
    load_arrays.cache_clear()
    with pytest.raises(DnnkitError, match=r"t10k-labels-idx1-ubyte.gz holds label 12; mnist labels are 0..9"):
        MNISTDataModule("mnist").setup()


def test_split_indices_refuses_booleans():
    labels = torch.arange(100) % 10
    with pytest.raises(DnnkitError, match=r"val_size must be an integer in \[0, 100\), got True"):
        split_indices(labels, True, None, seed=0)
    with pytest.raises(DnnkitError, match=r"n_per_class must be a positive integer or null, got True"):
        split_indices(labels, 10, True, seed=0)


def test_loader_refuses_fewer_batches_than_ranks():
    """Issue 14: under DDP a rank with no batch trained 0 epochs, and the run reported success."""
    x = torch.zeros(20, 2, 2, dtype=torch.uint8)
    with pytest.raises(DnnkitError, match=r"^20 samples in batches of 200 are 1 batch for 2 ranks: 0 per rank; use batch_size <= 10$"):
        TensorLoader(x, torch.arange(20), 200, shuffle=True, rank=0, world_size=2)
    assert len(TensorLoader(x, torch.arange(20), 10, shuffle=True, rank=1, world_size=2)) == 1
    with pytest.raises(DnnkitError, match=r"^batch_size must be a positive integer, got True$"):
        TensorLoader(x, torch.arange(20), True)


def test_images_and_labels_of_different_lengths_name_both_files(fake_data):
    from dnnkit.data.idx import write_idx

    write_idx(fake_data / "mnist" / "train-labels-idx1-ubyte.gz", torch.zeros(1000, dtype=torch.uint8))
    dm = MNISTDataModule("mnist", val_size=100)
    with pytest.raises(DnnkitError, match=r"^.*train-images-idx3-ubyte.gz holds 1200 images "
                                          r"but .*train-labels-idx1-ubyte.gz 1000 labels: "):
        dm.train_size()  # from the headers, before any image is read
    with pytest.raises(DnnkitError, match=r"holds 1200 images but .*1000 labels"):
        dm.setup()
