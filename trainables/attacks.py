"""White-box attacks with one interface, as in torchattacks: `attack(model, x, y) -> x_adv`.

Hand-written because adversarial *training* needs them inside the autograd-heavy hot loop with
our own step schedule and random start; evaluation also runs AutoAttack from `torchattacks`.
Inputs are images in [0, 1]; the model normalizes inside, so epsilon is in pixel units.
The caller chooses the model's mode (evaluation attacks run in eval()).
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

NORMS = ("linf", "l2")


def _loss_grad(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    x = x.detach().requires_grad_(True)
    loss = F.cross_entropy(model(x), y)
    (grad,) = torch.autograd.grad(loss, x)
    return grad


def _l2_normalize(v: torch.Tensor) -> torch.Tensor:
    norms = v.flatten(1).norm(dim=1).clamp_min(1e-12)
    return v / norms.view(-1, *([1] * (v.dim() - 1)))


def _project(delta: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    if norm == "linf":
        return delta.clamp(-eps, eps)
    norms = delta.flatten(1).norm(dim=1).view(-1, *([1] * (delta.dim() - 1)))
    return delta * torch.clamp(eps / norms.clamp_min(1e-12), max=1.0)


def _generator(x: torch.Tensor, seed: int) -> torch.Generator:
    """A seeded generator on x's device, so a random start is drawn where the attack runs (no
    host draw and copy per attack on a GPU). The same seed gives the same start on the same
    device type; a CPU and a GPU draw different starts."""
    return torch.Generator(device=x.device).manual_seed(seed)


def _random_start(x: torch.Tensor, eps: float, norm: str, generator) -> torch.Tensor:
    if norm == "linf":
        u = torch.rand(x.shape, generator=generator, device=x.device)
        return (2 * u - 1) * eps
    g = torch.randn(x.shape, generator=generator, device=x.device)
    r = torch.rand(x.shape[0], generator=generator, device=x.device)
    return _l2_normalize(g) * (eps * r).view(-1, *([1] * (x.dim() - 1)))


@dataclass
class FGSM:
    """Fast gradient sign method; with `random_start` it is the 'fast is better than free' attack
    (Wong et al., 2020) whose step is 1.25 eps from a uniform start."""

    eps: float
    random_start: bool = False
    seed: int = 0

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.eps == 0:
            return x.detach()
        delta = torch.zeros_like(x)
        step = self.eps
        if self.random_start:
            delta = _random_start(x, self.eps, "linf", _generator(x, self.seed))
            step = 1.25 * self.eps
        grad = _loss_grad(model, (x + delta).clamp(0, 1), y)
        delta = (delta + step * grad.sign()).clamp(-self.eps, self.eps)
        return (x + delta).clamp(0, 1).detach()


@dataclass
class PGD:
    """Projected gradient descent (Madry et al., 2018), L-inf or L2, with random start and
    restarts; with restarts it keeps, per example, the first restart that fools the model."""

    eps: float
    steps: int = 10
    step_size: float | None = None  # default 2.5 * eps / steps, as in Madry et al.
    norm: str = "linf"
    random_start: bool = True
    restarts: int = 1
    seed: int = 0

    def __post_init__(self):
        if self.norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {self.norm!r}")
        if self.eps < 0 or self.steps < 1 or self.restarts < 1:
            raise ValueError("PGD needs eps >= 0, steps >= 1 and restarts >= 1")

    def _one_run(self, model, x, y, generator) -> torch.Tensor:
        step = self.step_size if self.step_size is not None else 2.5 * self.eps / self.steps
        delta = _random_start(x, self.eps, self.norm, generator) if self.random_start else 0 * x
        delta = ((x + delta).clamp(0, 1) - x).detach()
        for _ in range(self.steps):
            grad = _loss_grad(model, x + delta, y)
            update = grad.sign() if self.norm == "linf" else _l2_normalize(grad)
            delta = _project(delta + step * update, self.eps, self.norm)
            delta = ((x + delta).clamp(0, 1) - x).detach()
        return (x + delta).detach()

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.eps == 0:
            return x.detach()
        gen = _generator(x, self.seed)
        best = self._one_run(model, x, y, gen)
        for _ in range(self.restarts - 1):
            with torch.no_grad():
                fooled = model(best).argmax(1) != y
            if fooled.all():
                break
            candidate = self._one_run(model, x, y, gen)
            best = torch.where(fooled.view(-1, *([1] * (x.dim() - 1))), best, candidate)
        return best


@dataclass
class AutoAttack:
    """AutoAttack (Croce & Hein, 2020) through torchattacks 3.5.1, with our interface.

    torchattacks rather than pyautoattack: it is installed and ran here with torch 2.14.1, and it
    takes the model as is; pyautoattack's API differs from the original repository's and would
    need reading and wrapping. "standard" = APGD-CE, APGD-T, FAB-T, Square (5,000 queries), each
    run only on the examples still classified correctly. The number of classes is read off
    the model's output; with fewer than 4, "standard" leaves APGD-T out (its targeted DLR loss
    reads the four largest logits). The caller chooses the model's mode (evaluation runs in
    eval()).
    """

    eps: float
    norm: str = "linf"
    version: str = "standard"
    seed: int = 0

    def __post_init__(self):
        if self.norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {self.norm!r}")

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        import torchattacks

        if self.eps == 0:
            return x.detach()
        with torch.no_grad():
            n_classes = model(x[:1]).shape[1]
        norm = "Linf" if self.norm == "linf" else "L2"
        if self.version == "standard" and n_classes < 4:
            common = dict(eps=self.eps, norm=norm, seed=self.seed, n_restarts=1)
            attack = torchattacks.MultiAttack([
                torchattacks.APGD(model, loss="ce", **common),
                torchattacks.FAB(model, multi_targeted=True, n_classes=n_classes, **common),
                torchattacks.Square(model, n_queries=5000, **common),
            ])  # fmt: skip
            return attack(x, y).detach()
        attack = torchattacks.AutoAttack(
            model,
            norm=norm,
            eps=self.eps,
            version=self.version,
            n_classes=n_classes,
            seed=self.seed,
        )
        return attack(x, y).detach()


@dataclass
class Square:
    """Square Attack (Andriushchenko et al., 2020) through torchattacks 3.5.1: gradient-free
    random search, the usual check against gradient masking (a model whose gradients are
    useless to PGD still falls to it). `queries` is the budget per example; the margin loss and
    torchattacks' rescaled square-size schedule are the paper's defaults.

    torchattacks seeds torch's global generator; we fork it so a trial's own random stream
    (training order, augmentation) is the same whether or not the attack ran.
    """

    eps: float
    queries: int = 200
    norm: str = "linf"
    seed: int = 0

    def __post_init__(self):
        if self.norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {self.norm!r}")

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        import torchattacks

        if self.eps == 0:
            return x.detach()
        attack = torchattacks.Square(
            model,
            norm="Linf" if self.norm == "linf" else "L2",
            eps=self.eps,
            n_queries=self.queries,
            seed=self.seed,
        )
        devices = [x.device] if x.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            return attack(x, y).detach()


def margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The true class's logit minus the largest other: negative once the example is fooled."""
    true = logits.gather(1, y[:, None]).squeeze(1)
    return true - logits.scatter(1, y[:, None], float("-inf")).amax(1)


