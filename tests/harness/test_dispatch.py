"""The dispatch counter counts outermost operator calls once each, nested calls not at all."""

import torch
import torch.nn.functional as F

from bench.measure.launches import count_dispatches

A, B = torch.randn(8, 8), torch.randn(8, 8)


def test_one_elementwise_op_counts_one():
    assert count_dispatches(lambda: A + B, "cpu") == 1


def test_chained_elementwise_ops_count_each():
    assert count_dispatches(lambda: ((A + B) * B).exp(), "cpu") == 3


def test_composite_ops_are_not_double_counted():
    # F.linear calls t and matmul -> mm, layer_norm calls native_layer_norm: only the outer call counts
    assert count_dispatches(lambda: F.linear(A, B), "cpu") == 1
    assert count_dispatches(lambda: F.layer_norm(A, (8,)), "cpu") == 1


def test_backward_ops_count_too():
    a = A.clone().requires_grad_()
    forward_only = count_dispatches(lambda: (a * B).sum(), "cpu")
    with_backward = count_dispatches(lambda: (a * B).sum().backward(), "cpu")
    assert forward_only == 2 and with_backward > forward_only


def test_compiled_code_counts_its_generated_kernels():
    # ~5 s on 2 cores: one extern bmm and one fused kernel for gelu, exp and the scaling
    import torch._inductor.config as inductor_config

    def f(a, w):
        return F.gelu(torch.bmm(a, w)).exp() * 2

    a, w = torch.randn(2, 4, 8), torch.randn(2, 8, 8)
    compiled = torch.compile(f, fullgraph=True, dynamic=False)
    with inductor_config.patch({"cpp.enable_kernel_profile": True}):
        compiled(a, w)
    assert count_dispatches(lambda: compiled(a, w), "cpu") == 2
