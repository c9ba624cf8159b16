"""The grid: one test per model x task x domain cell (ids MODEL-TASK-DOMAIN, parametrised by the plugin)."""


def test_transfer(cell, transfer_bench):
    record = transfer_bench.run(cell)
    assert set(record["gain"]) == set(record["languages"])
    transfer_bench.check(record)
