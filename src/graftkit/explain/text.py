"""Token attributions for text runs: why did the model give class ``target`` to this text?

- :func:`token_attributions`: Integrated Gradients (Sundararajan et al., ICML 2017) on the token
  embeddings, from Captum's ``LayerIntegratedGradients`` on the adapter's ``explain_layer`` (the
  encoder's word-embedding table). The baseline is the same sequence with every real token
  replaced by ``[MASK]`` (``[PAD]`` for a tokenizer without one) and the special tokens
  (``[CLS]``, ``[SEP]``) kept, as in Captum's BERT tutorial: only the word embeddings move along
  the path, positions and segments stay. Attributions are signed (positive = evidence *for* the
  target) and explain the target's raw logit, so by completeness they sum to
  ``f(x) - f(baseline)`` up to the integration error (``delta``).
- :func:`merge_words`: word pieces back into the words of the original text (character offsets
  of a fast tokenizer), attributions summed per word.
- :func:`text_faithfulness`: the deletion/insertion test of RISE (Petsiuk et al., BMVC 2018) for
  tokens: replace (``[MASK]``) or drop the most-attributed tokens first and follow the target
  probability; compared with the mean curve of random orders (one random order is too noisy for
  the few tokens of a text).

Explaining leaves the model as it found it (see :func:`graftkit.explain.methods._explaining`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import DataError
from .methods import _explaining

TEXT_IG_STEPS = 32  # Gauss-Legendre points: completeness error ~1e-5 of the logit change
TEXT_METHODS = ("integrated-gradients",)
REPLACE = ("mask", "drop")
RANDOM_ORDERS = 4
MAX_STEPS = 16  # deletion curves of long texts remove tokens in at most this many steps


@dataclass
class TokenAttribution:
    """IG of one text: ``tokens`` (special ones included), their signed ``scores`` ``(T,)``,
    the model inputs used, and the completeness terms."""

    tokens: list[str]
    scores: np.ndarray  # (T,) float64, signed
    inputs: dict[str, torch.Tensor]  # (1, T) each: input_ids, attention_mask, ...
    special: np.ndarray  # (T,) bool: [CLS], [SEP], padding: never attributed, never deleted
    target: int
    logit: float  # f(x): the target's raw logit
    baseline_logit: float  # f(baseline)
    delta: float  # sum(scores) - (logit - baseline_logit), Captum's convergence delta
    offsets: list[tuple[int, int]] = field(default_factory=list)  # char span of each token
    word_ids: list[int | None] = field(default_factory=list)


def _replacement_id(tokenizer: Any) -> int:
    for tok in ("mask_token_id", "pad_token_id", "unk_token_id"):
        i = getattr(tokenizer, tok, None)
        if i is not None:
            return int(i)
    raise DataError(f"tokenizer {type(tokenizer).__name__} has no [MASK], [PAD] or [UNK] token")


def encode_text(model: nn.Module, text: str) -> tuple[dict[str, torch.Tensor], list, list]:
    """One text -> (model inputs ``(1, T)``, character offsets, word ids), truncated at the
    run's ``max_length`` as in training. Offsets and word ids are empty for a slow tokenizer."""
    tok = model.tokenizer
    if not text.strip():
        raise DataError("empty text: every input needs some words")
    fast = bool(getattr(tok, "is_fast", False))
    enc = tok([text], truncation=True, max_length=model.data_config.max_length,
              return_tensors="pt", return_offsets_mapping=fast)
    offsets = [tuple(map(int, o)) for o in enc.pop("offset_mapping")[0]] if fast else []
    word_ids = enc.word_ids(0) if fast else []
    inputs = {k: enc[k] for k in tok.model_input_names if k in enc}
    return inputs, offsets, word_ids


def _forward(model: nn.Module, names: list[str]) -> Any:
    """``fn(input_ids, *others)`` -> logits: the positional form Captum calls."""
    def fn(input_ids: torch.Tensor, *rest: torch.Tensor) -> torch.Tensor:
        return model({"input_ids": input_ids, **dict(zip(names, rest))})

    return fn


def token_attributions(model: nn.Module, text: str, target: int,
                       steps: int = TEXT_IG_STEPS) -> TokenAttribution:
    """Integrated Gradients of class ``target``'s logit for ``text``, per token (see module)."""
    from captum.attr import LayerIntegratedGradients

    inputs, offsets, word_ids = encode_text(model, text)
    ids = inputs["input_ids"]  # (1, T)
    tok = model.tokenizer
    # [UNK] stands for a real word (an emoji, a rare script): attributed like any other token
    special = np.isin(ids[0].numpy(), [i for i in tok.all_special_ids if i != tok.unk_token_id])
    base = ids.clone()
    base[0, torch.from_numpy(~special)] = _replacement_id(tok)
    names = [k for k in inputs if k != "input_ids"]
    rest = tuple(inputs[k] for k in names)
    fn = _forward(model, names)
    with _explaining(model):
        lig = LayerIntegratedGradients(fn, model.explain_layer)
        attr, delta = lig.attribute(ids, baselines=base, target=target,
                                    additional_forward_args=rest, n_steps=steps,
                                    internal_batch_size=steps, return_convergence_delta=True)
        with torch.no_grad():
            logits = fn(torch.cat([ids, base]), *(torch.cat([r, r]) for r in rest)).float()
    scores = attr[0].detach().double().sum(-1).numpy()  # (T, H) -> (T,)
    return TokenAttribution(
        tokens=tok.convert_ids_to_tokens(ids[0].tolist()), scores=scores,
        inputs=inputs, special=special, target=target, logit=float(logits[0, target]),
        baseline_logit=float(logits[1, target]), delta=float(delta.reshape(-1)[0]),
        offsets=offsets, word_ids=word_ids)


