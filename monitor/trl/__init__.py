"""The TRL hook: ship each training step's responses to fpmon without slowing or breaking training.

Three sources of responses:

- **GRPO / RLOO** (on-policy completions): pass ``wrap_reward_funcs([...], callback)`` as the trainer's
  ``reward_funcs``; the wrappers return the rewards unchanged and record prompts, completions and rewards,
  which :class:`FPEMonitorCallback` ships at ``on_step_end``.
- **DPO and any trainer** (probes): a fixed ``probe_prompts`` set answered every ``probe_every`` optimizer steps
  by the current policy.
- **PPO loops outside TRL** (TRL 1.x has no PPOTrainer): call ``MonitorClient.observe(step, responses, rewards)``
  from the loop; no callback needed.

Under ``torch.distributed`` every rank embeds its own responses and :func:`gather_to_main` gathers them to
rank 0, which alone talks to the sidecar. Resets (seed §5, **experimental, off by default**):
:class:`ResetPolicy` and :func:`apply_reset`.

Modules: ``callback`` (:class:`FPEMonitorCallback`), ``contract`` (:class:`HookStats`,
:class:`MonitorClientLike`), ``rewards`` (reward-function wrapping, the judge), ``embedding`` (which embedder),
``probes`` (probe generation and scoring), ``distributed`` (gathering to rank 0), ``reset`` (resets). Import
the public names from ``monitor.trl``.
"""

from .callback import FPEMonitorCallback
from .contract import HookStats, MonitorClientLike
from .distributed import GatheredBatch, gather_to_main
from .embedding import Embedder
from .reset import ResetPolicy, ResetStats, apply_reset
from .rewards import BatchRecorder, RewardBatch, completion_text, prompt_text, wrap_reward_funcs

__all__ = [
    "BatchRecorder",
    "Embedder",
    "FPEMonitorCallback",
    "GatheredBatch",
    "HookStats",
    "MonitorClientLike",
    "ResetPolicy",
    "ResetStats",
    "RewardBatch",
    "apply_reset",
    "completion_text",
    "gather_to_main",
    "prompt_text",
    "wrap_reward_funcs",
]
