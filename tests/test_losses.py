"""Losses: local NCC, smoothness, MSE."""
import torch

from models import local_ncc, restoration_mse, smoothness


def test_ncc_of_an_image_with_itself_is_the_minimum():
    torch.manual_seed(0)
    a = torch.rand(1, 1, 24, 24, 24)
    b = torch.rand(1, 1, 24, 24, 24)
    self_loss = local_ncc(a, a)
    assert self_loss < -0.99
    assert local_ncc(a, b) > self_loss + 0.5
    assert local_ncc(a, 0.5 * a + 0.2) < -0.99  # invariant to linear intensity change


def test_ncc_is_finite_on_constant_images_and_small_sizes():
    c = torch.full((1, 1, 5, 6, 7), 0.3)
    loss = local_ncc(c, c)
    assert torch.isfinite(loss)


def test_ncc_gradient_is_finite():
    a = torch.rand(1, 1, 16, 16, 16, requires_grad=True)
    local_ncc(a, torch.rand(1, 1, 16, 16, 16)).backward()
    assert torch.isfinite(a.grad).all() and a.grad.abs().sum() > 0


def test_smoothness_zero_for_constant_field_positive_otherwise():
    assert smoothness(torch.ones(1, 3, 8, 8, 8)) == 0
    assert smoothness(torch.randn(1, 3, 8, 8, 8)) > 0


def test_mse():
    a = torch.zeros(1, 1, 4, 4, 4)
    assert restoration_mse(a, a + 2) == 4