@dataclass
class SPSA:
    """SPSA (Uesato et al., 2018), L-inf: a gradient-free attack that estimates the gradient.

    Each iteration estimates the gradient of the margin loss from `samples` antithetic pairs of
    finite differences (step `fd_step`) along random ±1 directions, then takes a signed step
    of `step_size` projected onto the ε-ball, as PGD does with the true gradient. It reads only
    the model's outputs. benchmarks.square_budget measures it beside Square, to see whether
    estimating the gradient closes the gap random search leaves to PGD at small ε: on the
    CIFAR-10 base at the budgets a CPU affords it does not (docs/benchmarks.md, "The query
    budget on CIFAR-10"), so the worst case keeps Square alone. An example counts as broken at
    the first iterate the model misclassifies. Queries per example: at most `iterations` x (2
    `samples` + 1). `chunk` bounds the images in one forward pass (memory)."""

    eps: float
    iterations: int = 20
    samples: int = 32
    fd_step: float = 0.01
    step_size: float | None = None  # default eps / 4
    seed: int = 0
    chunk: int = 4096

    def __post_init__(self):
        if self.eps < 0 or self.iterations < 1 or self.samples < 1 or self.fd_step <= 0:
            raise ValueError("SPSA needs eps >= 0, iterations >= 1, samples >= 1, fd_step > 0")

    @property
    def queries(self) -> int:
        return self.iterations * (2 * self.samples + 1)

    def _group(self, model, x, y, generator) -> torch.Tensor:
        step = self.step_size if self.step_size is not None else self.eps / 4
        delta = torch.zeros_like(x)
        found = x.clone()
        active = torch.ones(len(x), dtype=torch.bool, device=x.device)
        shape = (self.samples, *x.shape[1:])
        for _ in range(self.iterations):
            idx = active.nonzero().squeeze(1)
            if idx.numel() == 0:
                break
            xa, ya = x[idx] + delta[idx], y[idx]
            u = torch.randint(0, 2, (len(idx), *shape), generator=generator, device=x.device)
            u = u.to(x.dtype).mul_(2).sub_(1)
            probes = torch.cat([xa[:, None] + self.fd_step * u, xa[:, None] - self.fd_step * u], 1)
            losses = margin(
                model(probes.clamp_(0, 1).flatten(0, 1)), ya.repeat_interleave(2 * self.samples)
            )
            plus, minus = losses.view(len(idx), 2, self.samples).unbind(1)
            grad = ((plus - minus).view(*plus.shape, *([1] * (x.dim() - 1))) * u).mean(1)
            step_delta = (delta[idx] - step * grad.sign()).clamp(-self.eps, self.eps)
            delta[idx] = (x[idx] + step_delta).clamp(0, 1) - x[idx]
            candidate = x[idx] + delta[idx]
            fooled = model(candidate).argmax(1) != ya
            found[idx[fooled]] = candidate[fooled]
            active[idx[fooled]] = False
        return found

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.eps == 0:
            return x.detach()
        generator = _generator(x, self.seed)
        per_group = max(1, self.chunk // (2 * self.samples))
        with torch.no_grad():
            return torch.cat([
                self._group(model, xg, yg, generator)
                for xg, yg in zip(x.split(per_group), y.split(per_group), strict=True)
            ])  # fmt: skip
