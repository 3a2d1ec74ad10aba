"""Tests for metrics.py: the geometry metrics against exact values, and the log keys.

Effective rank and average cosine are checked on data whose answer is known in closed form (rank-one data,
exactly isotropic data, a chosen covariance spectrum); the spectrum against an eigendecomposition.
"""

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from support import metrics

REPO_DIR = Path(__file__).resolve().parent.parent


# ---------------------------------------------------------------------------- metrics
def test_effective_rank_of_rank_one_data_is_one():
    direction = torch.randn(8)
    X = torch.randn(50, 1) * direction + 3.0  # all variance along one direction, plus an offset
    # the other eigenvalues are float64 round-off (~1e-30 relative): their entropy share is < 1e-9
    assert metrics.effective_rank(X) == pytest.approx(1.0, abs=1e-9)
    assert metrics.effective_rank(torch.ones(5, 3)) == 0.0  # no variance at all: defined as 0, not NaN


def test_effective_rank_of_exactly_isotropic_data_is_d():
    d = 6
    X = torch.cat([torch.eye(d), -torch.eye(d)])  # rows +-e_i: mean 0, covariance exactly (2 / (2d - 1)) I
    assert metrics.effective_rank(X) == pytest.approx(d, abs=1e-9)


def test_effective_rank_matches_closed_form_for_a_chosen_spectrum_and_ignores_shifts():
    eigenvalues = torch.tensor([8.0, 4.0, 2.0, 1.0, 0.5], dtype=torch.float64)
    d = len(eigenvalues)
    basis = torch.cat([torch.eye(d), -torch.eye(d)]).double() * eigenvalues.sqrt()  # covariance diag(eigenvalues)
    rotation, _ = torch.linalg.qr(torch.randn(d, d, dtype=torch.float64))
    X = basis @ rotation.T  # same eigenvalues in a random basis
    p = eigenvalues / eigenvalues.sum()
    expected = math.exp(-(p * p.log()).sum().item())
    assert metrics.effective_rank(X) == pytest.approx(expected, rel=1e-10)
    # covariance eigenvalues, not Roy & Vetterli's singular values: that definition would give another number
    q = eigenvalues.sqrt() / eigenvalues.sqrt().sum()
    assert abs(metrics.effective_rank(X) - math.exp(-(q * q.log()).sum().item())) > 0.1
    assert metrics.effective_rank(X + torch.randn(d, dtype=torch.float64) * 100) == pytest.approx(expected, rel=1e-8)
    # numpy, float32 in
    assert metrics.effective_rank(X.numpy().astype(np.float32)) == pytest.approx(expected, rel=1e-5)


def test_effective_rank_of_a_white_cloud_is_close_to_d():
    d, n = 8, 20000
    X = torch.randn(n, d, generator=torch.Generator().manual_seed(0))
    # sample-covariance eigenvalues spread by ~ +-2 sqrt(d / n) = +-4%; the entropy is flat at its maximum,
    # so the loss is second order: d * (1 - O(d / n)) ~ d - 0.005; 0.05 leaves a 10x margin
    assert metrics.effective_rank(X) == pytest.approx(d, abs=0.05)


def test_singular_values_are_the_full_spectrum_of_the_centred_data():
    X = torch.randn(20, 5, dtype=torch.float64)
    s = metrics.singular_values(X + 7.0)
    centred = X - X.mean(0)
    assert s.shape == (5,) and s.dtype == torch.float64 and torch.all(s[:-1] >= s[1:])
    assert torch.allclose(s ** 2, torch.linalg.eigvalsh(centred.T @ centred).flip(0), rtol=1e-10)
    with pytest.raises(ValueError, match="2-D"):
        metrics.singular_values(torch.randn(3, 4, 5))


def test_avg_pairwise_cosine_identical_and_orthogonal_rows():
    same_direction = torch.randn(1, 16) * torch.rand(30, 1).add(0.1)  # same direction, different norms
    assert metrics.avg_pairwise_cosine(same_direction, 500) == pytest.approx(1.0, abs=1e-12)
    # two orthogonal rows: distinct pairs give exactly 0; pairing a row with itself would give ~0.5
    assert metrics.avg_pairwise_cosine(torch.eye(2), 500) == pytest.approx(0.0, abs=1e-12)
    assert metrics.avg_pairwise_cosine(torch.eye(7), 500) == pytest.approx(0.0, abs=1e-12)


def test_avg_pairwise_cosine_is_reproducible_with_a_generator_and_rejects_one_row():
    X = torch.randn(40, 8)
    a = metrics.avg_pairwise_cosine(X, 100, torch.Generator().manual_seed(1))
    b = metrics.avg_pairwise_cosine(X, 100, torch.Generator().manual_seed(1))
    assert a == b
    with pytest.raises(ValueError, match="at least 2 rows"):
        metrics.avg_pairwise_cosine(torch.randn(1, 8), 10)


# ---------------------------------------------------------------------------- log keys
def test_aux_loss_key_names_the_train_and_val_lines_keys():
    assert metrics.aux_loss_key("nitp") == "loss_nitp" == metrics.aux_loss_key("nitp", "train")
    assert metrics.aux_loss_key("nitp", "val") == "val_loss_nitp"
    assert metrics.aux_loss_key("nitp", "val").startswith(metrics.VAL_LOSS)
    with pytest.raises(ValueError, match="split='test'"):
        metrics.aux_loss_key("nitp", "test")


def test_import_metrics_does_not_import_matplotlib():
    # train.py imports the metrics on every run: it must not pay for (or need) the plotting stack
    code = ("from support import metrics; import sys; "
            "assert 'matplotlib' not in sys.modules, 'metrics.py imported matplotlib'")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO_DIR, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
