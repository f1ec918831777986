"""FusionBench bridge: nufilt's methods as a FusionBench algorithm.

FusionBench (``pip install fusion-bench``) runs an algorithm's ``run(modelpool)`` on a pool of
models; this class merges the pool's models into its pre-trained model one continual step
each, in the pool's order, through ``nufilt.merge_state_dicts`` (the same tensors, bit for
bit, as ``nufilt merge`` on the same checkpoints), and returns the merged model. In a
FusionBench YAML configuration::

    method:
      _target_: nufilt.fusion_bench.NufiltContinualMerging
      method: nufilt          # or wa, ta, ties, magmax, opcm, wudi, isoc, tsvm
      shuffle_order: false
      params:                 # nufilt's parameter names (nufilt.methods())
        lora_rank: 64

The merge runs on nufilt's own devices (``device``), not FusionBench's fabric; the models
are read from the pool one task at a time, and the pool's pre-trained model is not modified.
"""
from __future__ import annotations

import copy
import random
from typing import Any, Dict, List, Mapping, Optional

try:
    from fusion_bench.method import BaseAlgorithm
    from fusion_bench.modelpool import BaseModelPool
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError("nufilt.fusion_bench needs FusionBench (pip install fusion-bench): %s"
                      % e) from e

import nufilt

__all__ = ["NufiltContinualMerging"]


class NufiltContinualMerging(BaseAlgorithm):
    """Continual merging of a FusionBench model pool with a nufilt method.

    ``method``: a name from ``nufilt.methods()``. ``params``: that method's parameters by
    nufilt's names (``null_rank``, ``lora_rank``, ``scale``, ``keep``, ``alpha``, ...).
    ``shuffle_order``/``seed``: as FusionBench's continual algorithms (shuffle the task
    order with ``random.Random(seed)``). ``device``: nufilt's device list (``"auto"``).
    After ``run``, ``self.state`` is the ``nufilt.State`` of the stream (its metadata is what
    a merged file would carry) and ``self.order`` the tasks in the order merged.
    """

    def __init__(self, method: str = "nufilt", params: Optional[Mapping[str, Any]] = None,
                 shuffle_order: bool = False, seed: Optional[int] = None,
                 device: str = "auto", **kwargs: Any) -> None:
        self.method = method
        self.params: Dict[str, Any] = dict(params or {})
        self.shuffle_order = shuffle_order
        self.seed = seed
        self.device = device
        self.state: Optional[nufilt.State] = None
        self.order: List[str] = []
        super().__init__(**kwargs)

    def run(self, modelpool: BaseModelPool):
        if not isinstance(modelpool, BaseModelPool):
            modelpool = BaseModelPool(modelpool)
        pretrained = modelpool.load_pretrained_model()
        base = pretrained.state_dict()
        names = list(modelpool.model_names)
        if self.shuffle_order:
            random.Random(self.seed).shuffle(names)
        state = None
        merged = None
        for name in names:
            task = modelpool.load_model(name).state_dict()
            merged, state = nufilt.merge_state_dicts(
                base, {name: task}, method=self.method if state is None else None,
                state=state, device=self.device, **self.params)
            del task
        self.state = state
        self.order = names
        model = copy.deepcopy(pretrained)
        model.load_state_dict(merged)
        return model
