import math

import numpy as np
import pytest
import torch
from scipy import integrate

from dcnn.activations import (BASE_ACTIVATIONS, INTEGRATED_ACTIVATIONS, count_activations,
                              get_activation, replace_activations)
from dcnn.models import build_model

F0 = {"irelu": 0.0, "ielu": 0.0, "igelu": -0.25, "isilu": -math.pi**2 / 12}  # F(0): each constant makes F → 0 as x → −∞ (dcnn/activations.py)
POINTS = np.linspace(-20.0, 20.0, 41)


def base_np(name):
    fn = BASE_ACTIVATIONS[INTEGRATED_ACTIVATIONS[name][1]]
    return lambda t: float(fn(torch.tensor(t, dtype=torch.float64)))


@pytest.mark.parametrize("name", list(INTEGRATED_ACTIVATIONS))
def test_antiderivative_matches_quadrature_of_base(name):
    act = get_activation(name)
    f = act(torch.tensor(POINTS, dtype=torch.float64)).numpy()
    assert f[POINTS == 0.0][0] == pytest.approx(F0[name], abs=1e-15)
    base = base_np(name)
    for x, fx in zip(POINTS, f):
        integral, _ = integrate.quad(base, 0.0, x, epsabs=1e-13, epsrel=1e-13, limit=200)
        expected = F0[name] + integral
        assert abs(fx - expected) <= 1e-8 * max(1.0, abs(expected)), (name, x, fx, expected)


@pytest.mark.parametrize("name", list(INTEGRATED_ACTIVATIONS))
def test_first_and_second_derivatives_are_base_and_its_derivative(name):
    x = torch.linspace(-8, 8, 401, dtype=torch.float64, requires_grad=True)
    y = get_activation(name)(x)
    (g,) = torch.autograd.grad(y.sum(), x, create_graph=True)
    (h,) = torch.autograd.grad(g.sum(), x)
    xb = x.detach().clone().requires_grad_(True)
    base = get_activation(INTEGRATED_ACTIVATIONS[name][1])(xb)
    (base_prime,) = torch.autograd.grad(base.sum(), xb)
    torch.testing.assert_close(g, base.detach(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(h, base_prime, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", list(INTEGRATED_ACTIVATIONS))
def test_gradgradcheck(name):
    x = (torch.randn(40, dtype=torch.float64) * 3).requires_grad_(True)
    x.data[x.data.abs() < 1e-3] += 0.1  # stay off ReLU's kink for finite differences
    act = get_activation(name)
    assert torch.autograd.gradcheck(act, (x,))
    assert torch.autograd.gradgradcheck(act, (x,))


def test_finite_difference_of_antiderivative_is_base():
    x = torch.linspace(-6, 6, 96, dtype=torch.float64)  # even count: skips ReLU's kink at 0
    eps = 1e-5
    for name in INTEGRATED_ACTIVATIONS:
        act = get_activation(name)
        fd = (act(x + eps) - act(x - eps)) / (2 * eps)
        base = get_activation(INTEGRATED_ACTIVATIONS[name][1])(x)
        torch.testing.assert_close(fd, base, rtol=1e-7, atol=1e-7)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", list(BASE_ACTIVATIONS) + list(INTEGRATED_ACTIVATIONS))
def test_finite_values_and_two_gradient_orders(name, dtype):
    x = torch.cat([torch.linspace(-1e3, 1e3, 2001, dtype=dtype),
                   torch.tensor([-1e3, -700.0, -88.0, -30.0, 0.0, 30.0, 88.0, 700.0, 1e3], dtype=dtype)])
    x.requires_grad_(True)
    y = get_activation(name)(x)
    (g,) = torch.autograd.grad(y.sum(), x, create_graph=True)
    (h,) = torch.autograd.grad(g.sum(), x)
    for t in (y, g, h):
        assert torch.isfinite(t).all(), name


def test_large_argument_asymptotics():
    x = torch.tensor([1e3], dtype=torch.float64)
    assert float(get_activation("isilu")(x)) == pytest.approx(0.5e6 - math.pi**2 / 6, rel=1e-14)
    assert float(get_activation("igelu")(x)) == pytest.approx(0.5 * (1e6 - 1), rel=1e-14)
    assert float(get_activation("ielu")(-x)) == pytest.approx(1e3 - 1, rel=1e-14)


def test_unknown_activation_names_the_choices():
    with pytest.raises(ValueError, match="isilu"):
        get_activation("swish2")


def test_placement_schnet_everywhere_cgcnn_head_only():
    schnet = build_model("schnet", "small")  # 3 interactions: filter act + block act each, + readout
    assert count_activations(schnet, "ssp") == 7
    replace_activations(schnet, "irelu", "paper")
    assert schnet.replaced_activations == 7
    assert count_activations(schnet, "irelu") == 7 and count_activations(schnet, "ssp") == 0

    cgcnn = build_model("cgcnn", "small")  # head: conv_to_fc act + 2 hidden fc acts
    n_total = count_activations(cgcnn)
    replace_activations(cgcnn, "isilu", "paper")
    assert cgcnn.replaced_activations == 3
    assert count_activations(cgcnn.head, "isilu") == 3
    assert count_activations(cgcnn, "isilu") == 3 and count_activations(cgcnn) == n_total

    cgcnn_all = replace_activations(build_model("cgcnn", "small"), "ielu", "all")  # + 2 per conv
    assert cgcnn_all.replaced_activations == 9
    assert count_activations(cgcnn_all, "ielu") == count_activations(cgcnn_all) == 9