def merge_words(a: TokenAttribution, text: str) -> list[dict[str, Any]]:
    """The text's words (as written, from the tokenizer's offsets) with the summed attribution
    of their pieces: ``{word, start, end, attribution, pieces}``. Special tokens are left out.
    A slow tokenizer gives no offsets: pieces are joined at ``##`` and ``start``/``end`` are
    None."""
    words: list[dict[str, Any]] = []
    last: Any = object()
    for i, (tok, score) in enumerate(zip(a.tokens, a.scores)):
        if a.special[i]:
            last = object()
            continue
        if a.offsets:
            wid, (s, e) = a.word_ids[i], a.offsets[i]
            if wid is not None and wid == last:
                w = words[-1]
                w["end"], w["word"] = e, text[w["start"]:e]
            else:
                w = {"word": text[s:e], "start": s, "end": e, "attribution": 0.0, "pieces": []}
                words.append(w)
            last = wid
        elif tok.startswith("##") and words:
            w = words[-1]
            w["word"] += tok[2:]
        else:
            w = {"word": tok, "start": None, "end": None, "attribution": 0.0, "pieces": []}
            words.append(w)
        w["attribution"] += float(score)
        w["pieces"].append(tok)
    return words


def _auc(curve: np.ndarray) -> float:
    """Trapezoidal area under a curve sampled at equal steps on [0, 1]."""
    return float((curve.sum() - (curve[0] + curve[-1]) / 2) / (len(curve) - 1))


def _variants(ids: list[int], positions: np.ndarray, orders: list[np.ndarray], counts: np.ndarray,
              replace: str, mask_id: int) -> list[list[int]]:
    """Per order, per count k: deletion (first k removed), then insertion (only first k kept)."""
    out = []
    for order in orders:
        for insertion in (False, True):
            for k in counts:
                chosen = set(order[:k].tolist())
                gone = set(positions.tolist()) - chosen if insertion else chosen
                if replace == "mask":
                    out.append([mask_id if i in gone else t for i, t in enumerate(ids)])
                else:
                    out.append([t for i, t in enumerate(ids) if i not in gone])
    return out


@torch.inference_mode()
def _target_probs(model: nn.Module, seqs: list[list[int]], inputs: Mapping[str, torch.Tensor],
                  target: int, batch: int = 64) -> np.ndarray:
    pad = model.tokenizer.pad_token_id or 0
    out = []
    for s in range(0, len(seqs), batch):
        chunk = seqs[s:s + batch]
        n = max(map(len, chunk))
        ids = torch.tensor([q + [pad] * (n - len(q)) for q in chunk])
        mask = torch.tensor([[1] * len(q) + [0] * (n - len(q)) for q in chunk])
        x = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in inputs:
            x["token_type_ids"] = torch.zeros_like(ids)
        out.append(model(x).float().softmax(-1)[:, target])
    return torch.cat(out).numpy()


def text_faithfulness(model: nn.Module, a: TokenAttribution, replace: str = "mask",
                      seed: int = 0, n_random: int = RANDOM_ORDERS) -> dict[str, Any]:
    """Deletion/insertion AUCs of the attribution order for ``a.target`` and the mean of
    ``n_random`` random token orders (``seed``); ``replace``: ``mask`` puts ``[MASK]`` where a
    token is deleted, ``drop`` removes it. ``beats_random``: deletion AUC below random. The same
    keys as the image :func:`graftkit.explain.faithfulness`."""
    if replace not in REPLACE:
        raise ValueError(f"replace must be one of {REPLACE}, got {replace!r}")
    positions = np.flatnonzero(~a.special)
    n = positions.size
    rng = np.random.default_rng(seed)
    ranked = positions[np.lexsort((rng.random(n), -a.scores[positions]))]  # most for first
    randoms = [rng.permutation(positions) for _ in range(n_random)]
    steps = max(1, min(n, MAX_STEPS))
    counts = np.ceil(np.arange(steps + 1) * n / steps).astype(int)
    ids = a.inputs["input_ids"][0].tolist()
    seqs = _variants(ids, positions, [ranked, *randoms], counts, replace,
                     _replacement_id(model.tokenizer))
    was_training = model.training
    model.eval()
    try:
        p = _target_probs(model, seqs, a.inputs, a.target).reshape(1 + n_random, 2, steps + 1)
    finally:
        model.train(was_training)
    deletion, insertion = p[0]
    rand_del, rand_ins = p[1:, 0].mean(0), p[1:, 1].mean(0)
    return {"deletion_auc": _auc(deletion), "deletion_auc_random": _auc(rand_del),
            "insertion_auc": _auc(insertion), "insertion_auc_random": _auc(rand_ins),
            "beats_random": _auc(deletion) < _auc(rand_del), "steps": steps,
            "random": f"mean of {n_random} token orders", "replace": replace,
            "deletion_curve": [round(float(v), 4) for v in deletion],
            "insertion_curve": [round(float(v), 4) for v in insertion]}


def completeness(a: TokenAttribution) -> dict[str, float]:
    """The completeness check of IG: attributions sum to f(x) - f(baseline), up to ``delta``."""
    total = float(a.scores.sum())
    return {"sum": total, "logit": a.logit, "baseline_logit": a.baseline_logit,
            "delta": a.delta, "relative_error": abs(a.delta) / max(
                abs(a.logit - a.baseline_logit), 1e-12)}

