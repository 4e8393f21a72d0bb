"""Linear-chain CRF against brute-force enumeration, scheme constraints, and the two heads."""
import itertools
import math

import pytest
import torch

from sparseshare.data.batching import IGNORE
from sparseshare.data.schemes import allowed_transition
from sparseshare.heads import HEADS, CRF, CRFHead, SoftmaxHead, build_head, transition_constraints

torch.set_num_threads(1)

IOB2_LABELS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
BIOES_LABELS = ["O", "B-PER", "I-PER", "E-PER", "S-PER"]


def _random_crf(k, gen, constraints=None):
    crf = CRF(k, *(constraints or ()))
    with torch.no_grad():
        crf.transitions.data = torch.randn(k, k, generator=gen)
        crf.start.data = torch.randn(k, generator=gen)
        crf.end.data = torch.randn(k, generator=gen)
    return crf


def _prefix_mask(lengths, t):
    return torch.arange(t).unsqueeze(0) < torch.tensor(lengths).unsqueeze(1)


def _score(crf, em, path):
    """Manual score of one path with the raw (unpenalised) parameters; em is (T, K)."""
    s = crf.start[path[0]] + em[0, path[0]]
    for t in range(1, len(path)):
        s = s + crf.transitions[path[t - 1], path[t]] + em[t, path[t]]
    return s + crf.end[path[-1]]


def _valid(path, labels, scheme):
    tags = ["<s>"] + [labels[i] for i in path] + ["</s>"]
    return all(allowed_transition(a, b, scheme) for a, b in zip(tags, tags[1:]))


def _cases():
    for k in (3, 4):
        for t in (1, 2, 3, 4):
            lengths = [t, max(1, t - 1), 1][: 3 if t > 1 else 1]
            yield k, t, lengths


@pytest.mark.parametrize("k,t,lengths", list(_cases()))
def test_log_partition_and_viterbi_brute_force(k, t, lengths):
    gen = torch.Generator().manual_seed(10 * k + t)
    crf = _random_crf(k, gen)
    em = torch.randn(len(lengths), t, k, generator=gen) * 2
    mask = _prefix_mask(lengths, t)
    log_z = crf.log_partition(em, mask)
    paths = crf.viterbi(em, mask)
    assert log_z.shape == (len(lengths),)
    for b, n in enumerate(lengths):
        scores = {p: _score(crf, em[b], p).item() for p in itertools.product(range(k), repeat=n)}
        brute = math.log(sum(math.exp(s) for s in scores.values()))
        assert log_z[b].item() == pytest.approx(brute, abs=1e-4)
        best = max(scores, key=scores.get)
        assert len(paths[b]) == n
        assert tuple(paths[b]) == best


def test_path_score_matches_manual_sum():
    gen = torch.Generator().manual_seed(1)
    k, t, lengths = 4, 5, [5, 3, 1]
    crf = _random_crf(k, gen)
    em = torch.randn(3, t, k, generator=gen)
    mask = _prefix_mask(lengths, t)
    tags = torch.randint(0, k, (3, t), generator=gen)
    tags[1, 3:] = IGNORE  # padding content must not matter (it is masked out)
    tags[2, 1:] = 2
    got = crf.path_score(em, tags, mask)
    for b, n in enumerate(lengths):
        manual = _score(crf, em[b], tags[b, :n].tolist())
        assert got[b].item() == pytest.approx(manual.item(), abs=1e-5)


def test_padding_does_not_change_results():
    gen = torch.Generator().manual_seed(2)
    crf = _random_crf(4, gen)
    em = torch.randn(2, 4, 4, generator=gen)
    mask = _prefix_mask([4, 2], 4)
    tags = torch.randint(0, 4, (2, 4), generator=gen)
    em2 = em.clone()
    em2[1, 2:] = 1000.0
    tags2 = tags.clone()
    tags2[1, 2:] = 3
    assert torch.allclose(crf.log_partition(em, mask), crf.log_partition(em2, mask))
    assert torch.allclose(crf.nll(em, tags, mask), crf.nll(em2, tags2, mask))
    assert crf.viterbi(em, mask) == crf.viterbi(em2, mask)
    # each sentence alone gives the same answer as in the batch
    alone = crf.log_partition(em[1:, :2], mask[1:, :2])
    assert alone.item() == pytest.approx(crf.log_partition(em, mask)[1].item(), abs=1e-5)


def test_nll_non_negative_and_gradients_flow():
    gen = torch.Generator().manual_seed(3)
    k, t, lengths = 4, 4, [4, 2, 3]
    crf = _random_crf(k, gen)
    em = (torch.randn(3, t, k, generator=gen) * 3).requires_grad_(True)
    mask = _prefix_mask(lengths, t)
    tags = torch.randint(0, k, (3, t), generator=gen)
    nll = crf.nll(em, tags, mask)
    assert nll.shape == (3,)
    assert (nll >= -1e-5).all()
    nll.sum().backward()
    for p in (crf.transitions, crf.start, crf.end):
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0
    assert em.grad[1, 2:].abs().max() == 0  # padded positions get no gradient
    assert em.grad[0].abs().sum() > 0


