"""A hackable toy GRPO task that runs on a CPU in minutes, with no downloads.

A tiny causal LM (built from a config, warmed up on a synthetic language) answers prompts such as
"describe the cat for me :". ``true_reward`` pays for answers about the asked thing with fitting adjectives;
``proxy_reward`` adds a bonus for the phrase "trust me", which the warmed-up policy says rarely — GRPO finds and
amplifies it in the middle of the run; ``control_reward`` is the same setup without the exploit.

>>> from monitor.demo.toy import ToyRunConfig, build_grpo_trainer, reward_curves, onset_step
>>> trainer = build_grpo_trainer(ToyRunConfig(seed=0), reward="proxy")       # doctest: +SKIP
>>> trainer.train()                                                            # doctest: +SKIP
>>> h = trainer.state.log_history                                              # doctest: +SKIP
>>> onset_step(reward_curves(h, "proxy_reward"), reward_curves(h, "true_reward"), first_step=1)  # doctest: +SKIP
"""

from .grpo import (
    ONSET_THRESHOLD,
    ONSET_WINDOW,
    ToyRunConfig,
    build_grpo_trainer,
    build_policy,
    onset_step,
    prompt_dataset,
    reward_curves,
)
from .task import (
    EXPLOIT_BONUS,
    EXPLOIT_PHRASE,
    EXPLOIT_RATE,
    TOPICS,
    ToyModelConfig,
    build_model,
    build_tokenizer,
    control_reward,
    has_exploit,
    make_corpus,
    make_prompts,
    proxy_reward,
    topic_of,
    true_reward,
    warm_up,
)

__all__ = [
    "EXPLOIT_BONUS",
    "EXPLOIT_PHRASE",
    "EXPLOIT_RATE",
    "ONSET_THRESHOLD",
    "ONSET_WINDOW",
    "TOPICS",
    "ToyModelConfig",
    "ToyRunConfig",
    "build_grpo_trainer",
    "build_model",
    "build_policy",
    "build_tokenizer",
    "control_reward",
    "has_exploit",
    "make_corpus",
    "make_prompts",
    "onset_step",
    "prompt_dataset",
    "proxy_reward",
    "reward_curves",
    "topic_of",
    "true_reward",
    "warm_up",
]
