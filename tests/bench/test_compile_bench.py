"""Smoke test of ``python -m bench.compile`` on the small fake data set, with dynamo's ``eager``
backend (Inductor's compiles take tens of seconds on CI's CPUs; tests/test_compile.py trains with
it once). Timings are not checked: only that the table has its rows and its figures are finite."""

from bench import compile as bench_compile
from tests.bench.sections import number, positive, section, table


def check(results, networks):
    text = section(results, "compile")
    rows = table(text, "network")
    assert list(rows) == networks
    for row in rows.values():
        batch, per_epoch, eager, eager_cpu, *rest = row
        assert positive(batch) and positive(per_epoch) and positive(eager) and positive(eager_cpu)
        for i in range(0, len(rest), 4):  # per compiled contender: compile s, ms/step, ratio, break-even
            compile_s, ms, ratio, even = rest[i:i + 4]
            assert number(compile_s) > -1 and positive(ms) and positive(ratio) and (even == "never" or positive(even))
    return text


def test_compile_bench_times_the_contenders_into_its_section(fake_data, results, capsys):
    argv = ["--networks", "mnist_bn", "--rounds", "1", "--blocks", "1", "--steps", "2", "--backend", "eager",
            "--contenders", "compiled", "--threads", "1", "--results", str(results), "data.val_size=200", "model.hidden=[16]"]
    out = bench_compile.main(argv)
    assert list(out["mnist_bn:mnist_bn"][0]) == ["eager", "compiled"]  # compiled+opt: dynamo traces SGD's step for seconds
    text = check(results, ["mnist_bn:mnist_bn"])
    assert "Command: `python -m bench.compile --networks mnist_bn" in text and "| network |" in capsys.readouterr().out