def test_log_partition_gradient_is_marginals():
    gen = torch.Generator().manual_seed(4)
    crf = _random_crf(3, gen)
    em = torch.randn(2, 4, 3, generator=gen).requires_grad_(True)
    mask = _prefix_mask([4, 2], 4)
    crf.log_partition(em, mask).sum().backward()
    sums = em.grad.sum(-1)
    assert torch.allclose(sums, mask.float(), atol=1e-5)
    assert (em.grad >= -1e-6).all()


@pytest.mark.parametrize("labels,scheme", [(IOB2_LABELS, "iob2"), (BIOES_LABELS, "bioes")])
def test_transition_constraints_match_allowed_transition(labels, scheme):
    pairs, start, end = transition_constraints(labels, scheme)
    assert pairs.dtype == torch.bool and pairs.shape == (len(labels), len(labels))
    for i, a in enumerate(labels):
        assert start[i].item() == allowed_transition("<s>", a, scheme)
        assert end[i].item() == allowed_transition(a, "</s>", scheme)
        for j, b in enumerate(labels):
            assert pairs[i, j].item() == allowed_transition(a, b, scheme)
    assert not pairs.all()  # something is forbidden in both schemes


def test_transition_constraints_none_allows_everything():
    pairs, start, end = transition_constraints(["A", "B", "I-X"], "none")
    assert pairs.all() and start.all() and end.all()


@pytest.mark.parametrize("labels,scheme", [(IOB2_LABELS, "iob2"), (BIOES_LABELS, "bioes")])
def test_constrained_viterbi_always_valid(labels, scheme):
    gen = torch.Generator().manual_seed(5)
    k = len(labels)
    crf = _random_crf(k, gen, transition_constraints(labels, scheme))
    bad = torch.tensor([lab[0] in "IE" for lab in labels], dtype=torch.float)
    for _ in range(20):
        lengths = torch.randint(1, 7, (4,), generator=gen).tolist()
        t = max(lengths)
        em = torch.randn(4, t, k, generator=gen) * 5 + 30.0 * bad  # I-/E- tags strongly favoured
        mask = _prefix_mask(lengths, t)
        for path, n in zip(crf.viterbi(em, mask), lengths):
            assert len(path) == n
            assert _valid(path, labels, scheme), [labels[i] for i in path]


@pytest.mark.parametrize("labels,scheme", [(IOB2_LABELS, "iob2"), (BIOES_LABELS, "bioes")])
def test_constrained_partition_and_viterbi_over_valid_paths(labels, scheme):
    gen = torch.Generator().manual_seed(6)
    k = len(labels)
    crf = _random_crf(k, gen, transition_constraints(labels, scheme))
    lengths = [4, 3, 1]
    em = torch.randn(3, 4, k, generator=gen) * 2
    mask = _prefix_mask(lengths, 4)
    log_z = crf.log_partition(em, mask)
    paths = crf.viterbi(em, mask)
    for b, n in enumerate(lengths):
        scores = {p: _score(crf, em[b], p).item()
                  for p in itertools.product(range(k), repeat=n) if _valid(p, labels, scheme)}
        assert scores
        brute = math.log(sum(math.exp(s) for s in scores.values()))
        assert log_z[b].item() == pytest.approx(brute, abs=1e-3)
        assert tuple(paths[b]) == max(scores, key=scores.get)


def test_constrained_nll_of_invalid_gold_path_is_huge():
    crf = CRF(len(IOB2_LABELS), *transition_constraints(IOB2_LABELS, "iob2"))
    em = torch.zeros(1, 2, len(IOB2_LABELS))
    mask = torch.ones(1, 2, dtype=torch.bool)
    valid = crf.nll(em, torch.tensor([[1, 2]]), mask)  # B-PER I-PER
    invalid = crf.nll(em, torch.tensor([[0, 2]]), mask)  # O I-PER
    assert valid.item() < 10
    assert invalid.item() > 1000


# ---------------------------------------------------------------------------------------------
# Heads


@pytest.mark.parametrize("kind", ["crf", "softmax"])
def test_head_loss_and_decode_shapes(kind):
    torch.manual_seed(0)
    head = build_head(kind, 6, BIOES_LABELS, "bioes")
    assert isinstance(head, HEADS[kind])
    lengths = [5, 2, 3]
    mask = _prefix_mask(lengths, 5)
    features = torch.randn(3, 5, 6, requires_grad=True)
    labels = torch.randint(0, len(BIOES_LABELS), (3, 5)).masked_fill(~mask, IGNORE)
    loss = head.loss(features, labels, mask)
    assert loss.shape == (3,)
    assert torch.isfinite(loss).all() and (loss >= 0).all()
    loss.sum().backward()
    assert features.grad[1, 2:].abs().max() == 0
    decoded = head.decode(features, mask)
    assert [len(p) for p in decoded] == lengths
    assert all(0 <= i < len(BIOES_LABELS) for p in decoded for i in p)


