import dataclasses

import pytest

from tsa_core import TSAConfig


@pytest.mark.parametrize("kwargs, field", [
    (dict(tau=-0.1), "tau"), (dict(tau=1.0), "tau"), (dict(tau="x"), "tau"),
    (dict(window=0), "window"), (dict(window=2.5), "window"),
    (dict(pool_kernel=4), "pool_kernel"), (dict(pool_kernel=0), "pool_kernel"), (dict(pool_kernel=-3), "pool_kernel"),
    (dict(min_keep=0), "min_keep"),
    (dict(keep_ratio=0.0), "keep_ratio"), (dict(keep_ratio=1.5), "keep_ratio"),
    (dict(sparse_layers=(1, 1)), "sparse_layers"), (dict(sparse_layers=(-1,)), "sparse_layers"),
], ids=["tau-neg", "tau-one", "tau-str", "window-0", "window-float", "pool-even", "pool-0", "pool-neg",
        "min_keep-0", "ratio-0", "ratio-big", "layers-dup", "layers-neg"])
def test_bad_config_names_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        TSAConfig(**kwargs)


def test_defaults_follow_the_paper():
    cfg = TSAConfig()
    assert (cfg.tau, cfg.window, cfg.pool_kernel, cfg.min_keep) == (0.005, 128, 7, 1024)


def test_config_is_frozen():
    cfg = TSAConfig(tau=0.01)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.tau = 0.1
    assert cfg.tau == 0.01


def test_dense_rules():
    cfg = TSAConfig(window=8, min_keep=16)
    assert cfg.runs_dense(24) and not cfg.runs_dense(25)
    assert TSAConfig(tau=0.0).runs_dense(10**6)
    assert not TSAConfig(tau=0.0, keep_ratio=0.5).runs_dense(10**6)


def test_sparse_layers_sorted():
    assert TSAConfig(sparse_layers=(5, 2, 3)).sparse_layers == (2, 3, 5)
    assert TSAConfig(sparse_layers=(5, 2)).is_sparse_layer(5)
    assert not TSAConfig(sparse_layers=(5, 2)).is_sparse_layer(4)
