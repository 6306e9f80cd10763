import numpy as np

from masklam.eval.probe import normalised_mse


def synthetic(n: int, latent_dim: int, seed: int):
    rng = np.random.default_rng(seed)
    actions = rng.uniform(-1, 1, (n, 6))
    mixing = np.random.default_rng(0).normal(size=(6, latent_dim))
    return actions, actions @ mixing + 0.01 * rng.normal(size=(n, latent_dim))


def test_nmse_is_near_zero_when_the_latent_determines_the_action():
    train_a, train_z = synthetic(2000, 32, 1)
    test_a, test_z = synthetic(500, 32, 2)
    assert normalised_mse(train_z, train_a, test_z, test_a) < 0.01


def test_nmse_is_near_one_for_a_random_latent():
    rng = np.random.default_rng(3)
    train_a, test_a = rng.uniform(-1, 1, (2000, 6)), rng.uniform(-1, 1, (500, 6))
    nmse = normalised_mse(rng.normal(size=(2000, 32)), train_a, rng.normal(size=(500, 32)), test_a)
    assert 0.95 < nmse < 1.1


def test_variance_normalisation_uses_the_given_var():
    train_a, train_z = synthetic(1000, 8, 4)
    test_a, test_z = synthetic(300, 8, 5)
    test_noisy = test_a + np.random.default_rng(6).normal(0, 0.1, test_a.shape)
    own = normalised_mse(train_z, train_a, test_z, test_noisy)
    doubled = normalised_mse(train_z, train_a, test_z, test_noisy, variance=2 * float(np.mean(train_a.var(axis=0))))
    np.testing.assert_allclose(doubled, own / 2)
