"""The BiLSTM layer: on CPU two padded one-direction passes, which must equal a packed bidirectional nn.LSTM."""
import pytest
import torch
from torch.func import functional_call
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from sparseshare.encoders.bilstm import BiLSTMLayer


def _packed_reference(layer: BiLSTMLayer, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
    out, _ = layer.lstm(packed)
    return pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])[0]


@pytest.mark.parametrize("lengths", [[7, 3, 1], [2, 5, 5, 1]])
def test_the_packed_path_for_accelerators_equals_the_reference(lengths):
    """Off CPU the layer packs; that path must give the same outputs as the padded CPU path."""
    torch.manual_seed(0)
    layer = BiLSTMLayer(6, 5, dropout=0.0)
    lengths = torch.tensor(lengths)
    x = torch.randn(len(lengths), int(lengths.max()), 6)
    mask = torch.arange(x.shape[1]).unsqueeze(0) < lengths.unsqueeze(1)
    torch.testing.assert_close(layer._packed(x, mask), _packed_reference(layer, x, lengths), rtol=0, atol=0)
    torch.testing.assert_close(layer._packed(x, mask), layer(x, mask), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("lengths", [[7, 7, 7], [1, 7, 3, 7, 2], [1], [4, 1]])
def test_bilstm_layer_equals_the_packed_bidirectional_lstm_with_its_gradients(lengths):
    torch.manual_seed(0)
    layer = BiLSTMLayer(6, 5, dropout=0.0)
    lengths = torch.tensor(lengths)
    x = torch.randn(len(lengths), int(lengths.max()), 6, requires_grad=True)
    mask = torch.arange(x.shape[1]).unsqueeze(0) < lengths.unsqueeze(1)
    ours, reference = layer(x, mask), _packed_reference(layer, x, lengths)
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-6)
    assert torch.equal(ours[~mask], torch.zeros_like(ours[~mask]))  # zero on padding, as pad_packed_sequence
    weights = torch.randn_like(ours)  # a loss that weighs every position and unit differently
    inputs = [x, *layer.parameters()]
    grads = torch.autograd.grad((ours * weights).sum(), inputs)
    expected = torch.autograd.grad((reference * weights).sum(), inputs)
    for got, want in zip(grads, expected):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_bilstm_layer_has_only_nn_lstms_parameters():
    layer = BiLSTMLayer(6, 5, dropout=0.0)
    assert sorted(layer.state_dict()) == sorted(f"lstm.{n}" for n, _ in layer.lstm.named_parameters())
    assert sum(p.numel() for p in layer.parameters()) == sum(p.numel() for p in layer.lstm.parameters())


def test_bilstm_layer_runs_on_weights_substituted_by_functional_call():
    """Sparse sharing passes masked weights through functional_call; the layer must compute with them."""
    torch.manual_seed(0)
    layer = BiLSTMLayer(6, 5, dropout=0.0)
    x, mask = torch.randn(2, 4, 6), torch.tensor([[True] * 4, [True, True, False, False]])
    zeroed = {"lstm.weight_hh_l0_reverse": torch.zeros_like(layer.lstm.weight_hh_l0_reverse)}
    got = functional_call(layer, zeroed, (x, mask))
    with torch.no_grad():
        layer.lstm.weight_hh_l0_reverse.zero_()
    torch.testing.assert_close(got, layer(x, mask), rtol=0, atol=0)


def test_bilstm_layer_under_cpu_autocast_takes_the_packed_path():
    """oneDNN's padded LSTM has no bf16 kernel on every CPU; under autocast the layer packs, as before."""
    torch.manual_seed(0)
    layer = BiLSTMLayer(6, 5, dropout=0.0)
    x = torch.randn(3, 4, 6)
    mask = torch.tensor([[True] * 4, [True, True, True, False], [True, False, False, False]])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = layer(x, mask)
        expected = layer._packed(x, mask)
    assert torch.equal(got, expected)
