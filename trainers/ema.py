"""An exponential moving average of a module's learnable tensors, used for evaluation."""
import contextlib

import torch


class ParameterEMA:
    """shadow <- decay * shadow + (1 - decay) * param after each step once started.

    `applied()` swaps the averaged values in (for testing) and restores the live ones after.
    The shadow is part of the trainer's checkpoint so that a resumed run keeps averaging.
    """

    def __init__(self, module, decay):
        self.module = module
        self.decay = decay
        self.shadow = None

    def _params(self):
        return {n: p for n, p in self.module.named_parameters() if p.requires_grad}

    @torch.no_grad()
    def update(self):
        params = self._params()
        if self.shadow is None:
            self.shadow = {n: p.detach().clone() for n, p in params.items()}
            return
        for name, p in params.items():
            self.shadow[name].mul_(self.decay).add_(p.detach(), alpha=1 - self.decay)

    @contextlib.contextmanager
    def applied(self):
        if self.shadow is None:
            yield
            return
        params = self._params()
        live = {n: p.detach().clone() for n, p in params.items()}
        with torch.no_grad():
            for n, p in params.items():
                p.copy_(self.shadow[n])
        try:
            yield
        finally:
            with torch.no_grad():
                for n, p in params.items():
                    p.copy_(live[n])

    def state_dict(self):
        return {} if self.shadow is None else dict(self.shadow)

    def load_state_dict(self, state):
        self.shadow = {n: t.clone() for n, t in state.items()} or None
