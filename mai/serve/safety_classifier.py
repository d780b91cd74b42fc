"""A content classifier that MAI trains on the served model's own hidden states.

Phrase rules miss paraphrase ("people like them should not be allowed to vote here") and a registry
package's abuse detector knows only insults; the served model already reads the text, and its hidden
states separate the categories well enough that a linear read-out per category does the rest. A text's
feature is the mean over its tokens of the hidden states after the blocks at 20/40/60/80% of the depth and
after the final norm (the input of the output head), concatenated: middle layers carry more of what a text
is about than the last one, which is shaped for predicting the next token (on the training data's
natural-style part, held out from a fit on its templated part, recall at a fixed benign budget rose from
0.54 with the final layer alone to 0.69). One logistic regression per category (hate, sexual, violence,
self-harm; one-vs-rest, so a text may be in two) is trained on standardized features with class-balanced
weights.

Probabilities become Azure severities through thresholds chosen on the training data alone by
cross-validation that leaves one source (a template family, the hand-written texts, a real corpus) out at
a time: for each category, the out-of-fold probability above which only ``BENIGN_BUDGET``'s share of the
benign training texts would fall is the threshold of that level (low / medium / high).
The file stores the model's identity (sizes and an embedding checksum) so that a classifier is never read
out of a model it was not trained on.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mai.errors import MaiError
from mai.fileio import atomic_path
from mai.serve.embeddings import right_padded, token_mean

CATEGORIES = ("hate", "sexual", "violence", "self_harm")
MAX_TOKENS = 256  # longer texts are read from their first 256 tokens
# share of the benign training texts (out of fold) a category may flag at each level; four categories
# together stay near 5% benign false positives at medium, the default blocking level
BENIGN_BUDGET = {2: 0.03, 4: 0.0125, 6: 0.004}
FOLDS = 5
SHIPPED = Path(__file__).parent / "data" / "safety" / "smollm2_classifier.pt"


def model_identity(model: torch.nn.Module) -> dict[str, Any]:
    """Sizes and a checksum of the first embedding rows: tolerant of bf16/int8 casts, not of another model."""
    cfg = model.cfg
    rows = model.tok_embeddings.weight[:256].detach().float()
    return {"vocab_size": cfg.vocab_size, "d_model": cfg.d_model, "n_layers": cfg.n_layers,
            "embedding_abs_sum": float(rows.abs().sum())}


def same_model(a: dict[str, Any], b: dict[str, Any]) -> bool:
    sizes = all(a[k] == b[k] for k in ("vocab_size", "d_model", "n_layers"))
    a_sum, b_sum = a["embedding_abs_sum"], b["embedding_abs_sum"]
    return sizes and abs(a_sum - b_sum) <= 1e-2 * abs(b_sum)


def feature_layers(n_layers: int) -> list[int]:
    """The blocks whose outputs are pooled: those at 20, 40, 60 and 80% of the depth."""
    return sorted({max(0, round(n_layers * f) - 1) for f in (0.2, 0.4, 0.6, 0.8)})


@torch.inference_mode()
def embed(model: torch.nn.Module, encode, texts: list[str], layers: list[int], batch: int = 16
          ) -> torch.Tensor:
    """[len(texts), (len(layers) + 1) * d_model] float32 features: the token-mean of each listed block's
    output and of the final-norm states. Rows are right-padded: the model is causal, so padding after a text
    never changes its positions, and the mean skips it (mai.serve.embeddings' padding and mean)."""
    ids = [encode(t)[:MAX_TOKENS] or [0] for t in texts]
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))  # similar lengths share a batch
    out = torch.empty(len(ids), (len(layers) + 1) * model.cfg.d_model)
    device = model.tok_embeddings.weight.device
    seen: list[torch.Tensor] = []
    me = threading.get_ident()  # a served model's engine runs it on another thread meanwhile: not ours

    def keep(_module, _inputs, output: torch.Tensor) -> None:
        if threading.get_ident() == me:
            seen.append(output)

    hooks = [model.layers[str(i)].register_forward_hook(keep) for i in layers]
    try:
        for start in range(0, len(order), batch):
            rows = order[start:start + batch]
            tokens, lengths = right_padded([ids[i] for i in rows], device)
            seen.clear()
            final = model.norm(model.hidden(tokens))
            out[rows] = torch.cat([token_mean(h.float(), lengths).cpu() for h in (*seen, final)], 1)
    finally:
        for hook in hooks:
            hook.remove()
    return out


