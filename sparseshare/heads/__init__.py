"""Per-task output layers. A head maps encoder features to a per-sentence loss and to decoded label ids."""
from .crf import CRF, CRFHead, transition_constraints
from .softmax import SoftmaxHead

HEADS = {"softmax": SoftmaxHead, "crf": CRFHead}


def build_head(kind: str, input_dim: int, labels: list[str], scheme: str):
    if kind not in HEADS:
        raise ValueError(f"unknown head {kind!r}; expected one of {sorted(HEADS)}")
    return HEADS[kind](input_dim, labels, scheme)


__all__ = ["CRF", "CRFHead", "SoftmaxHead", "build_head", "transition_constraints", "HEADS"]
