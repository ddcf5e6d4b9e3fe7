"""Training engine: configs, the padded-batch trainer, checkpoints, seeding, logging, DDP, prediction.

Modules: ``config`` (YAML -> validated dataclasses, ``--set``, ``--epochs`` rescaling), ``trainer``
(:class:`Trainer`), ``rundata`` (train / validation / test videos), ``evaluate`` (inference + mAP),
``checkpoint``, ``seeding``, ``logging``, ``distributed`` (torchrun), ``plugins`` (pseudo-label hooks),
``predict`` and ``command`` (``wtal train`` / ``wtal predict``).
"""

from wtal.engine.config import RunConfig, load_run_config, resolve_config
from wtal.engine.trainer import Trainer

__all__ = ["RunConfig", "Trainer", "load_run_config", "resolve_config"]