def fit_logistic(x: torch.Tensor, y: torch.Tensor, l2: float = 1e-2, steps: int = 200
                 ) -> tuple[torch.Tensor, ...]:
    """One-vs-rest logistic regression, ``y`` [N, C] in {0, 1}; positives and negatives weigh the same in
    each column. Returns (weight [C, d], bias [C], mean [d], std [d]) for standardized inputs."""
    mean, std = x.mean(0), x.std(0).clamp_min(1e-6)
    z = (x - mean) / std
    pos = y.sum(0).clamp_min(1)
    neg = (1 - y).sum(0).clamp_min(1)
    sample_w = y * (len(y) / (2 * pos)) + (1 - y) * (len(y) / (2 * neg))
    w = torch.zeros(y.shape[1], x.shape[1], requires_grad=True)
    b = torch.zeros(y.shape[1], requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=steps, line_search_fn="strong_wolfe")

    def loss_fn() -> torch.Tensor:
        opt.zero_grad()
        logits = z @ w.T + b
        loss = (torch.nn.functional.binary_cross_entropy_with_logits(logits, y, reduction="none")
                * sample_w).mean() + l2 * (w ** 2).sum()
        loss.backward()
        return loss

    opt.step(loss_fn)
    return w.detach(), b.detach(), mean, std


def probabilities(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, mean: torch.Tensor,
                  std: torch.Tensor) -> torch.Tensor:
    return torch.sigmoid(((x - mean) / std) @ weight.T + bias)


def thresholds_from(p: torch.Tensor, benign: torch.Tensor) -> dict[str, dict[int, float]]:
    """Per category and severity, the out-of-fold probability above which at most the level's budget of
    benign texts lie (never below 0.5: a coin flip is not a finding)."""
    out = {}
    for c, name in enumerate(CATEGORIES):
        scores = p[benign, c].sort(descending=True).values
        out[name] = {}
        for level, share in BENIGN_BUDGET.items():
            k = int(share * len(scores))  # this many benign texts may lie at or above the threshold
            t = float(scores[k]) + 1e-6 if k < len(scores) else 0.5
            out[name][level] = max(t, 0.5)
    return out


@dataclass
class HiddenStateClassifier:
    """The trained read-out; ``severities`` needs the model and its tokenizer's ``encode``."""

    weight: torch.Tensor
    bias: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor
    thresholds: dict[str, dict[int, float]]
    layers: list[int]  # the blocks pooled (feature_layers of the model it was trained on)
    identity: dict[str, Any]
    info: dict[str, Any]  # what it was trained on and its cross-validated scores

    def probabilities(self, features: torch.Tensor) -> torch.Tensor:
        return probabilities(features, self.weight, self.bias, self.mean, self.std)

    def severities_of(self, features: torch.Tensor) -> list[dict[str, int]]:
        """Severity 0/2/4/6 per category for each row of features."""
        return self.severities_of_probabilities(self.probabilities(features))

    def severities_of_probabilities(self, p: torch.Tensor) -> list[dict[str, int]]:
        out = []
        for row in p:
            sev = {}
            for c, name in enumerate(CATEGORIES):
                hit = [lvl for lvl, t in self.thresholds[name].items() if float(row[c]) >= t]
                sev[name] = max(hit, default=0)
            out.append(sev)
        return out

    def save(self, path: str | Path) -> None:
        state = {"format": "mai-safety-classifier-1", "weight": self.weight, "bias": self.bias,
                 "mean": self.mean, "std": self.std, "thresholds": self.thresholds, "layers": self.layers,
                 "identity": self.identity, "info": self.info}
        with atomic_path(path) as tmp:
            torch.save(state, tmp)

    @classmethod
    def load(cls, path: str | Path) -> HiddenStateClassifier:
        path = Path(path)
        if not path.is_file():
            raise MaiError(f"no safety classifier at {path} (train one with `mai safety train`)")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise MaiError(f"{path} is not a safety classifier file: {exc}") from None
        if not isinstance(state, dict) or state.get("format") != "mai-safety-classifier-1":
            raise MaiError(f"{path} is not a safety classifier file (no mai-safety-classifier-1 format tag)")
        thresholds = {c: {int(k): float(v) for k, v in t.items()} for c, t in state["thresholds"].items()}
        return cls(state["weight"], state["bias"], state["mean"], state["std"], thresholds,
                   [int(i) for i in state["layers"]], state["identity"], state["info"])


