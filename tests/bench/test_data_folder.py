"""Smoke test of ``python -m bench.data_folder`` on the small fake MNIST (300 PNGs, one repeat)."""

from bench import data_folder
from tests.bench.sections import number, positive, seconds, section, table


def test_data_folder_bench_compares_starts_and_paths(fake_data, results, tmp_path):
    argv = ["--images", "300", "--repeats", "1", "--workers", "0", "--threads", "1", "--results", str(results)]
    assert data_folder.main(argv) == 0
    text = section(results, "data_folder")
    starts = table(text, "start")
    assert list(starts) == ["first run: scan, headers, decode, write cache", "second run: cache hit (hash, map, CRC)"]
    assert all(seconds(cell) for row in starts.values() for cell in row)
    assert positive(starts["first run: scan, headers, decode, write cache"][0])
    epochs = table(text, "training epoch")
    assert list(epochs) == ["loader alone", "784-300-100-10 MLP, SGD"]
    assert all(seconds(cell) for row in epochs.values() for cell in row[:4]) and all(row[4].endswith("x") for row in epochs.values())
    assert "300 MNIST training images as 1x28x28 PNGs" in text and number(text.split("Second start: **")[1]) > 0