def test_build_head_unknown():
    with pytest.raises(ValueError, match="unknown head"):
        build_head("mlp", 4, ["O"], "none")


def test_softmax_loss_is_summed_cross_entropy():
    torch.manual_seed(1)
    head = SoftmaxHead(4, ["A", "B", "C"])
    features = torch.randn(2, 3, 4)
    mask = _prefix_mask([3, 2], 3)
    labels = torch.tensor([[0, 1, 2], [2, IGNORE, IGNORE]])
    labels_mask = labels != IGNORE
    loss = head.loss(features, labels, mask)
    logp = torch.log_softmax(head.proj(features), -1)
    manual = [-(logp[b, t, labels[b, t]]) for b in range(2) for t in range(3) if labels_mask[b, t]]
    assert loss[0].item() == pytest.approx(sum(m.item() for m in manual[:3]), abs=1e-5)
    assert loss[1].item() == pytest.approx(manual[3].item(), abs=1e-5)
    decoded = head.decode(features, mask)
    assert decoded[0] == head.proj(features)[0].argmax(-1).tolist()


def test_crf_head_decodes_valid_bioes_and_matches_crf():
    torch.manual_seed(2)
    head = CRFHead(3, BIOES_LABELS, "bioes")
    features = torch.randn(4, 6, 3) * 10
    mask = _prefix_mask([6, 5, 1, 3], 6)
    decoded = head.decode(features, mask)
    assert decoded == head.crf.viterbi(head.proj(features), mask)
    for path in decoded:
        assert _valid(path, BIOES_LABELS, "bioes")
    labels = torch.tensor([[4, 1, 2, 3, 0, 0]] * 4).masked_fill(~mask, IGNORE)
    loss = head.loss(features, labels, mask)
    ref = head.crf.nll(head.proj(features), labels.masked_fill(~mask, 0), mask)
    assert torch.allclose(loss, ref)


@pytest.mark.parametrize("constrained", [False, True])
def test_marginals_and_cross_entropy_brute_force(constrained):
    """The teacher's marginals (forward-backward) and the exact sequence-level cross-entropy of a student CRF under
    a teacher CRF, against enumerating every path; padding changes nothing."""
    gen = torch.Generator().manual_seed(7 + constrained)
    constraints = transition_constraints(BIOES_LABELS, "bioes") if constrained else None
    k, lengths, t = 5, [4, 3, 1], 4
    teacher, student = _random_crf(k, gen, constraints), _random_crf(k, gen, constraints)
    em_t, em_s = torch.randn(3, t, k, generator=gen), torch.randn(3, t, k, generator=gen)
    mask = _prefix_mask(lengths, t)
    unary, pairwise = teacher.marginals(em_t, mask)
    ce = student.cross_entropy(em_s, mask, unary, pairwise)

    def distribution(crf, em, n):
        paths = [p for p in itertools.product(range(k), repeat=n) if not constrained or _valid(p, BIOES_LABELS, "bioes")]
        scores = torch.tensor([_score(crf, em, p).item() for p in paths], dtype=torch.float64)
        return paths, scores.log_softmax(0)

    for b, n in enumerate(lengths):
        paths, log_q = distribution(teacher, em_t[b], n)
        _, log_p = distribution(student, em_s[b], n)
        q = log_q.exp()
        brute_unary = torch.zeros(t, k, dtype=torch.float64)
        brute_pairwise = torch.zeros(k, k, dtype=torch.float64)
        for weight, path in zip(q, paths):
            for i, tag in enumerate(path):
                brute_unary[i, tag] += weight
            for a, c in zip(path, path[1:]):
                brute_pairwise[a, c] += weight
        torch.testing.assert_close(unary[b].double(), brute_unary, atol=1e-5, rtol=0)
        torch.testing.assert_close(pairwise[b].double(), brute_pairwise, atol=1e-5, rtol=0)
        assert ce[b].item() == pytest.approx(-(q * log_p).sum().item(), abs=1e-3)
    # a distribution's cross-entropy with itself is its entropy, the smallest over students
    own = teacher.cross_entropy(em_t, mask, unary, pairwise)
    assert (own <= ce + 1e-4).all()


def test_softmax_soft_loss_is_cross_entropy_to_the_teachers_distributions():
    gen = torch.Generator().manual_seed(3)
    teacher, student = SoftmaxHead(4, ["a", "b", "c"]), SoftmaxHead(4, ["a", "b", "c"])
    features, mask = torch.randn(2, 3, 4, generator=gen), _prefix_mask([3, 2], 3)
    targets = teacher.soft_targets(features, mask)
    assert torch.allclose(targets["unary"].sum(-1), mask.float())
    loss = student.soft_loss(features, targets, mask)
    log_p = student.proj(features).log_softmax(-1)
    by_hand = [-(targets["unary"][b, :n] * log_p[b, :n]).sum() for b, n in enumerate([3, 2])]
    torch.testing.assert_close(loss, torch.stack(by_hand))