def source_group(note: str) -> str:
    """The source part of an example's note (before any ';' or quote): "template: …", "hand-written, …",
    "real: Wikipedia intro" — the unit that cross-validation keeps on one side of a split."""
    return re.split(r"[;']", note, maxsplit=1)[0].strip()


def fold_assignment(groups: list[str] | None, n: int, folds: int, seed: int) -> torch.Tensor:
    """One fold per source group when there are groups (leave-one-source-out), else random folds."""
    if groups is None or len(set(groups)) < 2:
        return torch.randperm(n, generator=torch.Generator().manual_seed(seed)) % folds
    index = {g: i for i, g in enumerate(sorted(set(groups)))}
    return torch.tensor([index[g] for g in groups])


def train(features: torch.Tensor, labels: list[str], layers: list[int], groups: list[str] | None = None,
          folds: int = FOLDS, seed: int = 0) -> tuple[HiddenStateClassifier, torch.Tensor]:
    """Fit on all rows of ``features`` (from :func:`embed` with ``layers``); thresholds from out-of-fold
    probabilities. ``labels`` holds a category or "benign" per row. With ``groups`` (each row's
    :func:`source_group`) every source is predicted by a fit that never saw it: a random split would put
    texts of one template on both sides and set thresholds on predictions far surer than new phrasing
    gets. Without, ``folds`` random folds. Returns the classifier and the out-of-fold probabilities."""
    y = torch.tensor([[float(lab == c) for c in CATEGORIES] for lab in labels])
    benign = torch.tensor([lab == "benign" for lab in labels])
    missing = [c for c in CATEGORIES if not any(lab == c for lab in labels)]
    if missing or not bool(benign.any()):
        raise MaiError(f"the training data needs examples of every category and of benign text; "
                       f"missing: {missing or ['benign']}")
    fold_of = fold_assignment(groups, len(labels), folds, seed)
    oof = torch.empty(len(labels), len(CATEGORIES))
    for f in range(int(fold_of.max()) + 1):
        held = fold_of == f
        params = fit_logistic(features[~held], y[~held])
        oof[held] = probabilities(features[held], *params)
    weight, bias, mean, std = fit_logistic(features, y)
    return HiddenStateClassifier(weight, bias, mean, std, thresholds_from(oof, benign), layers, {}, {}), oof


class BoundClassifier:
    """A classifier read out of one loaded model: what the server and the evaluation call per text."""

    def __init__(self, classifier: HiddenStateClassifier, model: torch.nn.Module, encode):
        self.classifier, self.model, self.encode = classifier, model, encode

    def score(self, text: str) -> dict[str, int]:
        return self.score_many([text])[0]

    def score_many(self, texts: list[str]) -> list[dict[str, int]]:
        return self.classifier.severities_of(embed(self.model, self.encode, texts, self.classifier.layers))


def bind(setting: str | None, model: torch.nn.Module, encode, model_name: str) -> BoundClassifier | None:
    """The classifier a catalog entry asks for: ``None``/"auto" uses the shipped SmolLM2 read-out when the
    model is that model (else none), "off" none, anything else a file that must match the model."""
    if setting == "off":
        return None
    path = SHIPPED if setting in (None, "auto") else Path(setting)
    if setting in (None, "auto") and not path.is_file():
        return None
    clf = HiddenStateClassifier.load(path)
    if not same_model(clf.identity, model_identity(model)):
        if setting in (None, "auto"):
            return None
        raise MaiError(f"model {model_name}: the safety classifier {path} was trained on another model "
                       f"({clf.identity}); train one for it with `mai safety train`")
    return BoundClassifier(clf, model, encode)
